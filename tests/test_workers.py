"""Multi-worker loading: same batches as one process, worker info, seeds, pools."""

from __future__ import annotations

import logging
import os
import signal

import numpy as np
import pytest
import torch

import batchloader
from batchloader import DataLoader
from tests.helpers import (
    RangeDataset,
    ShardedIterable,
    TensorPairs,
    WorkerInfoDataset,
    batches_as_lists,
)

pytestmark = pytest.mark.timeout(60)


def _single(dataset, **kwargs):
    return batches_as_lists(DataLoader(dataset, num_workers=0, **kwargs))


@pytest.mark.parametrize("thread_pool", [False, True], ids=["processes", "threads"])
def test_two_workers_give_the_single_process_batches(thread_pool):
    """num_workers=2 yields exactly the batches num_workers=0 yields."""
    kwargs = {"batch_size": 5, "shuffle": True, "generator": torch.Generator().manual_seed(3)}
    expected = _single(TensorPairs(37), **kwargs)
    kwargs["generator"] = torch.Generator().manual_seed(3)
    loader = DataLoader(TensorPairs(37), num_workers=2, thread_pool=thread_pool, **kwargs)
    assert batches_as_lists(loader) == expected


def test_large_batches_arrive_through_shared_memory_intact():
    """Batches above the inline threshold are equal after the shared-memory trip."""
    loader = DataLoader(TensorPairs(24, size=100_000), batch_size=4, num_workers=2)
    for k, (x, _y) in enumerate(loader):
        assert x.shape == (4, 100_000)
        assert torch.equal(x[:, 0], torch.arange(4 * k, 4 * k + 4, dtype=torch.float32))
        assert torch.equal(x[:, -1], x[:, 0])


def test_worker_info_is_torchs_object_inside_process_workers():
    """Inside a process worker, ours and torch's get_worker_info return the same object."""
    loader = DataLoader(WorkerInfoDataset(8), batch_size=None, num_workers=2)
    infos = list(loader)
    assert all(bool(info["same"]) for info in infos)
    assert {int(info["id"]) for info in infos} <= {0, 1}
    assert all(int(info["num_workers"]) == 2 for info in infos)


def test_get_worker_info_is_none_in_the_main_process():
    """Outside a worker both functions return None."""
    assert batchloader.get_worker_info() is None
    assert torch.utils.data.get_worker_info() is None


def test_thread_workers_see_their_own_worker_info():
    """Thread workers get distinct ids from batchloader.get_worker_info."""
    loader = DataLoader(WorkerInfoDataset(40), batch_size=None, num_workers=2, thread_pool=True)
    ids = {int(info["id"]) for info in loader}
    assert ids <= {0, 1} and -1 not in ids


def test_each_process_worker_gets_a_distinct_seed():
    """Workers seed torch and NumPy differently, so augmentations differ."""
    loader = DataLoader(WorkerInfoDataset(16), batch_size=None, num_workers=2, prefetch_factor=8)
    by_worker = {}
    for info in loader:
        by_worker.setdefault(int(info["id"]), info)
    assert len(by_worker) == 2
    a, b = by_worker.values()
    assert a["seed"] != b["seed"]
    assert a["torch_rand"] != b["torch_rand"]
    assert a["numpy_rand"] != b["numpy_rand"]


def test_same_generator_seed_reproduces_worker_seeds():
    """The workers' base seed (worker k's seed minus k) comes from the loader's generator."""

    def seeds():
        loader = DataLoader(
            WorkerInfoDataset(4),
            batch_size=None,
            num_workers=2,
            generator=torch.Generator().manual_seed(7),
        )
        return {int(info["seed"]) - int(info["id"]) for info in loader}

    assert seeds() == seeds()


def _record_init(worker_id: int) -> None:
    info = batchloader.get_worker_info()
    info.dataset.initialised_by = worker_id


class _InitRecorder(RangeDataset):
    initialised_by = -1

    def __getitem__(self, i):
        return self.initialised_by


def test_worker_init_fn_runs_once_in_each_worker():
    """worker_init_fn(worker_id) runs in the worker before it loads anything."""
    loader = DataLoader(
        _InitRecorder(20), batch_size=None, num_workers=2, worker_init_fn=_record_init
    )
    assert {int(x) for x in loader} <= {0, 1}


