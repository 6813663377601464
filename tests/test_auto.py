"""``num_workers="auto"``: the pool grows and shrinks while the epoch runs; batches never change.

Most tests drive the resizing on a fixed schedule (a scripted tuner), so that
they pin the machinery, not the tuner's judgement; the last ones run the real
tuner on a dataset whose needs are plain.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from batchloader import DataLoader, _tuning
from batchloader._tuning import AutoCount, Change
from tests.helpers import RangeDataset, SlowDataset, assert_no_leaks, child_pids, shm_segments


class Augmented(RangeDataset):
    """Each sample draws from torch's, NumPy's and Python's global generators."""

    def __getitem__(self, i: int):
        import random

        import numpy as np

        return torch.tensor([i, torch.randint(0, 10**6, ()).item(), np.random.randint(10**6),
                             random.randrange(10**6)])  # fmt: skip


@pytest.fixture
def scripted(monkeypatch):
    """Makes auto's tuner change the worker count every few batches, on a fixed schedule."""
    sizes = itertools.cycle([3, 1, 4, 2, 1, 3])

    def observe(self, stats, batch_bytes=0):
        if stats.wait.count % 5 != 2:
            return None
        self.workers = next(sizes)
        return Change(self.workers, self.prefetch, "scripted")

    monkeypatch.setattr(_tuning.AutoTuner, "observe", observe)


def _epoch(loader):
    return [b.tolist() for b in loader]


def _samples(loader):
    return [sample for batch in loader for sample in batch.tolist()]


def test_auto_keeps_num_workers_an_int_that_says_auto():
    """loader.num_workers is an int (what Lightning compares), shown as auto(n)."""
    loader = DataLoader(RangeDataset(4), num_workers="auto")
    assert isinstance(loader.num_workers, int) and isinstance(loader.num_workers, AutoCount)
    assert repr(loader.num_workers) == f"auto({int(loader.num_workers)})"
    rebuilt = DataLoader(RangeDataset(4), num_workers=loader.num_workers)
    assert isinstance(rebuilt.num_workers, AutoCount)  # a framework's rebuild keeps it auto


def test_a_word_other_than_auto_is_refused():
    """num_workers='many' names the argument and what it takes."""
    with pytest.raises(ValueError, match=r"num_workers should be an integer or 'auto'.*'many'"):
        DataLoader(RangeDataset(4), num_workers="many")


@pytest.mark.parametrize("in_order", [True, False])
def test_resizing_mid_epoch_gives_the_batches_of_a_fixed_count(scripted, in_order):
    """Growing and shrinking during the epoch: the same augmented batches as 2 fixed workers."""
    dataset = Augmented(120)
    options = {"batch_size": 4, "shuffle": True, "in_order": in_order}
    fixed = _epoch(
        DataLoader(dataset, num_workers=2, generator=torch.Generator().manual_seed(7), **options)
    )
    auto = DataLoader(
        dataset, num_workers="auto", generator=torch.Generator().manual_seed(7), **options
    )
    got = _epoch(auto)
    assert (got if in_order else sorted(got)) == (fixed if in_order else sorted(fixed))
    assert len(auto.stats.decisions) >= 5  # it did change, several times


def test_thread_workers_resize_too(scripted):
    """Thread workers (thread_pool=True) grow and shrink; nothing is lost or repeated."""
    loader = DataLoader(RangeDataset(100), batch_size=4, num_workers="auto", thread_pool=True)
    assert sorted(_samples(loader)) == list(range(100))
    assert len(loader.stats.decisions) >= 5


def test_resizing_leaves_no_process_or_segment_behind(scripted):
    """After epochs that grew and shrank the pool, closing leaves nothing."""
    before_children, before_shm = child_pids(), shm_segments()
    with DataLoader(
        RangeDataset(200), batch_size=8, num_workers="auto", persistent_workers=True
    ) as loader:
        for _ in range(2):
            assert sorted(_samples(loader)) == list(range(200))
    assert_no_leaks(before_children, before_shm)


