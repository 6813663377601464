"""Splitting an iterable dataset across ranks and workers, with nothing duplicated.

A map-style dataset is split across ranks by :class:`~batchloader.DistributedSampler`.
An iterable dataset has no indices to deal out, so every copy of it (one per
worker, on every rank) must skip what the others yield. The copies are told
apart by one global shard id::

    world_size=2, num_workers=2 -> count = 4 shards

    rank 0: worker 0 -> shard 0: items 0, 4, 8, ...   worker 1 -> shard 1: items 1, 5, 9, ...
    rank 1: worker 0 -> shard 2: items 2, 6, 10, ...  worker 1 -> shard 3: items 3, 7, 11, ...

    index = rank * num_workers + worker_id

The rank comes from the ``torch.distributed`` process group when one is
initialized in the calling process, else from the ``RANK`` and ``WORLD_SIZE``
environment variables (set by ``torchrun`` and inherited by workers started
with ``spawn`` or ``forkserver``), else it is rank 0 of 1. The worker comes
from :func:`batchloader.get_worker_info` (or torch's, inside torch's loader);
outside a worker it is worker 0 of 1.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterable, Iterator, Sized
from dataclasses import dataclass
from typing import Any, TypeVar

import torch.distributed as dist
import torch.utils.data

from ._worker import get_worker_info
from .datasets import IterableDataset

__all__ = ["ShardInfo", "ShardedIterableDataset", "shard_info", "split_by_rank_and_worker"]

_T = TypeVar("_T")

_RANK_ENV = "RANK"
_WORLD_SIZE_ENV = "WORLD_SIZE"


@dataclass(frozen=True, slots=True)
class ShardInfo:
    """Which of ``count`` shards the caller reads: ``index = rank * num_workers + worker_id``.

    Example::

        >>> shard_info()  # no process group, not in a worker
        ShardInfo(index=0, count=1, rank=0, world_size=1, worker_id=0, num_workers=1)
    """

    index: int
    count: int
    rank: int
    world_size: int
    worker_id: int
    num_workers: int


def shard_info(*, rank: int | None = None, world_size: int | None = None) -> ShardInfo:
    """The calling worker's shard among all ranks and workers.

    Args:
        rank: this rank; give it together with ``world_size`` to override the
            process group and the environment (a launcher that sets neither,
            with workers started by ``spawn`` or ``forkserver``).
        world_size: the number of ranks.

    Example::

        info = shard_info()  # inside an iterable dataset's __iter__
        for i, line in enumerate(open(path)):
            if i % info.count == info.index:
                yield line

    Trap: call it inside ``__iter__``, where the worker runs; called in
    ``__init__`` it sees the main process, which is worker 0 of 1.
    """
    rank, world_size = _rank_and_world_size(rank, world_size)
    info = get_worker_info() or torch.utils.data.get_worker_info()
    worker_id, num_workers = (0, 1) if info is None else (info.id, info.num_workers)
    return ShardInfo(
        index=rank * num_workers + worker_id,
        count=world_size * num_workers,
        rank=rank,
        world_size=world_size,
        worker_id=worker_id,
        num_workers=num_workers,
    )


def split_by_rank_and_worker(
    iterable: Iterable[_T],
    *,
    rank: int | None = None,
    world_size: int | None = None,
    drop_last: bool = False,
) -> Iterator[_T]:
    """Every ``count``-th item of ``iterable``, starting at this worker's shard ``index``.

    Every shard reads the whole iterable and keeps its own items, so split
    something cheap (file names, line numbers) and do the expensive work on
    what comes out.

    Args:
        iterable: the items to split; every shard must see them in the same order.
        rank: this rank, with ``world_size``; default as in :func:`shard_info`.
        world_size: the number of ranks.
        drop_last: drop the last ``len(iterable) % count`` items so that every
            shard yields the same number, and every rank the same number of
            batches (with uneven counts, DDP waits for the rank that ran out
            until the group times out). Needs ``len()``.

    Example::

        >>> list(split_by_rank_and_worker(range(10), rank=1, world_size=4))
        [1, 5, 9]
        >>> list(split_by_rank_and_worker(range(10), rank=1, world_size=4, drop_last=True))
        [1, 5]
    """
    info = shard_info(rank=rank, world_size=world_size)
    stop = None
    if _check_bool("drop_last", drop_last):
        if not isinstance(iterable, Sized):
            raise TypeError(
                f"drop_last=True needs len(iterable) to trim every shard to one length, but "
                f"{type(iterable).__name__} has no __len__; pass a list, or drop_last=False"
            )
        stop = len(iterable) // info.count * info.count
    return itertools.islice(iterable, info.index, stop, info.count)


class ShardedIterableDataset(IterableDataset[_T]):
    """An iterable dataset that each worker on each rank reads a disjoint part of.

    ``iter()`` is :func:`split_by_rank_and_worker` over ``source``; the shard
    is looked up when iteration starts, inside the worker, so the dataset may
    be built before ``init_process_group``.

    Args:
        source: a re-iterable (a list, a range, an iterable dataset); it is
            iterated once per epoch by every worker on every rank.
        rank: this rank, with ``world_size``; default as in :func:`shard_info`.
        world_size: the number of ranks.
        drop_last: give every shard the same number of items; see
            :func:`split_by_rank_and_worker`.

    Example::

        files = ShardedIterableDataset(sorted(glob.glob("shards/*.tar")))
        records = RecordsFromFiles(files)  # opens only this shard's files
        loader = DataLoader(records, batch_size=64, num_workers=4)

    Trap: a ``source`` that shards itself by ``get_worker_info()`` is split twice.
    """

    def __init__(
        self,
        source: Iterable[_T],
        *,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
    ) -> None:
        if not isinstance(source, Iterable) or iter(source) is source:
            raise TypeError(
                f"source should be re-iterable (a list, range or iterable dataset), got "
                f"{type(source).__name__}; a one-shot iterator or generator would serve only one "
                "epoch: pass list(...) of it, or a dataset whose __iter__ starts afresh"
            )
        if (rank, world_size) != (None, None):
            _rank_and_world_size(rank, world_size)  # fail here, not later in a worker
        self.source = source
        self.rank = rank
        self.world_size = world_size
        self.drop_last = _check_bool("drop_last", drop_last)

    def __iter__(self) -> Iterator[_T]:
        return split_by_rank_and_worker(
            self.source, rank=self.rank, world_size=self.world_size, drop_last=self.drop_last
        )

    def __repr__(self) -> str:
        source = self.source
        shown = (
            f"<{type(source).__name__} of length {len(source)}>"
            if isinstance(source, Sized)
            else f"<{type(source).__name__}>"
        )
        return (
            f"ShardedIterableDataset(source={shown}, rank={self.rank}, "
            f"world_size={self.world_size}, drop_last={self.drop_last})"
        )


# --- rank and world size ----------------------------------------------------------


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} should be a bool (True or False), got {value!r}")
    return value


def _rank_and_world_size(rank: Any, world_size: Any) -> tuple[int, int]:
    """Explicit values, else the process group, else ``RANK``/``WORLD_SIZE``, else 0 of 1."""
    if rank is None and world_size is None:
        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
        rank, world_size = os.environ.get(_RANK_ENV), os.environ.get(_WORLD_SIZE_ENV)
        if rank is None or world_size is None:
            return 0, 1
        return _checked(_env_int(_RANK_ENV, rank), _env_int(_WORLD_SIZE_ENV, world_size))
    if rank is None or world_size is None:
        raise ValueError(
            f"give rank and world_size together, or neither; got rank={rank!r}, "
            f"world_size={world_size!r}"
        )
    for name, value in (("rank", rank), ("world_size", world_size)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} should be an int, got {value!r} ({type(value).__name__})")
    return _checked(rank, world_size)


def _env_int(name: str, text: str) -> int:
    try:
        return int(text)
    except ValueError as e:
        raise ValueError(f"environment variable {name} should be an integer, got {text!r}") from e


def _checked(rank: int, world_size: int) -> tuple[int, int]:
    if world_size < 1:
        raise ValueError(f"world_size should be a positive integer, got {world_size}")
    if not 0 <= rank < world_size:
        raise ValueError(
            f"rank should be in [0, {world_size - 1}] for world_size={world_size}, got {rank}"
        )
    return rank, world_size