@pytest.mark.parametrize("method", ["spawn", "forkserver"])
def test_spawn_and_forkserver_contexts_load_the_same_batches(method):
    """Workers started with spawn or forkserver receive the pickled dataset once."""
    loader = DataLoader(
        RangeDataset(20), batch_size=6, num_workers=2, multiprocessing_context=method
    )
    assert batches_as_lists(loader) == _single(RangeDataset(20), batch_size=6)


def test_persistent_workers_keep_their_processes_across_epochs():
    """With persistent_workers=True the same worker processes serve every epoch."""
    with DataLoader(
        WorkerInfoDataset(8), batch_size=None, num_workers=2, persistent_workers=True
    ) as loader:
        first = {int(info["pid"]) for info in loader}
        second = {int(info["pid"]) for info in loader}
        assert second <= first or first <= second
        assert first & second


def test_non_persistent_workers_are_fresh_each_epoch():
    """With persistent_workers=False (torch's default) each epoch has new processes."""
    loader = DataLoader(WorkerInfoDataset(8), batch_size=None, num_workers=2)
    first = {int(info["pid"]) for info in loader}
    second = {int(info["pid"]) for info in loader}
    assert not first & second


@pytest.mark.parametrize("thread_pool", [False, True], ids=["processes", "threads"])
def test_out_of_order_delivery_still_yields_every_batch(thread_pool):
    """in_order=False hands batches over as they finish, none lost or repeated."""
    loader = DataLoader(
        RangeDataset(53), batch_size=4, num_workers=3, in_order=False, thread_pool=thread_pool
    )
    seen = sorted(i for batch in loader for i in batch.tolist())
    assert seen == list(range(53))


@pytest.mark.parametrize("thread_pool", [False, True], ids=["processes", "threads"])
def test_iterable_dataset_sharded_by_torch_worker_info_loses_nothing(thread_pool):
    """An IterableDataset that shards by get_worker_info yields each sample once."""
    dataset = ShardedIterable(41, use_torch_info=not thread_pool)
    loader = DataLoader(dataset, batch_size=4, num_workers=2, thread_pool=thread_pool)
    seen = sorted(i for batch in loader for i in batch.tolist())
    assert seen == list(range(41))


def test_iterable_batches_interleave_round_robin_across_workers():
    """Batches alternate between workers, as torch's loader does."""
    loader = DataLoader(ShardedIterable(16), batch_size=2, num_workers=2)
    assert batches_as_lists(loader) == [
        [0, 2],
        [1, 3],
        [4, 6],
        [5, 7],
        [8, 10],
        [9, 11],
        [12, 14],
        [13, 15],
    ]


def test_persistent_iterable_workers_restart_their_stream_each_epoch():
    """A persistent pool streams an iterable dataset afresh every epoch."""
    with DataLoader(
        ShardedIterable(10), batch_size=3, num_workers=2, persistent_workers=True
    ) as loader:
        first = batches_as_lists(loader)
        second = batches_as_lists(loader)
    assert first == second
    assert sorted(i for b in first for i in b) == list(range(10))


def test_prefetch_factor_bounds_the_batches_in_flight():
    """No more than prefetch_factor * num_workers index lists are taken ahead."""
    taken = []

    class CountingSampler:
        def __iter__(self):
            for i in range(40):
                taken.append(i)
                yield [i]

        def __len__(self):
            return 40

    loader = DataLoader(
        RangeDataset(40), batch_sampler=CountingSampler(), num_workers=2, prefetch_factor=3
    )
    iterator = iter(loader)
    next(iterator)
    assert len(taken) <= 2 * 3 + 1
    iterator.close()


class _Augmented(RangeDataset):
    """Adds torch, NumPy and random noise to each sample: a random augmentation."""

    def __getitem__(self, i):
        import random

        return [i, torch.rand(()).item(), float(np.random.rand()), random.random()]


def _augmented_epochs(num_workers, *, seed=5, persistent=False):
    loader = DataLoader(
        _Augmented(24),
        batch_size=3,
        num_workers=num_workers,
        persistent_workers=persistent,
        generator=torch.Generator().manual_seed(seed),
    )
    epochs = [batches_as_lists(loader) for _ in range(2)]
    if persistent:
        loader.close()
    return epochs


def test_random_augmentations_are_reproducible_with_the_same_seed():
    """Same generator seed, same augmented batches, whichever worker made each one."""
    assert _augmented_epochs(2) == _augmented_epochs(2)


