"""Workers are forked while no thread of the loader's runs (Python 3.12+ warns otherwise).

The pool runs no thread of its own, and the loader's other threads (a
pin-memory stage, thread workers) park while a worker is forked. An at-fork
hook records which threads were alive at each fork.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading

import pytest

from batchloader import DataLoader
from batchloader._pin_memory import PinMemoryIter
from tests.helpers import RangeDataset, SlowDataset, child_env

_forks: list[list[str]] | None = None


def _record_threads_at_fork() -> None:
    if _forks is not None:
        _forks.append([t.name for t in threading.enumerate() if t is not threading.main_thread()])


os.register_at_fork(before=_record_threads_at_fork)


@pytest.fixture
def forks():
    """The names of the other threads alive at each fork made during the test."""
    global _forks
    _forks = []
    yield _forks
    _forks = None


def _ours(names: list[str]) -> list[str]:
    return [name for name in names if name.startswith("batchloader")]


def _mark(batch):
    return batch


def test_a_process_pool_forks_with_no_thread_of_its_own(forks):
    """Starting workers while another loader's persistent workers run: no thread of ours."""
    with DataLoader(RangeDataset(8), batch_size=2, num_workers=2, persistent_workers=True) as a:
        epoch_a = iter(a)
        next(epoch_a)
        assert [b.tolist() for b in DataLoader(RangeDataset(4), batch_size=2, num_workers=2)] == [
            [0, 1],
            [2, 3],
        ]
        assert len(list(epoch_a)) == 3
    assert len(forks) == 4
    assert all(_ours(names) == [] for names in forks)


def test_a_pin_memory_thread_parks_while_workers_are_forked(forks):
    """A live pin-memory stage steps aside for the fork and then goes on where it was."""
    loader = DataLoader(SlowDataset(12, delay_s=0.005), batch_size=2, num_workers=2)
    pinned = PinMemoryIter(iter(loader), _mark, queue_depth=2)
    first = next(pinned)
    second_loader = DataLoader(RangeDataset(4), batch_size=2, num_workers=2)
    assert [b.tolist() for b in second_loader] == [[0, 1], [2, 3]]
    rest = list(pinned)
    assert [b.tolist() for b in [first, *rest]] == [[i, i + 1] for i in range(0, 12, 2)]
    assert len(forks) == 4
    assert all(_ours(names) == [] for names in forks)


def test_thread_workers_park_while_another_loader_forks(forks):
    """A thread-pool epoch in progress steps aside for another loader's fork."""
    threads = DataLoader(SlowDataset(16, delay_s=0.005), batch_size=2, num_workers=3)
    threads.thread_pool = True
    epoch = iter(threads)
    first = next(epoch)
    assert len(list(DataLoader(RangeDataset(4), batch_size=2, num_workers=2))) == 2
    rest = list(epoch)
    assert [b.tolist() for b in [first, *rest]] == [[i, i + 1] for i in range(0, 16, 2)]
    assert len(forks) == 2
    assert all(_ours(names) == [] for names in forks)


def test_starting_thread_workers_parks_no_other_loaders_threads(monkeypatch):
    """Thread workers start without a fork, so nobody else's threads are stopped for it."""
    from batchloader import _fork_guard

    parked = []
    real = _fork_guard._parked
    monkeypatch.setattr(_fork_guard, "_parked", lambda: parked.append(1) or real())
    other = DataLoader(SlowDataset(12, 0.002), batch_size=2, num_workers=2, thread_pool=True)
    with DataLoader(RangeDataset(8), batch_size=2, num_workers=2, thread_pool=True) as loader:
        epoch = iter(other)
        next(epoch)
        for _ in range(2):
            assert len(list(loader)) == 4
        assert len(list(epoch)) == 5
    assert parked == []


_QUIET_SCRIPT = """
import warnings
from batchloader import DataLoader
from batchloader._pin_memory import PinMemoryIter
from tests.helpers import RangeDataset, SlowDataset

warnings.simplefilter("always")
with DataLoader(SlowDataset(12, 0.002), batch_size=2, num_workers=2, persistent_workers=True) as a:
    pinned = PinMemoryIter(iter(a), lambda b: b, queue_depth=2)
    next(pinned)
    threads = DataLoader(SlowDataset(12, 0.002), batch_size=2, num_workers=2, thread_pool=True)
    epoch = iter(threads)
    next(epoch)
    for _ in range(3):
        list(DataLoader(RangeDataset(8), batch_size=2, num_workers=2))
    print(len(list(pinned)), len(list(epoch)))

# num_workers="auto" growing and shrinking its pool while its pin-memory thread runs
import itertools
from batchloader import _tuning, loader as loader_module
sizes = itertools.cycle([3, 1, 4, 2])
def observe(self, stats, batch_bytes=0):
    if stats.wait.count % 3 != 2:
        return None
    self.workers = next(sizes)
    return _tuning.Change(self.workers, self.prefetch, "scripted")
_tuning.AutoTuner.observe = observe
loader_module.make_pin_fn = lambda *_, **__: lambda b: b
auto = DataLoader(SlowDataset(40, 0.002), batch_size=2, num_workers="auto", pin_memory=True)
print(len(list(auto)), len(auto.stats.decisions) > 4)
"""


def test_no_fork_of_ours_warns_about_threads():
    """Python 3.12+: no 'is multi-threaded, use of fork()' warning with loaders' threads running."""
    done = subprocess.run(
        [sys.executable, "-W", "always", "-c", _QUIET_SCRIPT],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["5", "5", "20", "True"]
    assert "multi-threaded" not in done.stderr, done.stderr
