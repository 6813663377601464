"""Type variables and aliases shared by the modules: what the loader accepts."""

from __future__ import annotations

import typing
from collections.abc import Callable
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

__all__ = ["LAST_BATCH_MODES", "CollateFn", "LastBatch", "SizedDataset", "T_co"]

T_co = TypeVar("T_co", covariant=True)

LastBatch = Literal["keep", "discard", "rollover"]
"""What a batch sampler does with the incomplete batch at the end of an epoch."""

LAST_BATCH_MODES: tuple[LastBatch, ...] = typing.get_args(LastBatch)
"""The values of :data:`LastBatch`, for checks and messages."""

CollateFn = Callable[[list[Any]], Any]
"""Turns a list of samples into one batch."""


@runtime_checkable
class SizedDataset(Protocol[T_co]):
    """A map-style dataset: ``len(ds)`` samples addressed as ``ds[i]``."""

    def __getitem__(self, index: int, /) -> T_co: ...

    def __len__(self) -> int: ...
