"""Validation of the DataLoader's arguments: one place, before any work.

Each check raises ``ValueError``/``TypeError`` naming the argument, the value
received and what is allowed. Messages follow torch's where torch has one.
"""

from __future__ import annotations

from typing import Any

import torch

from ._tuning import AutoCount
from ._typing import LAST_BATCH_MODES

__all__ = [
    "check_batching",
    "check_callables",
    "check_dataset",
    "check_flags",
    "check_generator",
    "check_snapshot_steps",
    "check_workers",
    "resolve_auto",
]


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_workers(
    num_workers: Any, timeout: Any, prefetch_factor: Any, persistent_workers: Any
) -> None:
    """Checks the arguments that size and pace the workers ("auto" already made a count)."""
    if not _is_int(num_workers) or num_workers < 0:
        raise ValueError(
            "num_workers option should be non-negative; use num_workers=0 to disable "
            f"multiprocessing. Got num_workers={num_workers!r} (a non-negative integer, or "
            "'auto', is needed)"
        )
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not timeout >= 0  # refuses nan too
    ):
        raise ValueError(
            f"timeout option should be non-negative, got timeout={timeout!r} (a number of seconds)"
        )
    if num_workers == 0 and prefetch_factor is not None:
        given = "'auto'" if isinstance(prefetch_factor, AutoCount) else repr(prefetch_factor)
        raise ValueError(
            f"prefetch_factor={given} needs workers: prefetch_factor option could only "
            "be specified in multiprocessing; let num_workers > 0 to enable multiprocessing, "
            "otherwise set prefetch_factor to None"
        )
    if prefetch_factor is not None and (not _is_int(prefetch_factor) or prefetch_factor < 1):
        raise ValueError(
            f"prefetch_factor should be a positive integer or 'auto', got "
            f"prefetch_factor={prefetch_factor!r}"
        )
    if persistent_workers and num_workers == 0:
        raise ValueError("persistent_workers option needs num_workers > 0, got num_workers=0")


def check_batching(
    *,
    iterable: bool,
    batch_size: Any,
    shuffle: Any,
    sampler: Any,
    batch_sampler: Any,
    drop_last: bool,
    last_batch: Any,
) -> None:
    """Checks how indices are chosen and grouped, as torch's DataLoader does."""
    if batch_size is not None and (not _is_int(batch_size) or batch_size <= 0):
        raise ValueError(
            f"batch_size should be a positive integer value or None, got batch_size={batch_size!r}"
        )
    if iterable:
        for name, value in (
            ("shuffle", shuffle),
            ("sampler", sampler),
            ("batch_sampler", batch_sampler),
        ):
            if value not in (None, False):
                raise ValueError(
                    f"DataLoader with IterableDataset: expected unspecified {name} option, "
                    f"but got {name}={value!r}; an iterable dataset chooses its own order"
                )
        if last_batch == "rollover":
            raise ValueError(
                "last_batch='rollover' needs a map-style dataset, not an IterableDataset"
            )
    if sampler is not None and shuffle:
        raise ValueError(
            f"sampler option is mutually exclusive with shuffle, got shuffle={shuffle!r} "
            f"and sampler={sampler!r}"
        )
    if batch_sampler is not None:
        if (
            batch_size != 1
            or shuffle
            or sampler is not None
            or drop_last
            or last_batch not in (None, _batch_sampler_mode(batch_sampler))
        ):
            raise ValueError(
                "batch_sampler option is mutually exclusive with batch_size, shuffle, sampler, "
                f"and drop_last (and last_batch, unless it is the batch sampler's own); got "
                f"batch_size={batch_size!r}, shuffle={shuffle!r}, sampler={sampler!r}, "
                f"drop_last={drop_last!r}, last_batch={last_batch!r}"
            )
    elif batch_size is None and (drop_last or last_batch not in (None, "keep")):
        raise ValueError(
            "batch_size=None option disables auto-batching and is mutually exclusive with "
            f"drop_last and last_batch; got drop_last={drop_last!r}, last_batch={last_batch!r}"
        )
    # After torch's own checks, which take any truthy shuffle for True and say so in their words.
    if shuffle not in (None, True, False):
        raise TypeError(f"shuffle should be a bool or None, got shuffle={shuffle!r}")


def _batch_sampler_mode(batch_sampler: Any) -> str:
    """What a batch sampler does with a short last batch, as a last_batch value."""
    mode = getattr(batch_sampler, "last_batch", None)
    if mode in LAST_BATCH_MODES:
        return mode
    return "discard" if getattr(batch_sampler, "drop_last", False) is True else "keep"


def check_flags(**values: Any) -> None:
    """Each named value must be a bool: 'yes' or 0 is a mistake, not a setting."""
    for name, value in values.items():
        if not isinstance(value, bool):
            raise TypeError(f"{name} should be True or False, got {name}={value!r}")


def check_snapshot_steps(value: Any) -> None:
    """torchdata's ``snapshot_every_n_steps``: None or a positive int."""
    if value is not None and (not _is_int(value) or value < 1):
        raise ValueError(
            f"snapshot_every_n_steps should be a positive integer or None, got "
            f"snapshot_every_n_steps={value!r}"
        )


def check_dataset(dataset: Any) -> None:
    """A dataset indexes (map-style) or iterates; a number is neither."""
    if not (hasattr(dataset, "__getitem__") or hasattr(dataset, "__iter__")):
        raise TypeError(
            "dataset should be a map-style dataset (with __getitem__ and __len__) or an "
            f"iterable one, got dataset={dataset!r} ({type(dataset).__qualname__}); "
            "for the numbers 0..n-1 pass range(n)"
        )


def check_callables(**values: Any) -> None:
    """Each named value must be callable or None."""
    for name, value in values.items():
        if value is not None and not callable(value):
            raise TypeError(f"{name} should be callable or None, got {name}={value!r}")


def check_generator(generator: Any) -> None:
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(
            f"generator should be a torch.Generator or None, got {type(generator).__qualname__}"
        )


def resolve_auto(value: Any, name: str, start: int) -> Any:
    """``"auto"`` becomes an :class:`AutoCount` starting at ``start``; anything else stays."""
    if isinstance(value, str):
        if value != "auto":
            raise ValueError(f"{name} should be an integer or 'auto', got {name}={value!r}")
        return AutoCount(start)
    return value
