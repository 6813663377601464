"""What every rank runs for tests/test_distributed.py: all scenarios, once per world size.

:func:`run_rank` is the target of a spawned process. For each world size in
turn (largest first) it joins a ``gloo`` group on 127.0.0.1 if its rank is in
it, runs every scenario with a two-worker ``batchloader.DataLoader`` (fork
workers), gathers what each rank saw with ``all_gather_object``, and leaves
the group. The same processes serve every world size, so each pays for
importing torch once. Rank 0 pickles ``{world_size: [what rank r saw, ...]}``
to ``results.pkl``; a failing rank writes its traceback to ``rank<r>.error``.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import traceback
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

import batchloader
from batchloader.distributed import ShardedIterableDataset, shard_info
from tests.helpers import RangeDataset

__all__ = [
    "BATCH_SIZE",
    "EPOCHS",
    "NUM_WORKERS",
    "RESULTS_FILE",
    "ROLLOVER_BATCH_SIZE",
    "SEED",
    "SIZE",
    "STREAM_SIZE",
    "run_rank",
]

SIZE = 23  # a multiple of neither 2 nor 3 ranks, so the sampler pads
STREAM_SIZE = 37  # a multiple of neither 4 nor 6 shards
BATCH_SIZE = 4
ROLLOVER_BATCH_SIZE = 5  # leaves a remainder on every rank, for 2 and 3 ranks
NUM_WORKERS = 2
SEED = 3
EPOCHS = (0, 1)
RESULTS_FILE = "results.pkl"
_GROUP_TIMEOUT_S = 60  # gloo gives up on a missing rank after this; the parent kills sooner


class _WhoAmI(batchloader.IterableDataset):
    """Yields, once per worker, the worker's :class:`ShardInfo` as a tuple."""

    def __iter__(self) -> Iterator[tuple[int, ...]]:
        yield dataclasses.astuple(shard_info())


def _loader(dataset: Any, **options: Any) -> batchloader.DataLoader:
    """Two fork workers kept for every epoch: one pool start per scenario, not per epoch."""
    return batchloader.DataLoader(
        dataset,
        num_workers=NUM_WORKERS,
        multiprocessing_context="fork",
        persistent_workers=True,
        **options,
    )


def _as_list(batch: Any) -> list[Any]:
    return batch.tolist() if isinstance(batch, torch.Tensor) else list(batch)


def _epochs(sampler: Any, dataset: Any, **options: Any) -> dict[str, Any]:
    """Each of ``EPOCHS`` after ``set_epoch``: the batches, ``len(loader)`` and the rank's share."""
    result: dict[str, Any] = {"epochs": [], "lengths": [], "shares": []}
    with _loader(dataset, sampler=sampler, **options) as loader:
        for epoch in EPOCHS:
            sampler.set_epoch(epoch)
            result["shares"].append(list(sampler))
            result["lengths"].append(len(loader))
            result["epochs"].append([_as_list(batch) for batch in loader])
        result["carried"] = list(loader.batch_sampler.carried)
    return result


def _sampled(*, drop_last: bool = False) -> dict[str, Any]:
    dataset = RangeDataset(SIZE)
    sampler = batchloader.DistributedSampler(dataset, seed=SEED, drop_last=drop_last)
    return _epochs(sampler, dataset, batch_size=BATCH_SIZE)


def _rollover() -> dict[str, Any]:
    dataset = RangeDataset(SIZE)
    sampler = batchloader.DistributedSampler(dataset, seed=SEED)
    return _epochs(sampler, dataset, batch_size=ROLLOVER_BATCH_SIZE, last_batch="rollover")


def _one_epoch(dataset: Any, **options: Any) -> list[list[Any]]:
    with _loader(dataset, **options) as loader:
        return [_as_list(batch) for batch in loader]


def _stream(*, drop_last: bool = False) -> list[list[int]]:
    dataset = ShardedIterableDataset(range(STREAM_SIZE), drop_last=drop_last)
    return _one_epoch(dataset, batch_size=BATCH_SIZE)


def _defaults() -> dict[str, Any]:
    """What the sampler and the helper read from the group in the rank's main process."""
    sampler = batchloader.DistributedSampler(SIZE)
    return {
        "sampler": (sampler.num_replicas, sampler.rank),
        "main_process": dataclasses.astuple(shard_info()),
    }


def _unsharded_warnings() -> list[str]:
    """The warnings of two epochs of a loader with no DistributedSampler, then of a sharded one."""
    caught = []
    for sampler in (None, batchloader.DistributedSampler(SIZE)):
        with warnings.catch_warnings(record=True) as records:
            warnings.simplefilter("always")
            loader = batchloader.DataLoader(
                RangeDataset(SIZE), batch_size=BATCH_SIZE, sampler=sampler
            )
            for _ in EPOCHS:
                list(loader)
        caught.append([str(record.message) for record in records])
    return caught


def _scenarios() -> dict[str, Any]:
    return {
        "padded": _sampled(),
        "rerun": _sampled(),
        "trimmed": _sampled(drop_last=True),
        "rollover": _rollover(),
        "stream": _stream(),
        "stream_even": _stream(drop_last=True),
        "workers": sorted(_one_epoch(_WhoAmI(), batch_size=None)),
        "defaults": _defaults(),
        "unsharded_warnings": _unsharded_warnings(),
    }


def _in_group(rank: int, world_size: int, port: int) -> list[Any]:
    """Joins a group of ``world_size`` on ``port``, runs the scenarios, gathers, and leaves."""
    os.environ.update(MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world_size))
    dist.init_process_group(
        "gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=_GROUP_TIMEOUT_S)
    )
    try:
        seen: list[Any] = [None] * world_size
        dist.all_gather_object(seen, _scenarios())
        return seen
    finally:
        dist.destroy_process_group()


def run_rank(rank: int, groups: dict[int, int], out_dir: str) -> None:
    """Runs as ``rank`` in each group (``{world_size: port}``) that has it; rank 0 writes the results."""
    # Loopback only, whatever the host name resolves to.
    os.environ.update(MASTER_ADDR="127.0.0.1", GLOO_SOCKET_IFNAME="lo")
    torch.set_num_threads(1)
    try:
        results = {
            world_size: _in_group(rank, world_size, port)
            for world_size, port in sorted(groups.items(), reverse=True)
            if rank < world_size
        }
        if rank == 0:
            (Path(out_dir) / RESULTS_FILE).write_bytes(pickle.dumps(results))
    except BaseException:
        (Path(out_dir) / f"rank{rank}.error").write_text(traceback.format_exc())
        raise