def test_random_augmentations_do_not_depend_on_the_worker_count():
    """One, two or three process workers give the same augmented batches."""
    assert _augmented_epochs(1) == _augmented_epochs(2) == _augmented_epochs(3)


def test_persistent_workers_augment_each_epoch_differently_but_reproducibly():
    """A persistent pool gives new augmentations each epoch, the same on a rerun."""
    first = _augmented_epochs(2, persistent=True)
    assert first[0] != first[1]
    assert first == _augmented_epochs(2, persistent=True)


def test_different_seeds_give_different_augmentations():
    """Another generator seed changes the augmentations."""
    assert _augmented_epochs(2, seed=1) != _augmented_epochs(2, seed=2)


def test_workers_never_run_the_parents_signal_handlers(tmp_path, caplog):
    """A trainer's SIGTERM/SIGUSR1 handlers stay in the trainer; stopping a worker needs none."""
    ran = tmp_path / "handler-ran"

    def handler(signum, frame):
        with ran.open("a") as out:
            out.write(f"{os.getpid()} {signum}\n")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGTERM, signal.SIGUSR1)}
    try:
        with caplog.at_level(logging.WARNING, logger="batchloader"):
            loader = DataLoader(RangeDataset(8), batch_size=2, num_workers=2)
            assert len(list(loader)) == 4  # the epoch's end stops the workers
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
    assert not ran.exists(), ran.read_text()
    assert not [r for r in caplog.records if "ignored SIGTERM" in r.getMessage()]


class _CountsWorkersAtFirstDraw:
    """A batch sampler that notes how many worker processes exist when it is first drawn."""

    def __init__(self, seen):
        self.seen = seen

    def __iter__(self):
        import multiprocessing

        self.seen.append(len(multiprocessing.active_children()))
        yield from ([i, i + 1] for i in range(0, 8, 2))

    def __len__(self):
        return 4


def test_every_worker_is_forked_before_the_sampler_is_drawn():
    """A sampler's permutation is made after the forks, so no worker copies its pages."""
    seen = []
    loader = DataLoader(
        RangeDataset(8), batch_sampler=_CountsWorkersAtFirstDraw(seen), num_workers=3
    )
    assert len(list(loader)) == 4
    assert seen == [3]


def test_a_workers_torch_seed_is_what_torch_manual_seed_gives():
    """A new worker's torch generator: the seed and the state torch.manual_seed(seed) makes."""
    from batchloader import _seeding

    torch.manual_seed(1234)
    expected_state = torch.get_rng_state()
    torch.manual_seed(1)
    _seeding.seed_process_worker(1234, 0, 1234)
    assert torch.initial_seed() == 1234
    assert torch.equal(torch.get_rng_state(), expected_state)


def test_a_cpu_only_torch_seeds_a_worker_without_torch_manual_seed(monkeypatch):
    """With no accelerator to seed, the worker skips torch.manual_seed and its stack trace."""
    from batchloader import _seeding

    monkeypatch.setattr(_seeding, "seeds_an_accelerator", lambda: False)
    monkeypatch.setattr(torch, "manual_seed", lambda _seed: pytest.fail("torch.manual_seed called"))
    _seeding.seed_process_worker(99, 0, 99)
    assert torch.initial_seed() == 99


def _backends(monkeypatch, *, cuda_built, cuda_bad_fork):
    """This torch as if only CUDA might be built, with the fork state given."""
    monkeypatch.setattr(torch.backends.cuda, "is_built", lambda: cuda_built)
    monkeypatch.setattr(torch.cuda, "_is_in_bad_fork", lambda: cuda_bad_fork)
    monkeypatch.setattr(torch.xpu, "_is_compiled", lambda: False)
    monkeypatch.setattr(torch.mtia, "_is_compiled", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_built", lambda: False)


def test_a_built_usable_accelerator_is_seeded_through_torch_manual_seed(monkeypatch):
    """CUDA built and usable in this process: its lazy seeding must be queued, as torch does."""
    from batchloader import _seeding

    _backends(monkeypatch, cuda_built=True, cuda_bad_fork=False)
    assert _seeding.seeds_an_accelerator()


def test_an_accelerator_a_forked_worker_cannot_use_is_not_seeded(monkeypatch):
    """CUDA initialised before the fork (bad fork in the child): torch.manual_seed skips it too."""
    from batchloader import _seeding

    _backends(monkeypatch, cuda_built=True, cuda_bad_fork=True)
    assert not _seeding.seeds_an_accelerator()