def test_resume_across_a_change_of_worker_count(scripted):
    """A state saved mid-epoch under one count resumes under another with the same batches."""
    dataset = Augmented(80)

    def loader():
        return DataLoader(
            dataset, batch_size=4, shuffle=True, num_workers="auto",
            generator=torch.Generator().manual_seed(11),
        )  # fmt: skip

    whole = _epoch(loader())
    first = loader()
    iterator = iter(first)
    head = [next(iterator).tolist() for _ in range(9)]
    state = first.state_dict()
    assert state["auto"]["num_workers"] == int(first.num_workers)
    iterator.close()
    second = loader()
    second.load_state_dict(state)
    assert head + _epoch(second) == whole


def test_the_settled_count_is_where_the_next_epoch_starts(scripted):
    """loader.num_workers follows auto's changes, so the next epoch (and a rebuild) starts there."""
    loader = DataLoader(RangeDataset(40), batch_size=4, num_workers="auto")
    _epoch(loader)
    last = loader.stats.decisions[-1]
    assert last.split(": ")[1].startswith(f"{int(loader.num_workers)} workers")


def test_a_pin_memory_thread_parks_while_auto_resizes(scripted, monkeypatch):
    """With a pin-memory thread running, auto's forks happen while it is parked."""
    from batchloader import loader as loader_module

    monkeypatch.setattr(loader_module, "make_pin_fn", lambda *_, **__: lambda b: b)
    seeded = {"batch_size": 4, "generator": torch.Generator().manual_seed(5)}
    got = _epoch(DataLoader(Augmented(60), num_workers="auto", pin_memory=True, **seeded))
    seeded["generator"] = torch.Generator().manual_seed(5)
    assert got == _epoch(DataLoader(Augmented(60), num_workers=2, **seeded))


def test_auto_grows_the_pool_for_an_io_bound_dataset():
    """Workers that sleep: the loop waits, so auto adds workers (more than the cores)."""
    loader = DataLoader(SlowDataset(800, delay_s=0.005), batch_size=4, num_workers="auto")
    assert sorted(_samples(loader)) == list(range(800))
    assert int(loader.num_workers) > _tuning.cores(), str(loader.stats)
    assert "I/O" in loader.stats.decisions[0]


def test_auto_uses_few_workers_when_the_training_step_is_slow():
    """A loop slower than loading: auto ends with no more workers than it needs."""
    import time

    loader = DataLoader(
        SlowDataset(200, delay_s=0.0005), batch_size=4, num_workers="auto",
        persistent_workers=True,
    )  # fmt: skip
    with loader:
        for _ in range(2):
            for _ in loader:
                time.sleep(0.02)
        assert int(loader.num_workers) <= 2, str(loader.stats)
        assert loader.stats.starved_share < 0.02, str(loader.stats)


class _Counters:
    """The counters the tuner reads from an epoch's recorder, driven by hand."""

    def __init__(self):
        self.batches, self.starved, self.busy_s, self.cpu_s = 0, 0.0, 0.0, 0.0

    @property
    def wait(self):
        return type("Series", (), {"count": self.batches})()

    def counted(self, name):
        return self.starved

    def step(self, seconds, *, starved, busy, cpu):
        self.batches += 1
        self.starved += seconds * starved
        self.busy_s += seconds * busy  # the workers together: 2.0 is two busy workers
        self.cpu_s += seconds * busy * cpu


def _drive(monkeypatch, tuner, epochs, batches, seconds, **shares):
    """Epochs of ``batches`` batches, ``seconds`` each, on a fake clock; the changes made."""
    clock = [0.0]
    monkeypatch.setattr(_tuning.time, "perf_counter", lambda: clock[0])
    changes = []
    for _ in range(epochs):
        tuner.begin_epoch(tuner.workers, tuner.prefetch)
        counters = _Counters()
        for _ in range(batches):
            clock[0] += seconds
            counters.step(seconds, **shares)
            change = tuner.observe(counters)
            if change is not None:
                changes.append(change)
    return changes


