"""What every sampler shares: argument checks, seeding, repr helpers, the base class.

Private to the sampler modules (:mod:`batchloader.samplers` re-exports the
public classes).
"""

from __future__ import annotations

import abc
import operator
from collections.abc import Iterator, Mapping, Sized
from typing import Any

import torch
import torch.utils.data
from torch.utils.data import Sampler as _TorchSampler

from ._typing import T_co

__all__ = [
    "Sampler",
    "_EpochState",
    "_check_bool",
    "_check_generator",
    "_check_int",
    "_check_source",
    "_check_weights",
    "_describe",
    "_draw_permutations",
    "_draw_with_replacement",
    "_length",
]

_RANDINT_CHUNK = 32
"""torch's RandomSampler draws with-replacement indices 32 at a time; drawing
the same chunks keeps a shared generator's stream identical to torch's."""

_REPR_ITEMS = 6  # a longer sequence shows only its head in a repr
_INT_KINDS = {None: "an integer", 0: "a non-negative integer", 1: "a positive integer"}


# --- validation ---------------------------------------------------------------


def _describe(value: object) -> str:
    text = repr(value)
    return f"{text if len(text) <= 60 else text[:57] + '...'} ({type(value).__name__})"


def _check_int(name: str, value: Any, minimum: int | None = None, kind: str = "") -> int:
    kind = kind or _INT_KINDS[minimum]
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        raise TypeError(f"{name} should be {kind}, got {_describe(value)}")
    try:
        number = operator.index(value)
    except TypeError as e:  # a float tensor has __index__ but refuses it
        raise TypeError(f"{name} should be {kind}, got {_describe(value)}") from e
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} should be {kind}, got {number}")
    return number


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(
            f"{name} should be a boolean value, but got {name}={value!r} ({type(value).__name__})"
        )
    return value


def _check_source(name: str, value: object) -> int | Sized:
    if isinstance(value, Sized):
        return value
    return _check_int(name, value, 0, kind="a sized object (__len__) or a non-negative int")


def _check_generator(value: object) -> torch.Generator | None:
    if value is not None and not isinstance(value, torch.Generator):
        raise TypeError(f"generator should be a torch.Generator or None, got {_describe(value)}")
    return value


def _check_weights(weights: object) -> torch.Tensor:
    try:
        tensor = torch.as_tensor(weights, dtype=torch.double).clone()
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(
            f"weights should be a 1-d sequence of numbers, got {_describe(weights)}"
        ) from e
    if tensor.dim() != 1:
        raise ValueError(f"weights should be 1-d, got shape {tuple(tensor.shape)}")
    if not (bool(torch.isfinite(tensor).all()) and bool((tensor >= 0).all())):
        raise ValueError(f"weights should be finite and non-negative, got {_show(tensor)}")
    if not bool((tensor > 0).any()):
        raise ValueError(f"weights should include a positive weight, got {_show(tensor)}")
    return tensor


def _length(data_source: int | Sized) -> int:
    return data_source if isinstance(data_source, int) else len(data_source)


# --- seeding and drawing --------------------------------------------------------


def _draw_with_replacement(n: int, count: int, generator: torch.Generator) -> Iterator[int]:
    # torch always makes the trailing (possibly empty) call; so do we.
    for size in [_RANDINT_CHUNK] * (count // _RANDINT_CHUNK) + [count % _RANDINT_CHUNK]:
        yield from torch.randint(n, (size,), dtype=torch.int64, generator=generator).tolist()


def _draw_permutations(n: int, count: int, generator: torch.Generator) -> Iterator[int]:
    # Whole permutations, then a prefix of one more, which torch draws even
    # when the prefix is empty: that draw advances a shared generator.
    for take in [n] * (count // n) + [count % n]:
        yield from torch.randperm(n, generator=generator).tolist()[:take]


# --- repr -------------------------------------------------------------------------


def _show(value: object) -> str:
    """How an option appears in a repr: short, and never a whole dataset."""
    if isinstance(value, torch.Generator):
        return "<torch.Generator>"
    if isinstance(value, _TorchSampler):
        return repr(value)
    if isinstance(value, (tuple, torch.Tensor)):  # indices, weights, carried: ours to show
        return _show_items(value.tolist() if isinstance(value, torch.Tensor) else list(value))
    if isinstance(value, Sized) and not isinstance(value, str):
        return f"<{type(value).__name__} of length {len(value)}>"
    if callable(value):
        return getattr(value, "__qualname__", type(value).__name__)
    return repr(value)


def _show_items(items: list[Any]) -> str:
    if len(items) <= _REPR_ITEMS:
        return repr(items)
    return f"[{', '.join(map(repr, items[: _REPR_ITEMS - 1]))}, ...] (length {len(items)})"


# --- samplers ---------------------------------------------------------------------


class Sampler(torch.utils.data.Sampler[T_co], abc.ABC):
    """Base class of batchloader's samplers: an iterable of indices.

    A subclass implements ``__iter__`` and, where the count is known,
    ``__len__`` (equal to what one iteration yields), and names the
    attributes ``repr`` shows in ``_repr_fields``. Being a
    :class:`torch.utils.data.Sampler`, it works in torch's ``DataLoader``.
    """

    _repr_fields: tuple[str, ...] = ()

    @abc.abstractmethod
    def __iter__(self) -> Iterator[T_co]: ...

    def __repr__(self) -> str:
        options = ", ".join(f"{name}={_show(getattr(self, name))}" for name in self._repr_fields)
        return f"{type(self).__name__}({options})"


class _EpochState:
    """``set_epoch`` and a resumable state for samplers whose order is fixed by the epoch."""

    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch that the next iteration yields."""
        self.epoch = _check_int("epoch", epoch, minimum=0)

    def state_dict(self) -> dict[str, Any]:
        """The epoch: what the next iteration depends on."""
        return {"epoch": self.epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if not isinstance(state, Mapping) or "epoch" not in state:
            raise ValueError(
                f"state should be a mapping with an 'epoch' key, got {_describe(state)}"
            )
        self.set_epoch(state["epoch"])
