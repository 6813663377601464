"""Protocols and aliases for what the loader accepts."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

__all__ = [
    "CollateFn",
    "LastBatch",
    "SamplerLike",
    "SizedDataset",
    "T_co",
    "WorkerInitFn",
]

T_co = TypeVar("T_co", covariant=True)

LastBatch = Literal["keep", "discard", "rollover"]
"""What a batch sampler does with the incomplete batch at the end of an epoch."""

CollateFn = Callable[[list[Any]], Any]
"""Turns a list of samples into one batch."""

WorkerInitFn = Callable[[int], None]
"""Called once in each worker with the worker's id."""


@runtime_checkable
class SizedDataset(Protocol[T_co]):
    """A map-style dataset: ``len(ds)`` samples addressed as ``ds[i]``."""

    def __getitem__(self, index: int, /) -> T_co: ...

    def __len__(self) -> int: ...


@runtime_checkable
class SamplerLike(Protocol):
    """Anything that yields indices (or, for a batch sampler, index lists)."""

    def __iter__(self) -> Iterator[Any]: ...


IndexList = Sequence[int]
