"""Failure modes: each raises a clear error within seconds and leaks nothing."""

from __future__ import annotations

import signal
import time

import pytest
import torch

from batchloader import DataLoader, LoaderTimeoutError, WorkerDiedError
from tests.helpers import (
    ExitingDataset,
    FailingDataset,
    RangeDataset,
    SlowDataset,
    assert_no_leaks,
    child_pids,
    shm_segments,
)

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def no_leaks():
    """Fails the test if it leaves processes, segments or threads behind."""
    children, segments = child_pids(), shm_segments()
    yield
    assert_no_leaks(children, segments)


@pytest.mark.parametrize("thread_pool", [False, True], ids=["processes", "threads"])
def test_dataset_exception_keeps_its_type_and_message(no_leaks, thread_pool):
    """A KeyError in __getitem__ reaches the user as a KeyError with its message."""
    loader = DataLoader(
        FailingDataset(20, bad=13), batch_size=4, num_workers=2, thread_pool=thread_pool
    )
    with pytest.raises(KeyError, match="sample 13 is corrupt"):
        list(loader)


def test_dataset_exception_carries_worker_traceback_and_context(no_leaks):
    """The error names the worker, batch and indices and chains the worker's traceback."""
    loader = DataLoader(FailingDataset(20, bad=13), batch_size=4, num_workers=2)
    with pytest.raises(KeyError) as info:
        list(loader)
    notes = "\n".join(info.value.__notes__)
    assert "batch 3" in notes and "[12, 13, 14, 15]" in notes and "worker" in notes
    assert "__getitem__" in str(info.value.__cause__)
    assert "raise KeyError" in str(info.value.__cause__)


def test_unpicklable_exception_becomes_worker_error(no_leaks):
    """An exception that cannot cross processes arrives as WorkerError with its text."""
    from batchloader import WorkerError

    loader = DataLoader(_Unpicklable(8), batch_size=2, num_workers=2)
    with pytest.raises(WorkerError, match="_LocalError: cannot travel"):
        list(loader)


class _Unpicklable(RangeDataset):
    def __getitem__(self, i):
        class _LocalError(Exception):
            pass

        raise _LocalError("cannot travel")


def test_worker_init_fn_exception_surfaces_in_main_process(no_leaks):
    """An exception in worker_init_fn is raised by the loader, not swallowed."""
    loader = DataLoader(RangeDataset(8), batch_size=2, num_workers=2, worker_init_fn=_bad_init)
    with pytest.raises(ValueError, match=r"bad init 0|bad init 1"):
        list(loader)


def _bad_init(worker_id):
    raise ValueError(f"bad init {worker_id}")


def test_worker_killed_by_sigkill_raises_worker_died(no_leaks):
    """A worker killed mid-epoch is reported by pid and signal, and nothing hangs."""
    loader = DataLoader(
        ExitingDataset(40, bad=9, signal=signal.SIGKILL), batch_size=2, num_workers=2
    )
    start = time.monotonic()
    with pytest.raises(WorkerDiedError, match="SIGKILL") as info:
        list(loader)
    assert time.monotonic() - start < 10
    assert info.value.pid is not None and info.value.exitcode == -signal.SIGKILL


def test_worker_exiting_with_a_code_raises_worker_died(no_leaks):
    """os._exit(123) in a worker names the exit code."""
    loader = DataLoader(ExitingDataset(40, bad=5, code=123), batch_size=2, num_workers=2)
    with pytest.raises(WorkerDiedError, match="exited unexpectedly with exit code 123"):
        list(loader)


def test_timeout_names_the_batch_and_the_workers(no_leaks):
    """A batch slower than timeout raises LoaderTimeoutError (a RuntimeError)."""
    loader = DataLoader(SlowDataset(8, delay_s=5), batch_size=2, num_workers=2, timeout=0.3)
    with pytest.raises(
        LoaderTimeoutError, match=r"timed out after 0.3 seconds.*batch 0.*pid"
    ) as info:
        next(iter(loader))
    assert isinstance(info.value, RuntimeError)


def test_breaking_out_early_leaves_nothing_behind(no_leaks):
    """An epoch abandoned after one batch and closed frees workers and segments."""
    loader = DataLoader(torch.ones(64, 70_000), batch_size=4, num_workers=2)
    iterator = iter(loader)
    next(iterator)
    iterator.close()


def test_deleting_the_iterator_shuts_workers_down(no_leaks):
    """Dropping an unfinished iterator is enough to stop its workers."""
    loader = DataLoader(torch.ones(64, 70_000), batch_size=4, num_workers=2)
    iterator = iter(loader)
    next(iterator)
    del iterator
    import gc

    gc.collect()


def test_closing_a_persistent_loader_stops_its_pool(no_leaks):
    """close() ends a persistent pool; the context manager does the same."""
    with DataLoader(
        RangeDataset(16), batch_size=4, num_workers=2, persistent_workers=True
    ) as loader:
        assert len(list(loader)) == 4
        assert len(list(loader)) == 4


