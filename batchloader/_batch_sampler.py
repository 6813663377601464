"""``BatchSampler``: index lists, with Gluon's keep / discard / rollover last batch."""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping, Sized
from typing import Any

from torch.utils.data import BatchSampler as _TorchBatchSampler

from ._sampler_base import (
    Sampler,
    _check_bool,
    _check_int,
    _describe,
)
from ._typing import LAST_BATCH_MODES, LastBatch

__all__ = ["BatchSampler", "resolve_last_batch"]


def resolve_last_batch(drop_last: object, last_batch: object) -> LastBatch:
    """Reconciles torch's ``drop_last`` with Gluon's ``last_batch``; the loader's rule too."""
    _check_bool("drop_last", drop_last)
    if last_batch is None:
        return "discard" if drop_last else "keep"
    if last_batch not in LAST_BATCH_MODES:
        modes = ", ".join(map(repr, LAST_BATCH_MODES))
        raise ValueError(f"last_batch should be one of {modes}, got last_batch={last_batch!r}")
    if drop_last and last_batch != "discard":
        raise ValueError(
            f"drop_last=True means last_batch='discard', but last_batch={last_batch!r} was given; "
            "pass only one of them"
        )
    return last_batch


class BatchSampler(Sampler[list[int]], _TorchBatchSampler):
    """Groups a sampler's indices into lists of ``batch_size``.

    ``last_batch`` says what happens to an epoch's incomplete last batch:
    ``'keep'`` yields it short, ``'discard'`` drops it, ``'rollover'``
    carries it to the front of the next epoch's first batch (MXNet Gluon)::

        batch_size=4, 10 indices per epoch (a0..a9, then b0..b9), 'rollover'

        epoch 0: [a0 a1 a2 a3] [a4 a5 a6 a7]  a8 a9 ──┐ carried, len 2
                                                      ▼
        epoch 1: [a8 a9 b0 b1] [b2 b3 b4 b5] [b6 b7 b8 b9]    len 3, nothing carried

    With rollover, ``len()`` is what the next iteration yields, so it depends
    on the carry. As in Gluon, an iteration spends the carry when it starts
    (from then on ``len()`` counts without it) and leaves its own remainder as
    the new carry only when it runs to its end; an iteration abandoned before
    its end leaves nothing carried.

    Args:
        sampler: any iterable of indices (ours, torch's, a list or range);
            ``len()`` needs it sized. A one-shot iterator serves one epoch.
        batch_size: indices per batch.
        drop_last: torch's flag; True means ``last_batch='discard'``.
        last_batch: ``'keep'``, ``'discard'`` or ``'rollover'``; default from
            ``drop_last``, which it may not contradict.

    Example::

        >>> batches = BatchSampler(range(5), 2, last_batch="rollover")
        >>> list(batches), len(batches), list(batches)
        ([[0, 1], [2, 3]], 3, [[4, 0], [1, 2], [3, 4]])
    """

    _repr_fields = ("sampler", "batch_size", "last_batch", "carried", "epoch")

    def __init__(
        self,
        sampler: Iterable[int],
        batch_size: int,
        drop_last: bool = False,
        *,
        last_batch: LastBatch | None = None,
    ) -> None:
        if not (hasattr(sampler, "__iter__") or hasattr(sampler, "__getitem__")):
            raise TypeError(
                f"sampler should be an iterable of indices (a Sampler, list or range), "
                f"got {_describe(sampler)}; to batch 0..n-1 pass range(n)"
            )
        self.sampler = sampler
        self.batch_size = _check_int("batch_size", batch_size, minimum=1)
        self.last_batch: LastBatch = resolve_last_batch(drop_last, last_batch)
        self.epoch = 0
        self.carried: tuple[int, ...] = ()
        """The rollover remainder that will start the next epoch."""

    @property
    def drop_last(self) -> bool:  # type: ignore[override]  # torch's attribute, a view here
        """torch's view of ``last_batch``: True for ``'discard'``."""
        return self.last_batch == "discard"

    def __iter__(self) -> Iterator[list[int]]:
        if self.last_batch == "rollover":
            return self._iter_rollover()
        return self._iter_plain(keep_tail=self.last_batch == "keep")

    def _iter_plain(self, keep_tail: bool) -> Iterator[list[int]]:
        indices = iter(self.sampler)
        while batch := list(itertools.islice(indices, self.batch_size)):
            if len(batch) == self.batch_size or keep_tail:
                yield batch

    def _iter_rollover(self) -> Iterator[list[int]]:
        # As Gluon: starting the epoch spends the carry, and the epoch's own remainder
        # becomes the carry only when the epoch runs to its end.
        carried, self.carried = self.carried, ()
        indices = itertools.chain(carried, self.sampler)
        while len(batch := list(itertools.islice(indices, self.batch_size))) == self.batch_size:
            yield batch
        self.carried = tuple(batch)

    def __len__(self) -> int:
        if not isinstance(self.sampler, Sized):
            raise TypeError(
                f"len() needs a sized sampler; {type(self.sampler).__name__} has no __len__"
            )
        n, size = len(self.sampler), self.batch_size
        if self.last_batch == "keep":
            return -(-n // size)
        return (n + len(self.carried)) // size  # nothing is carried unless rolling over

    def set_epoch(self, epoch: int) -> None:
        """Record the epoch and pass it on to the sampler if it has ``set_epoch``."""
        self.epoch = _check_int("epoch", epoch, minimum=0)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(self.epoch)

    def state_dict(self) -> dict[str, Any]:
        """The epoch, the carried remainder, and the sampler's state if it has one."""
        state: dict[str, Any] = {"epoch": self.epoch, "carried": list(self.carried)}
        if hasattr(self.sampler, "state_dict"):
            state["sampler"] = self.sampler.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if not isinstance(state, Mapping) or not {"epoch", "carried"} <= state.keys():
            raise ValueError(
                f"state should be a mapping with 'epoch', 'carried'; got {_describe(state)}"
            )
        carried = tuple(state["carried"])
        if len(carried) >= self.batch_size or (carried and self.last_batch != "rollover"):
            raise ValueError(
                f"state['carried'] holds {len(carried)} indices, but must be shorter than "
                f"batch_size={self.batch_size}, and empty unless last_batch='rollover' (is {self.last_batch!r})"
            )
        epoch = _check_int("state['epoch']", state["epoch"], minimum=0)
        if "sampler" in state and hasattr(self.sampler, "load_state_dict"):
            self.sampler.load_state_dict(state["sampler"])
        self.epoch, self.carried = epoch, carried
