"""Everything that runs inside a worker (a process or a thread of the pool).

A worker starts with one :class:`WorkerSetup` and its id, sets itself up once
(:func:`init_process_worker`, :func:`init_thread_worker`) and keeps both, with
its info, in a per-worker :class:`_WorkerState` (a thread-local, which for a
process worker is simply the process's own). Then it serves one message at a
time from its own task channel (a pipe, or a queue for a thread) until it is
told to stop or the channel closes; a task carries only ``(batch_id,
indices)``.

Wire protocol::

    main ── Task(batch_id, indices, seed, epoch) ──► worker k      (map-style)
    main ◄── Result(batch_id, k, OK | ERROR | FATAL, payload, epoch) ── worker k

    main ── StreamStart(epoch, shared_seed, resume_states) ──► worker k  (iterable)
    worker k ── Result(n, k, OK | ERROR, ...) * n, Result(EXHAUSTED) ──► k's stream queue
    main ◄── Result(-1, k, STREAM_ENDED, epoch) ── worker k: ready for the next message

    main ── Command.STOP ──► worker k: it exits (0); a process still busy after a
                              short grace is killed
"""

from __future__ import annotations

import contextlib
import enum
import gc
import itertools
import os
import pickle
import queue
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.reduction import ForkingPickler
from typing import Any

import torch

from . import _datapipes, _fork_guard, _seeding, _shm
from ._config import FetchSpec
from ._errors import _RemoteError
from ._fetch import fetch_batch, next_iterable_batch, next_shared_batch
from ._process_life import die_with_parent, forget_parent_signal_handlers, keep_freed_memory
from ._stats import work_time

__all__ = [
    "Command",
    "Result",
    "Status",
    "StreamStart",
    "Task",
    "WorkerSetup",
    "get_worker_info",
    "init_process_worker",
    "init_thread_worker",
    "run_task",
    "serve_process",
    "serve_thread",
    "stream_shard",
]

# How long a streaming worker waits on a full queue before checking the stop flag.
_PUT_POLL_S = 0.1
# How often an idle thread worker checks whether a fork waits for it to park.
_PARK_POLL_S = 0.1


class Status(enum.Enum):
    """What a :class:`Result` carries."""

    OK = "ok"  # payload: the (packed) batch
    ERROR = "error"  # payload: a _RemoteError; this batch failed, the epoch goes on
    FATAL = "fatal"  # payload: a _RemoteError; the worker could not start, the epoch ends
    EXHAUSTED = "exhausted"  # an iterable worker's shard is done; no payload
    STREAM_ENDED = "stream_ended"  # the worker's stream task has returned; it takes messages again


class Command(enum.Enum):
    """A message to a worker that is not work."""

    STOP = "stop"  # leave the serving loop; a process worker then exits with status 0


@dataclass(frozen=True, slots=True)
class Task:
    """One batch to make: an index list (or one index when ``batch_size=None``)."""

    batch_id: int
    indices: Any
    seed: int | None = None  # process workers reseed their global RNGs with it first
    epoch: int = 0  # the pool's epoch: a result of an abandoned epoch is told apart and dropped

    def __reduce__(self) -> tuple[Any, ...]:
        # Positional rebuild: several times cheaper than a frozen dataclass's setstate.
        return (Task, (self.batch_id, self.indices, self.seed, self.epoch))


@dataclass(frozen=True, slots=True)
class StreamStart:
    """Stream this worker's copy of an iterable dataset into its queue, for one epoch."""

    epoch: int
    shared_seed: int | None = None  # the epoch's seed for a datapipe's shufflers
    resume_states: dict[int, Any] | None = None  # per worker: a stateful dataset's saved state


@dataclass(frozen=True, slots=True)
class Result:
    """A worker's answer to one task, or one item of an iterable worker's stream."""

    batch_id: int
    worker_id: int
    status: Status
    payload: Any = None
    epoch: int = 0  # the pool's (or the stream's) epoch: an abandoned epoch's results are dropped
    state: Any = None  # for streams of a stateful dataset: its state_dict() after this batch
    busy_s: float = 0.0  # the worker's time making this batch (for the loader's statistics)
    cpu_s: float = 0.0  # the CPU time of that

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            Result,
            (
                self.batch_id,
                self.worker_id,
                self.status,
                self.payload,
                self.epoch,
                self.state,
                self.busy_s,
                self.cpu_s,
            ),
        )


@dataclass(frozen=True, slots=True)
class WorkerSetup:
    """What every worker receives once, when it starts."""

    spec: FetchSpec
    num_workers: int  # the pool's size when this worker started (WorkerInfo.num_workers)
    base_seed: int
    shm_prefix: str | None  # None: results are not moved to shared memory (threads)
    streams: list[Any] | None = None  # per-worker result queues (iterable datasets)
    leases: Any = None  # shared lease bytes of the workers' reusable segments
    names: Any = None  # the shared table of every segment name the workers made
    stop: Any = None  # an Event: stop streaming (early end of an epoch)


