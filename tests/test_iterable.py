"""Iterable datasets with workers: uneven shards, early stops, timeouts, errors."""

from __future__ import annotations

import itertools
import time

import pytest
import torch

import batchloader
from batchloader import DataLoader, LoaderTimeoutError
from tests.helpers import (
    ShardedIterable,
    assert_no_leaks,
    batches_as_lists,
    child_pids,
    shm_segments,
)

pytestmark = pytest.mark.timeout(60)


class Uneven(torch.utils.data.IterableDataset):
    """Worker k yields ``sizes[k]`` items, tagged (worker, n)."""

    def __init__(self, sizes):
        self.sizes = sizes

    def __iter__(self):
        info = batchloader.get_worker_info()
        wid = 0 if info is None else info.id
        return iter([wid * 1000 + n for n in range(self.sizes[wid])])


class FailsAfter(torch.utils.data.IterableDataset):
    """Raises ValueError after ``n`` items in worker 1."""

    def __init__(self, n):
        self.n = n

    def __iter__(self):
        info = batchloader.get_worker_info()
        for i in itertools.count():
            if info is not None and info.id == 1 and i == self.n:
                raise ValueError(f"stream broke at {i}")
            yield i


class Stalls(torch.utils.data.IterableDataset):
    def __iter__(self):
        time.sleep(3600)
        yield 0


@pytest.mark.parametrize("thread_pool", [False, True], ids=["processes", "threads"])
def test_a_worker_that_finishes_early_does_not_stall_the_others(thread_pool):
    """Worker 0 yields 1 item, worker 1 yields 9: all 10 arrive, none repeated."""
    loader = DataLoader(Uneven([1, 9]), batch_size=2, num_workers=2, thread_pool=thread_pool)
    got = sorted(i for b in loader for i in b.tolist())
    assert got == [0] + [1000 + n for n in range(9)]


def test_round_robin_skips_exhausted_workers():
    """After worker 0 ends, the remaining batches all come from worker 1, in order."""
    loader = DataLoader(Uneven([2, 6]), batch_size=2, num_workers=2)
    assert batches_as_lists(loader) == [[0, 1], [1000, 1001], [1002, 1003], [1004, 1005]]


def test_breaking_a_persistent_iterable_epoch_restarts_cleanly():
    """After an early break, the next epoch of a persistent pool starts from scratch."""
    with DataLoader(
        ShardedIterable(40), batch_size=2, num_workers=2, persistent_workers=True
    ) as loader:
        iterator = iter(loader)
        next(iterator)
        iterator.close()
        second = batches_as_lists(loader)
    assert sorted(i for b in second for i in b) == list(range(40))


def test_iterable_worker_error_keeps_type_and_message():
    """An exception inside a worker's iterator reaches the user with its type."""
    children, segments = child_pids(), shm_segments()
    loader = DataLoader(FailsAfter(3), batch_size=2, num_workers=2)
    with pytest.raises(ValueError, match="stream broke at 3"):
        list(itertools.islice(loader, 100))
    assert_no_leaks(children, segments)


def test_iterable_timeout_names_the_waiting_worker():
    """A stalled stream raises LoaderTimeoutError naming the worker."""
    children, segments = child_pids(), shm_segments()
    loader = DataLoader(Stalls(), batch_size=None, num_workers=2, timeout=0.3)
    with pytest.raises(LoaderTimeoutError, match="worker 0"):
        next(iter(loader))
    assert_no_leaks(children, segments)


def test_iterable_worker_init_fn_runs_in_each_worker():
    """worker_init_fn runs before the worker starts iterating its copy."""
    loader = DataLoader(_InitTagged(), batch_size=None, num_workers=2, worker_init_fn=_tag)
    assert sorted(int(x) for x in loader) == [100, 101]


class _InitTagged(torch.utils.data.IterableDataset):
    tag = -1

    def __iter__(self):
        yield self.tag


def _tag(worker_id):
    batchloader.get_worker_info().dataset.tag = 100 + worker_id


def test_large_iterable_batches_cross_through_shared_memory():
    """Batches above the inline threshold arrive intact from streaming workers."""

    class Big(torch.utils.data.IterableDataset):
        def __iter__(self):
            info = batchloader.get_worker_info()
            for i in range(info.id, 8, info.num_workers):
                yield torch.full((40_000,), float(i))

    got = sorted(
        float(b[0, 0]) for b in DataLoader(Big(), batch_size=2, num_workers=2) for _ in [0]
    )
    assert got == [0.0, 1.0, 4.0, 5.0]
