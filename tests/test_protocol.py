"""The worker task function and the iterator's bookkeeping, in-process."""

from __future__ import annotations

import pickle

import pytest

from batchloader import _worker
from batchloader._config import FetchMode, FetchSpec, LoaderConfig, WorkerKind
from batchloader._errors import WorkerError, _RemoteError
from batchloader._fetch import fetch_batch
from batchloader._multiworker import MultiWorkerIter
from batchloader._worker import Result, Status, Task


def _spec(dataset, mode=FetchMode.SAMPLES, collate_fn=list):
    return FetchSpec(dataset, mode, collate_fn, None, 2, False)


@pytest.fixture
def in_worker():
    """Runs the thread-worker initializer in this thread, then undoes it."""

    def start(spec):
        _worker.init_thread_worker(_worker.WorkerSetup(spec, 1, 0, None), 0)

    yield start
    del _worker._local.state


def test_run_task_returns_the_collated_batch(in_worker):
    """A task's result carries its batch id, the worker id and the batch."""
    in_worker(_spec(list(range(10))))
    result = _worker.run_task(Task(7, [3, 4], epoch=2))
    assert (result.batch_id, result.worker_id, result.status, result.payload, result.epoch) == (
        7,
        0,
        Status.OK,
        [3, 4],
        2,
    )
    assert result.busy_s >= result.cpu_s >= 0


def test_run_task_uses_getitems_when_the_dataset_has_it(in_worker):
    """A dataset's __getitems__ fetches the whole index list in one call."""

    class Batched(list):
        def __getitems__(self, indices):
            return ["batched", *indices]

    in_worker(_spec(Batched(range(10))))
    assert _worker.run_task(Task(0, [1, 2])).payload == ["batched", 1, 2]


def test_run_task_turns_exceptions_into_error_results(in_worker):
    """An exception becomes an ERROR result that rebuilds to the same type."""
    in_worker(_spec([]))
    result = _worker.run_task(Task(1, [5]))
    assert result.status is Status.ERROR
    exc = result.payload.rebuild("context")
    assert isinstance(exc, IndexError)
    assert exc.__notes__ == ["context"]
    assert "IndexError" in str(exc.__cause__)


def test_single_mode_fetches_one_index(in_worker):
    """batch_size=None sends one index per task and converts one sample."""
    in_worker(_spec(["a", "b"], FetchMode.SINGLE, collate_fn=str.upper))
    assert _worker.run_task(Task(0, 1)).payload == "B"


def test_remote_error_falls_back_when_the_exception_cannot_be_pickled():
    """An unpicklable exception rebuilds as WorkerError keeping type name and text."""

    class Local(Exception):
        pass

    error = _RemoteError.capture(Local("boom"))
    rebuilt = pickle.loads(pickle.dumps(error)).rebuild("ctx")
    assert isinstance(rebuilt, WorkerError)
    assert "Local: boom" in str(rebuilt)


class _FakePool:
    """Runs each task at once, in this thread, and records what it was sent."""

    prefix = None
    receiver = None
    broken = False
    closed = False
    max_in_flight = 4  # two workers, two tasks each
    blocked_s = 0.0

    def __init__(self, spec, *, hold=()):
        self.spec, self.sent, self.hold = spec, [], set(hold)
        self.held, self.ready = [], []
        self.epoch = 0

    def begin_epoch(self):
        self.epoch += 1
        return self.epoch

    def start(self, each=None):
        pass

    def submit(self, task):
        self.sent.append(task.batch_id)
        batch = fetch_batch(self.spec, task.indices)
        result = Result(task.batch_id, 0, Status.OK, batch, task.epoch)
        (self.held if task.batch_id in self.hold else self.ready).append(result)
        return True

    @property
    def waiting(self):
        return len(self.ready)

    def receive(self, timeout_s):
        return self.ready.pop(0) if self.ready else None

    def finish_held(self):
        self.ready.extend(self.held)
        self.held.clear()

    def release(self, result):
        pass

    def check_alive(self):
        pass

    def close(self):
        self.closed = True


def _config(**overrides):
    import multiprocessing

    values = {
        "num_workers": 2,
        "worker_kind": WorkerKind.THREAD,
        "prefetch_factor": 2,
        "timeout_s": 0,
        "in_order": True,
        "persistent_workers": False,
        "mp_context": multiprocessing.get_context("fork"),
        "pin_memory": False,
        "pin_memory_device": "",
    }
    values.update(overrides)
    return LoaderConfig(**values)


def test_iterator_sends_no_more_than_the_prefetch_window():
    """At start the iterator sends prefetch_factor * num_workers tasks."""
    pool = _FakePool(_spec(list(range(100))))
    MultiWorkerIter(_config(), pool, iter([[i] for i in range(20)]), owns_pool=True)
    assert pool.sent == [0, 1, 2, 3]


def test_iterator_reorders_results_that_arrive_early():
    """With batch 0 held back, batch 1 waits in the reorder buffer and order is kept."""
    pool = _FakePool(_spec(list(range(100))), hold={0})
    iterator = MultiWorkerIter(_config(), pool, iter([[i] for i in range(6)]), owns_pool=True)
    assert len(pool.ready) == 3  # batches 1-3 are back, waiting behind batch 0
    pool.finish_held()
    assert list(iterator) == [[i] for i in range(6)]


def test_every_batch_id_is_in_flight_buffered_or_handed_out():
    """The bounded-buffer invariant holds after every step of an epoch."""
    pool = _FakePool(_spec(list(range(100))), hold={0, 2})
    iterator = MultiWorkerIter(_config(), pool, iter([[i] for i in range(9)]), owns_pool=True)
    pool.finish_held()
    handed = 0
    for _ in iterator:
        handed += 1
        ids = set(iterator._in_flight) | set(iterator._reorder)
        assert len(ids) <= 4
        assert ids | set(range(handed)) == set(range(handed + len(ids)))
    assert handed == 9


def test_out_of_order_mode_hands_over_whatever_is_ready():
    """in_order=False yields batch 1 before the held batch 0."""
    pool = _FakePool(_spec(list(range(100))), hold={0})
    iterator = MultiWorkerIter(_config(in_order=False), pool, iter([[0], [1]]), owns_pool=True)
    assert next(iterator) == [1]
    pool.finish_held()
    assert next(iterator) == [0]


def test_close_closes_an_owned_pool_once_and_is_idempotent():
    """close() shuts the owned pool and may be called again."""
    pool = _FakePool(_spec(list(range(10))))
    iterator = MultiWorkerIter(_config(), pool, iter([[0]]), owns_pool=True)
    iterator.close()
    iterator.close()
    assert pool.closed
    with pytest.raises(StopIteration):
        next(iterator)


def test_iterator_whose_sampler_fails_at_start_closes_its_pool():
    """An exception while sending the first tasks closes the owned pool and propagates."""

    def broken_sampler():
        yield [0]
        raise OSError("index file vanished")

    pool = _FakePool(_spec(list(range(10))))
    with pytest.raises(OSError, match="index file vanished"):
        MultiWorkerIter(_config(), pool, broken_sampler(), owns_pool=True)
    assert pool.closed


def test_a_process_pool_runs_no_thread_in_the_main_process():
    """Starting process workers and loading from them adds no thread to the main process."""
    import threading

    from batchloader import DataLoader

    before = threading.active_count()
    loader = DataLoader(list(range(8)), batch_size=2, num_workers=2, persistent_workers=True)
    with loader:
        assert len(list(loader)) == 4
        assert threading.active_count() == before