@dataclass(slots=True)
class _WorkerState:
    setup: WorkerSetup
    worker_id: int
    is_process: bool
    info: Any
    init_error: _RemoteError | None = None
    reseeding: _seeding.Reseeding = _seeding.RESEED_ALL


_local = threading.local()


def get_worker_info() -> Any:
    """Information about the current worker, or ``None`` outside a worker.

    Inside a worker it has ``id``, ``num_workers``, ``seed`` and ``dataset``
    (this worker's copy). In process workers it is the very object that
    ``torch.utils.data.get_worker_info()`` returns, so datasets written for
    torch shard correctly. In thread workers only this function knows it.

    Example::

        info = batchloader.get_worker_info()
        shard = range(info.id, n, info.num_workers) if info else range(n)
    """
    state = getattr(_local, "state", None)
    return None if state is None else state.info


def _make_info(worker_id: int, num_workers: int, seed: int, dataset: Any) -> Any:
    from torch.utils.data._utils.worker import WorkerInfo

    return WorkerInfo(id=worker_id, num_workers=num_workers, seed=seed, dataset=dataset)


def _start(setup: WorkerSetup, worker_id: int, *, is_process: bool) -> None:
    seed = _seeding.worker_seed(setup.base_seed, worker_id)
    info = _make_info(worker_id, setup.num_workers, seed, setup.spec.dataset)
    state = _WorkerState(setup, worker_id, is_process, info)
    _local.state = state
    try:
        if is_process:
            import torch.utils.data._utils.worker as torch_worker

            torch_worker._worker_info = info  # torch.utils.data.get_worker_info() sees it
            _seeding.seed_process_worker(seed, worker_id, setup.base_seed)
            if _datapipes.is_datapipe(setup.spec.dataset):
                _datapipes.shard(setup.spec.dataset, setup.num_workers, worker_id)
        if setup.spec.worker_init_fn is not None:
            before = _seeding.generator_states() if is_process else None
            setup.spec.worker_init_fn(worker_id)
            if before is not None:
                state.reseeding = _seeding.untouched(before, _seeding.generator_states())
    except Exception as e:
        # Raising here would make Pool respawn this worker forever; every task reports it instead.
        state.init_error = _RemoteError.capture(e)


def init_process_worker(setup: WorkerSetup, worker_id: int) -> None:
    """Sets up a worker process, once, before it serves its first message."""
    # Everything alive now (a forked worker: all the parent's objects) leaves the
    # collector's care, so a collection never walks them: walking writes to each
    # object's header, and that alone would copy every page of a big dataset.
    gc.freeze()
    forget_parent_signal_handlers()
    die_with_parent(setup.names)
    keep_freed_memory()
    torch.set_num_threads(1)
    if setup.shm_prefix is not None:
        _shm.enable_worker_allocation(setup.shm_prefix, setup.leases, worker_id, setup.names)
    _start(setup, worker_id, is_process=True)


def init_thread_worker(setup: WorkerSetup, worker_id: int) -> None:
    """Sets up a thread worker: the same dataset object, no pickling."""
    _start(setup, worker_id, is_process=False)


def _serve(receive: Callable[[], Any], send: Callable[[Result], None]) -> bool:
    """The worker's loop: one message at a time; True at STOP, False when the channel closed."""
    state: _WorkerState = _local.state
    while True:
        try:
            message = receive()
        except (EOFError, OSError):  # the main process closed the pool, or is gone
            return False
        match message:
            case Task():
                send(run_task(message))
            case StreamStart():
                stream_shard(message.epoch, message.shared_seed, message.resume_states)
                send(Result(-1, state.worker_id, Status.STREAM_ENDED, None, message.epoch))
            case Command.STOP:
                return True
            case _:
                raise RuntimeError(f"[INTERNAL ERROR] a worker got the message {message!r}")


def _pipe_sender(results: Connection) -> Callable[[Result], None]:
    """Sends results over ``results``; a batch that cannot be pickled is sent as its error."""

    def send(result: Result) -> None:
        data: bytes | memoryview
        try:
            if _shm.needs_torch_pickling():
                data = ForkingPickler.dumps(result)
            else:
                data = pickle.dumps(result, pickle.HIGHEST_PROTOCOL)
        except Exception as e:
            if result.status is Status.OK:
                _shm.release(result.payload, _local.state.setup.leases)
            # worker id -1: the batch was made, and failed on its way to the main process
            error = Result(result.batch_id, -1, Status.ERROR, _RemoteError.capture(e), result.epoch)
            data = ForkingPickler.dumps(error)
        results.send_bytes(data)

    return send


def serve_process(
    setup: WorkerSetup, worker_id: int, tasks: Connection, results: Connection
) -> None:
    """A worker process's whole life: set up, then serve its task pipe."""
    init_process_worker(setup, worker_id)
    try:
        stopped = _serve(tasks.recv, _pipe_sender(results))
    except BrokenPipeError:  # the main process closed the pool while a result was on its way
        return
    if stopped:
        # Told to stop: exit 0 at once, as torch's workers do. Skipped: waiting to learn
        # whether the parent died (it did not) and flushing stream queues nobody reads.
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        os._exit(0)


