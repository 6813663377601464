"""The loader's arguments, validated once, as frozen value objects.

The loader builds these; iterators and workers receive them and never reach
into the loader itself.
"""

from __future__ import annotations

import enum
import multiprocessing.context
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["FetchMode", "FetchSpec", "LoaderConfig", "WorkerKind"]


class WorkerKind(enum.Enum):
    """Where workers run."""

    PROCESS = "process"
    THREAD = "thread"


class FetchMode(enum.Enum):
    """How a worker turns one task into one batch."""

    SAMPLES = "samples"  # index list -> dataset[i] for each -> collate_fn
    GET_BATCH = "get_batch"  # index list -> dataset.get_batch(indices), already collated
    SINGLE = "single"  # one index -> collate_fn(dataset[index]) (batch_size=None)
    BATCH_DATASET = "batch_dataset"  # one index -> checked dataset[index] -> collate_fn (Keras)
    ITERABLE = "iterable"  # the worker's own iterator -> batch_size items -> collate_fn
    ITERABLE_SINGLE = "iterable_single"  # the worker's own iterator -> collate_fn(item)


@dataclass(frozen=True, slots=True)
class FetchSpec:
    """Everything a worker needs to produce batches; sent to each worker once."""

    dataset: Any
    mode: FetchMode
    collate_fn: Callable[[Any], Any]
    worker_init_fn: Callable[[int], None] | None
    batch_size: int | None
    drop_last: bool

    @property
    def iterable(self) -> bool:
        return self.mode in (FetchMode.ITERABLE, FetchMode.ITERABLE_SINGLE)


@dataclass(frozen=True, slots=True)
class LoaderConfig:
    """How the loader runs: workers, prefetching, timeouts, pinning."""

    num_workers: int
    worker_kind: WorkerKind
    prefetch_factor: int
    timeout_s: float
    in_order: bool
    persistent_workers: bool
    mp_context: multiprocessing.context.BaseContext
    pin_memory: bool
    pin_memory_device: str
    # Iterable datasets: all workers put into one queue (in_order=False, or a generator
    # the thread workers share), instead of one queue each taken round-robin.
    merged_streams: bool = False
    # num_workers="auto" / prefetch_factor="auto": the pool's size or depth changes as it runs.
    auto_workers: bool = False
    auto_prefetch: bool = False