def test_infinite_loop_in_dataset_is_stopped_by_close(no_leaks):
    """A worker stuck forever is terminated when the iterator is closed."""
    loader = DataLoader(SlowDataset(4, delay_s=3600), batch_size=2, num_workers=2, timeout=0.2)
    iterator = iter(loader)
    with pytest.raises(LoaderTimeoutError):
        next(iterator)
    iterator.close()


def test_iterating_again_after_exhaustion_stops_immediately():
    """next() on an exhausted iterator raises StopIteration again, without hanging."""
    iterator = iter(DataLoader(RangeDataset(4), batch_size=2, num_workers=2))
    assert len(list(iterator)) == 2
    with pytest.raises(StopIteration):
        next(iterator)


def test_unpicklable_dataset_with_spawn_names_its_type():
    """With spawn, a dataset that cannot be pickled is named in a TypeError."""

    class Local(RangeDataset):
        pass

    loader = DataLoader(Local(4), num_workers=2, multiprocessing_context="spawn")
    with pytest.warns(UserWarning, match="Got pickle error"):
        with pytest.raises(TypeError, match=r"dataset of type .*Local cannot be pickled"):
            iter(loader)


@pytest.mark.parametrize("context", ["spawn", "forkserver"])
def test_unpicklable_worker_init_fn_warns_in_torchs_words_then_raises(context):
    """A local worker_init_fn with a pickling start method: torch's warning, then a TypeError."""

    def local_init(worker_id):
        pass

    loader = DataLoader(
        RangeDataset(4), num_workers=2, worker_init_fn=local_init, multiprocessing_context=context
    )
    with pytest.warns(
        UserWarning, match=r"^Got pickle error when attempting to start a worker"
    ) as warned:
        with pytest.raises(TypeError, match=r"worker_init_fn of type .*cannot be pickled"):
            iter(loader)
    assert warned[0].filename == __file__  # it points at the iter() call


def test_failure_while_receiving_a_batch_ends_the_epoch(no_leaks, monkeypatch):
    """An error in the main process's receiving step stops the workers too."""
    from batchloader import _shm

    def broken(self, packed):
        raise TypeError("cannot map batch")

    monkeypatch.setattr(_shm.Receiver, "unpack", broken)
    loader = DataLoader(torch.ones(64, 70_000), batch_size=4, num_workers=2)
    with pytest.raises(TypeError, match="cannot map batch"):
        list(loader)


def test_loader_does_not_keep_an_abandoned_epoch_alive(no_leaks):
    """Dropping a half-read iterator frees its workers even while the loader lives."""
    loader = DataLoader(RangeDataset(64), batch_size=2, num_workers=2)
    iterator = iter(loader)
    next(iterator)
    del iterator
    import gc

    gc.collect()
    assert loader is not None


def test_unclosed_persistent_loader_warns_resource_warning(no_leaks):
    """Dropping a persistent loader without close() warns, then stops its pool."""
    import gc

    loader = DataLoader(RangeDataset(8), batch_size=4, num_workers=2, persistent_workers=True)
    assert len(list(loader)) == 2
    with pytest.warns(ResourceWarning, match="never closed"):
        del loader
        gc.collect()


class _Segfaults(RangeDataset):
    def __getitem__(self, i):
        import os

        os.kill(os.getpid(), signal.SIGSEGV)


def test_a_segfault_is_not_blamed_on_the_out_of_memory_killer():
    with pytest.raises(WorkerDiedError) as info:
        list(DataLoader(_Segfaults(2), num_workers=1))
    assert "out-of-memory" not in str(info.value) and "native code" in str(info.value)


class _StuckOnce(RangeDataset):
    """Batch 0 of the first epoch hangs its worker; everything after is quick."""

    def __init__(self, n, flag):
        super().__init__(n)
        self.flag = flag

    def __getitem__(self, i):
        import os

        if i == 0 and not os.path.exists(self.flag):
            open(self.flag, "w").close()
            time.sleep(30)
        return i


def test_a_timed_out_persistent_epoch_does_not_keep_the_stuck_worker(tmp_path):
    dataset = _StuckOnce(4, str(tmp_path / "stuck"))
    with DataLoader(dataset, num_workers=2, persistent_workers=True, timeout=1) as loader:
        with pytest.raises(LoaderTimeoutError):
            list(loader)
        assert [int(x) for x in loader] == [0, 1, 2, 3]  # fresh workers, all of them


class _LambdaSamples(RangeDataset):
    def __getitem__(self, i):
        return lambda: i  # cannot be pickled back to the main process


def test_an_unpicklable_sample_names_its_batch_and_type():
    with pytest.raises(Exception, match=r"batch 0, indices \[0\]") as info:
        next(iter(DataLoader(_LambdaSamples(2), batch_size=1, num_workers=1, collate_fn=list)))
    assert "worker -1" not in str(info.value)
