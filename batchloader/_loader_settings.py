"""The loader's attributes, as they are at ``iter()``, turned into the values iterators use.

torch's ``DataLoader`` keeps its settings as attributes that frameworks read
and assign; at each ``iter()`` :func:`settings` checks them and freezes them
into a :class:`FetchSpec` (what workers need) and a :class:`LoaderConfig` (how
they run). The rest are the small rules around it: the start method, the
fetch mode, what the statistics show of the settings, whether a sampler is
sharded across ranks, and where ``num_workers="auto"`` puts what it settles on.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.context
import weakref
from typing import Any

import numpy as np
import torch
import torch.distributed
from torch.utils.data import DistributedSampler as _TorchDistributedSampler

from . import _arguments as args
from . import _tuning
from ._config import FetchMode, FetchSpec, LoaderConfig, WorkerKind
from ._generators import ThreadSafeIterator
from .collate import default_collate
from .samplers import DistributedSampler

__all__ = [
    "DEFAULT_PREFETCH_FACTOR",
    "auto_epoch_workers",
    "default_context",
    "remember_auto",
    "settings",
    "sharding_warning",
    "stats_settings",
]

DEFAULT_PREFETCH_FACTOR = 2


def default_context() -> multiprocessing.context.BaseContext:
    """The start method the program set (``multiprocessing.set_start_method``), else fork.

    As torch: a program that set ``spawn`` or ``forkserver`` (because fork breaks
    it: CUDA already initialised, libraries holding threads) gets its workers
    started that way. Otherwise batchloader forks, whatever Python's own default
    (``forkserver`` from Python 3.14): workers start in milliseconds and need
    nothing pickled, and no thread of the pool runs while it forks.
    """
    return multiprocessing.get_context(multiprocessing.get_start_method(allow_none=True) or "fork")


def auto_epoch_workers(loader: Any) -> str:
    """Sets ``num_workers="auto"``'s count for the epoch about to start; says why, if it moved.

    Map-style datasets only: an iterable dataset is split by worker count.
    """
    if not isinstance(loader.num_workers, _tuning.AutoCount) or loader._iterable:
        return ""
    epoch = loader._epoch
    previous = epoch.stats.snapshot() if epoch is not None and epoch.finished else None
    count = loader._auto.epoch_workers(previous, int(loader.num_workers))
    loader.num_workers = _tuning.AutoCount(count)
    return str(loader._auto.note)


def remember_auto(loader_ref: weakref.ref[Any], change: _tuning.Change) -> None:
    """What auto settled on is the loader's setting from now on (and where the next epoch starts)."""
    loader = loader_ref()
    if loader is None:
        return
    if isinstance(loader.num_workers, _tuning.AutoCount):
        loader.num_workers = _tuning.AutoCount(change.workers)
    if isinstance(loader.prefetch_factor, _tuning.AutoCount):
        loader.prefetch_factor = _tuning.AutoCount(change.prefetch)


def has_numeric_get_batch(dataset: Any) -> bool:
    """Whether ``dataset.get_batch`` can stand in for default_collate (no str/object arrays)."""
    if not callable(getattr(dataset, "get_batch", None)):
        return False
    return not any(
        isinstance(a, np.ndarray) and (a.dtype.hasobject or a.dtype.kind in "SU")
        for a in getattr(dataset, "arrays", ())
    )


def is_sharded(sampler: Any) -> bool:
    """Whether a sampler (or batch sampler) gives each rank its own share."""
    if isinstance(sampler, _TorchDistributedSampler | DistributedSampler):
        return True
    # Duck-typed shards: Lightning's and Accelerate's wrappers, custom rank-aware samplers.
    if hasattr(sampler, "num_replicas") or hasattr(sampler, "num_processes"):
        return True
    inner = (getattr(sampler, name, None) for name in ("sampler", "batch_sampler"))
    return any(s is not None and s is not sampler and is_sharded(s) for s in inner)


def world_size() -> int:
    dist = torch.distributed
    if not (dist.is_available() and dist.is_initialized()):
        return 1
    return dist.get_world_size()


def sharding_warning(loader: Any) -> str | None:
    """The warning for a process group whose ranks would each load the whole dataset."""
    if loader._iterable:
        return None
    ranks = world_size()
    if ranks < 2 or is_sharded(loader._index_sampler) or is_sharded(loader.sampler):
        return None
    return (
        f"torch.distributed is initialized with {ranks} ranks, but this DataLoader's "
        f"sampler ({type(loader.sampler).__name__}) is not distributed-aware, so every rank "
        "loads the whole dataset; pass sampler=DistributedSampler(dataset) "
        "(batchloader's or torch's) and call sampler.set_epoch(epoch) each epoch"
    )


def fetch_mode(loader: Any) -> FetchMode:
    if loader._iterable:
        return FetchMode.ITERABLE_SINGLE if loader.batch_size is None else FetchMode.ITERABLE
    if loader._batch_dataset:
        return FetchMode.BATCH_DATASET
    if loader.batch_sampler is None:
        return FetchMode.SINGLE
    if loader.collate_fn is default_collate and has_numeric_get_batch(loader.dataset):
        return FetchMode.GET_BATCH
    return FetchMode.SAMPLES


def settings(loader: Any) -> tuple[FetchSpec, LoaderConfig]:
    """The attributes as they are now, checked, as the workers' and iterators' values."""
    workers = loader.num_workers
    # "auto" may run an epoch with no workers; its other settings stay those of workers.
    checked = max(int(workers), 1) if isinstance(workers, _tuning.AutoCount) else workers
    args.check_workers(checked, loader.timeout, loader.prefetch_factor, loader.persistent_workers)
    args.check_callables(collate_fn=loader.collate_fn, worker_init_fn=loader.worker_init_fn)
    processes = loader.num_workers > 0 and not loader.thread_pool
    spec = FetchSpec(
        dataset=loader._memory.dataset_for(loader.dataset, loader.share_dataset, stacklevel=4)
        if processes
        else loader.dataset,
        mode=fetch_mode(loader),
        collate_fn=loader.collate_fn,
        worker_init_fn=loader.worker_init_fn,
        batch_size=loader.batch_size,
        drop_last=loader.drop_last,
    )
    config = LoaderConfig(
        num_workers=int(loader.num_workers),
        worker_kind=WorkerKind.THREAD if loader.thread_pool else WorkerKind.PROCESS,
        prefetch_factor=int(loader.prefetch_factor or DEFAULT_PREFETCH_FACTOR),
        timeout_s=float(loader.timeout),
        in_order=loader.in_order,
        persistent_workers=loader.persistent_workers,
        mp_context=loader.multiprocessing_context or default_context(),
        pin_memory=loader.pin_memory,
        pin_memory_device=loader.pin_memory_device,
        merged_streams=loader._iterable
        and (not loader.in_order or isinstance(loader.dataset, ThreadSafeIterator)),
        auto_workers=isinstance(loader.num_workers, _tuning.AutoCount),
        auto_prefetch=isinstance(loader.prefetch_factor, _tuning.AutoCount),
    )
    return spec, config


def stats_settings(loader: Any, config: LoaderConfig) -> dict[str, Any]:
    """The settings in force, as the statistics show them."""
    workers = config.num_workers
    return {
        "num_workers": workers,
        "workers": "none" if workers == 0 else config.worker_kind.value,
        "prefetch_factor": config.prefetch_factor if workers else 0,
        "start_method": config.mp_context.get_start_method() if workers else "",
        "in_order": config.in_order,
        "persistent_workers": config.persistent_workers,
        "pin_memory": config.pin_memory,
        "share_dataset": loader.share_dataset,
    }
