"""torch's (deprecated) datapipes in the loader, as torch's loader treats them.

An ``IterDataPipe`` decides its own order: ``shuffle`` switches its shufflers
on or off, each epoch seeds them with one seed that every worker shares (so a
shuffle before ``sharding_filter`` is the same permutation in every worker),
and each process worker keeps only its shard (``sharding_filter``), of all
workers on all ranks.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import IterDataPipe, MapDataPipe, graph_settings

__all__ = ["is_datapipe", "is_iter_datapipe", "seed_epoch", "set_shuffle", "shard"]


def is_datapipe(dataset: Any) -> bool:
    return isinstance(dataset, IterDataPipe | MapDataPipe)


def is_iter_datapipe(dataset: Any) -> bool:
    return isinstance(dataset, IterDataPipe)


def set_shuffle(datapipe: Any, shuffle: bool | None) -> Any:
    """The loader's ``shuffle``, applied to the pipe's shufflers (None leaves them as built)."""
    if shuffle is None:
        return datapipe
    return graph_settings.apply_shuffle_settings(datapipe, shuffle=bool(shuffle))


def shard(datapipe: Any, num_workers: int, worker_id: int) -> None:
    """Keeps this worker's shard: one of ``num_workers`` on each rank of the process group."""
    world_size, rank = (
        (dist.get_world_size(), dist.get_rank())
        if dist.is_available() and dist.is_initialized()
        else (1, 0)
    )
    graph_settings.apply_sharding(datapipe, num_workers * world_size, worker_id * world_size + rank)


def seed_epoch(datapipe: Any, shared_seed: int | None) -> Any:
    """Seeds the pipe's random parts for one epoch, the same way in every worker."""
    if shared_seed is None or not isinstance(datapipe, IterDataPipe):
        return datapipe
    return graph_settings.apply_random_seed(datapipe, torch.Generator().manual_seed(shared_seed))