def test_windows_add_up_over_epochs_shorter_than_a_window(monkeypatch):
    """Epochs of 0.1 s (shorter than a window) still lead an I/O-bound loader to grow."""
    tuner = _tuning.AutoTuner(workers=2, prefetch=2, processes=True, limit=16)
    changes = _drive(monkeypatch, tuner, 12, 10, 0.01, starved=0.9, busy=2.0, cpu=0.05)
    assert changes and changes[0].workers == 4 and "I/O" in changes[0].why


def test_settling_is_a_decision_the_report_shows(monkeypatch):
    """A loop that does not wait, with every worker needed: the tuner says it settled, once."""
    tuner = _tuning.AutoTuner(workers=2, prefetch=2, processes=True, limit=16)
    changes = _drive(monkeypatch, tuner, 1, 200, 0.01, starved=0.0, busy=1.9, cpu=1.0)
    assert [c.workers for c in changes] == [2]
    assert changes[0].why.startswith("settled: ")


def _epoch_stats(*, batches, wall_s, bottleneck_shares):
    """A finished epoch's statistics, its numbers chosen to read as one bottleneck."""
    from batchloader._stats import LoaderStats

    starved, busy = bottleneck_shares
    return LoaderStats(
        epoch=0, running=False, wall_s=wall_s, batches=batches, samples=batches * 64,
        first_batch_s=0.01, wait_s=wall_s * starved, wait_share=starved, wait_p50_s=0.0,
        wait_p95_s=0.0, step_s=0.0, worker_batch_p50_s=0.0001, worker_batch_p95_s=0.0001,
        worker_busy_share=busy, worker_cpu_share=1.0, steady_wait_share=starved,
        starved_share=starved, ready_mean=0.0, bytes=0, settings={"num_workers": 2},
        available_cores=2,
    )  # fmt: skip


def test_auto_tries_no_workers_after_an_epoch_its_main_process_paced():
    """Workers idle while the loop waited (samples too cheap): the next epoch tries none."""
    auto = _tuning.LoaderAuto()
    paced = _epoch_stats(batches=500, wall_s=0.5, bottleneck_shares=(0.6, 0.3))
    assert auto.epoch_workers(paced, 2) == 0
    assert auto.note.startswith("trying num_workers=0")


def test_auto_keeps_no_workers_only_if_that_epoch_was_faster():
    """The trial epoch is judged by its rate: faster stays at 0, slower goes back."""
    paced = _epoch_stats(batches=500, wall_s=0.5, bottleneck_shares=(0.6, 0.3))
    faster = _epoch_stats(batches=500, wall_s=0.2, bottleneck_shares=(0.9, 0.0))
    slower = _epoch_stats(batches=500, wall_s=1.0, bottleneck_shares=(0.9, 0.0))
    for trial, expected in ((faster, 0), (slower, 2)):
        auto = _tuning.LoaderAuto()
        assert auto.epoch_workers(paced, 2) == 0
        assert auto.epoch_workers(trial, 0) == expected
        assert auto.epoch_workers(paced, expected) == expected  # tried once, not again


def test_busy_workers_are_never_swapped_for_none():
    """Workers busy making batches (CPU- or I/O-bound): no trial of num_workers=0."""
    busy = _epoch_stats(batches=500, wall_s=0.5, bottleneck_shares=(0.6, 0.95))
    assert _tuning.LoaderAuto().epoch_workers(busy, 2) == 2


def test_an_epoch_auto_runs_without_workers_is_that_of_num_workers_0(monkeypatch):
    """Its batches come from the main process's generators, as with a fixed num_workers=0."""
    monkeypatch.setattr(_tuning.LoaderAuto, "epoch_workers", lambda *_: 0)
    dataset = Augmented(24)
    with DataLoader(dataset, batch_size=4, num_workers="auto", persistent_workers=True) as auto:
        _seed_all(3)
        got = _epoch(auto)
        assert int(auto.num_workers) == 0 and auto.stats.settings["num_workers"] == 0
    _seed_all(3)
    assert got == _epoch(DataLoader(dataset, batch_size=4))


def _seed_all(seed):
    import random

    import numpy as np

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