class _Parked(Exception):
    """A thread worker leaves its loop to park while the loader forks (see ``_fork_guard``)."""


def serve_thread(
    setup: WorkerSetup,
    worker_id: int,
    tasks: queue.SimpleQueue[Any],
    results: Any,
    member: Any,
) -> None:
    """A thread worker's life: set up once, then serve its task queue, parking between tasks.

    ``member`` is the pool's record of this worker: its ``parking`` decides,
    and its ``state`` keeps the worker's state for the thread that resumes it.
    """
    if member.state is None:
        init_thread_worker(setup, worker_id)
        member.state = _local.state
    else:
        _local.state = member.state
    _fork_guard.mark_parkable()

    def receive() -> Any:
        while True:
            if member.parking.now():
                raise _Parked
            try:
                return tasks.get(timeout=_PARK_POLL_S)
            except queue.Empty:
                continue

    def send(result: Result) -> None:
        results.put((member, result))  # the pool counts what each worker still owes

    try:
        _serve(receive, send)
    except _Parked:
        return


def _outgoing(state: _WorkerState, batch: Any) -> Any:
    return batch if state.setup.shm_prefix is None else _shm.pack(batch)


def run_task(task: Task) -> Result:
    """The pool's task function: one index list in, one result out, never raises."""
    state: _WorkerState = _local.state
    wid, epoch = state.worker_id, task.epoch
    if state.init_error is not None:
        return Result(task.batch_id, wid, Status.FATAL, state.init_error, epoch)
    started, cpu = time.perf_counter(), time.thread_time()
    try:
        if state.is_process and task.seed is not None:
            _seeding.reseed_for_batch(task.seed, state.reseeding)
        batch = fetch_batch(state.setup.spec, task.indices)
        payload = _outgoing(state, batch)
    except Exception as e:
        _shm.abandon()
        return Result(task.batch_id, wid, Status.ERROR, _RemoteError.capture(e), epoch)
    busy, cpu = work_time(started, cpu)
    return Result(task.batch_id, wid, Status.OK, payload, epoch, None, busy, cpu)


def _put(state: _WorkerState, result: Result) -> bool:
    """Puts into this worker's stream; False if told to stop first."""
    streams = state.setup.streams
    if streams is None:
        raise RuntimeError("[INTERNAL ERROR] a stream result in a pool without streams")
    stream = streams[state.worker_id]
    while not state.setup.stop.is_set():
        try:
            stream.put(result, timeout=_PUT_POLL_S)
            return True
        except queue.Full:
            continue
    if result.status is Status.OK and state.setup.shm_prefix is not None:
        _shm.release(result.payload, state.setup.leases)
    return False


def _stateful(dataset: Any) -> bool:
    """Whether a dataset follows torchdata's protocol: ``state_dict`` and ``load_state_dict``."""
    return callable(getattr(dataset, "state_dict", None)) and callable(
        getattr(dataset, "load_state_dict", None)
    )


def stream_shard(
    epoch: int, shared_seed: int | None = None, resume_states: dict[int, Any] | None = None
) -> None:
    """Streams this worker's copy of an iterable dataset into its queue, for one epoch."""
    state: _WorkerState = _local.state
    setup = state.setup
    wid = state.worker_id
    if state.init_error is not None:
        _put(state, Result(-1, wid, Status.FATAL, state.init_error, epoch))
        return
    dataset = setup.spec.dataset
    # A process worker's own copy of a stateful dataset reports its state with every batch.
    stateful = state.is_process and _stateful(dataset)
    try:
        if stateful and resume_states and wid in resume_states:
            dataset.load_state_dict(resume_states[wid])
        iterator = iter(_datapipes.seed_epoch(dataset, shared_seed))
    except Exception as e:
        # As in torch: the error is raised for this worker's first batch, then its shard is done.
        if _put(state, Result(-1, wid, Status.ERROR, _RemoteError.capture(e), epoch)):
            _put(state, Result(0, wid, Status.EXHAUSTED, None, epoch))
        return
    take = getattr(iterator, "take", None)  # a generator shared by thread workers
    for n in itertools.count():
        started, cpu = time.perf_counter(), time.thread_time()
        try:
            if take is None:
                batch = next_iterable_batch(setup.spec, iterator)
            else:
                n, batch = next_shared_batch(setup.spec, take, epoch)
        except StopIteration:
            _put(state, Result(n, wid, Status.EXHAUSTED, None, epoch))
            return
        except Exception as e:
            # Raised for this batch; the stream goes on (a generator that raised ends next time).
            _shm.abandon()
            outgoing = Result(n, wid, Status.ERROR, _RemoteError.capture(e), epoch)
        else:
            after = dataset.state_dict() if stateful else None
            payload = _outgoing(state, batch)
            busy, cpu = work_time(started, cpu)
            outgoing = Result(n, wid, Status.OK, payload, epoch, after, busy, cpu)
        if not _put(state, outgoing):
            return
