"""A started set of workers: start-up, dispatch, results, liveness and ordered shutdown.

Each worker has its own task channel (a pipe to a process, a queue to a
thread) and the main process writes each task straight into the channel of
the worker it picks; results come back on each process's own pipe (threads
share one queue) and the iterator reads them itself, in its own thread. So
the pool runs no thread of its own: every fork of a worker happens in the
thread that asked for it, with none of the pool's threads running beside
it (Python 3.12+ warns, rightly, when a multi-threaded process forks, and a
fork taken while another thread holds a lock can deadlock the child). This
is why it is not ``multiprocessing.Pool``, whose three helper threads run
for the pool's whole life, and which also replaces a dead worker silently,
dropping its task (cpython#96062).

Dispatch follows torch's: the next worker in turn that has fewer than
``prefetch_factor`` tasks outstanding, so each worker always has its next
task queued and never waits on the main process.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import multiprocessing.connection
import os
import pickle
import queue
import select
import signal
import threading
import time
import warnings
import weakref
from collections import deque
from multiprocessing.reduction import ForkingPickler
from typing import Any

from . import _fork_guard, _shm, _worker
from ._config import FetchSpec, LoaderConfig, WorkerKind
from ._errors import WorkerDiedError

__all__ = ["WorkerPool", "check_picklable"]

_log = logging.getLogger("batchloader")

# How long an abandoned epoch's stream tasks get to notice the stop flag.
_STREAM_STOP_S = 5.0
# Grace a thread worker gets to finish its current task at shutdown.
_THREAD_JOIN_S = 2.0
# Grace a process worker gets to finish its task and exit by itself before it is killed.
_STOP_GRACE_S = 0.5
# A worker's unread tasks stay under this, half of Linux's smallest pipe buffer, so that
# writing a task never blocks while that worker is blocked writing a result to us.
_PIPE_SAFE_BYTES = 32 * 1024
# The caller of iter(loader), seen from check_picklable: WorkerPool.__init__,
# _start_processes, the loader's _make_iterator and __iter__ lie between.
_USER_FRAME = 6


def check_picklable(spec: FetchSpec, start_method: str) -> None:
    """Warns as torch does, then raises a TypeError naming the part that cannot be pickled."""
    for name in ("dataset", "collate_fn", "worker_init_fn"):
        value = getattr(spec, name)
        try:
            pickle.dumps(value)
        except Exception as e:
            # torch's warning, in its words (torch's tests and users' filters match them)
            warnings.warn(
                "Got pickle error when attempting to start a worker Process. This might be "
                "because the worker Process arguments are not picklable. Python 3.14+ changed "
                "the multiprocessing start method in non-Mac POSIX platforms to 'forkserver', "
                "which requires the worker Process arguments to be picklable. You can also try "
                "multiprocessing.set_start_method('fork').",
                UserWarning,
                stacklevel=_USER_FRAME,
            )
            raise TypeError(
                f"{name} of type {type(value).__qualname__} cannot be pickled, and the "
                f"{start_method!r} start method sends it to each worker by pickling ({e}); "
                f"use multiprocessing_context='fork', thread_pool=True, or make it picklable "
                f"(define it at module level, not as a lambda or local)"
            ) from e


def _start_settings(config: LoaderConfig) -> tuple[Any, ...]:
    """The parts of a config a started pool cannot change."""
    return (
        config.num_workers,
        config.worker_kind,
        config.prefetch_factor,
        config.mp_context,
        config.merged_streams,
    )


# Stream epochs are unique in the process: a generator shared by several pools' thread
# workers numbers its batches afresh for each epoch of any of them.
_stream_epochs = itertools.count()


def _stream_queues(make: Any, config: LoaderConfig) -> list[Any]:
    """One bounded queue per worker, or one queue they all share (merged streams)."""
    n, depth = config.num_workers, config.prefetch_factor
    if config.merged_streams:
        return [make(depth * n)] * n
    return [make(depth) for _ in range(n)]


def _exit_description(exitcode: int) -> str:
    """torch's words for a worker's end: 'is killed by signal: Killed', 'exited unexpectedly'."""
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            return f"is killed by signal: {-exitcode}"
        return f"is killed by signal: {signal.strsignal(-exitcode)} ({name})"
    return f"exited unexpectedly with exit code {exitcode}"


def _likely_cause(exitcode: int) -> str:
    """What most often ends a worker this way, where one cause is likely."""
    if exitcode == -signal.SIGKILL:
        return "A likely cause is the out-of-memory killer (see dmesg). "
    if exitcode in (-signal.SIGSEGV, -signal.SIGBUS, -signal.SIGABRT):
        return "A crash in native code (a C extension or a library that is not fork-safe). "
    if exitcode == 1:
        return (
            "With spawn or forkserver, exit code 1 means the worker printed a traceback on "
            "stderr while starting. "
        )
    return ""


class _Member:
    """One worker, as the main process sees it: its channel and what it still owes."""

    worker_id: int
    handle: Any  # the multiprocessing.Process or threading.Thread
    outstanding: int  # tasks sent whose results have not come back
    streaming: bool  # a StreamStart sent, its STREAM_ENDED not yet back

    def send(self, message: Any) -> None:
        raise NotImplementedError

    def encode(self, task: _worker.Task) -> bytes | None:
        """The task as this worker's channel carries it (None: the object itself)."""
        return None

    def room_for(self, encoded: bytes | None) -> bool:
        """Whether one more task can be written without risking a blocked write."""
        return True

    def send_task(self, task: _worker.Task, encoded: bytes | None) -> None:
        self.outstanding += 1
        self.send(task)

    def answered(self) -> None:
        self.outstanding -= 1


class _ProcessMember(_Member):
    """A worker process, with its task pipe (main writes) and result pipe (main reads)."""

    def __init__(self, ctx: Any, setup: _worker.WorkerSetup, worker_id: int):
        self.worker_id = worker_id
        self.outstanding = 0
        self.streaming = False
        self.unread: deque[int] = deque()  # byte sizes of the tasks it has not answered
        task_reader, self.tasks = ctx.Pipe(duplex=False)
        self.results, result_writer = ctx.Pipe(duplex=False)
        self.handle = ctx.Process(
            target=_worker.serve_process,
            args=(setup, worker_id, task_reader, result_writer),
            name=f"batchloader-worker-{worker_id}",
            daemon=True,
        )
        with _worker.forking_workers():
            self.handle.start()
        task_reader.close()  # the worker's ends: only the worker holds them now
        result_writer.close()

    def encode(self, task: _worker.Task) -> bytes:
        return bytes(ForkingPickler.dumps(task))

    def room_for(self, encoded: bytes | None) -> bool:
        # An idle worker is reading its pipe, so even a large task gets through.
        size = 0 if encoded is None else len(encoded)
        return self.outstanding == 0 or sum(self.unread) + size <= _PIPE_SAFE_BYTES

    def send(self, message: Any) -> None:
        self.tasks.send_bytes(ForkingPickler.dumps(message))

    def send_task(self, task: _worker.Task, encoded: bytes | None) -> None:
        data = self.encode(task) if encoded is None else encoded
        self.outstanding += 1
        self.unread.append(len(data))
        self.tasks.send_bytes(data)

    def answered(self) -> None:
        self.outstanding -= 1
        self.unread.popleft()


class _ThreadMember(_Member):
    """A worker thread, with its own task queue; results go to the pool's shared queue."""

    def __init__(self, setup: _worker.WorkerSetup, worker_id: int, results: Any):
        self.worker_id = worker_id
        self.outstanding = 0
        self.streaming = False
        self.tasks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.parking = _fork_guard.Parking()
        self.state: Any = None  # the worker's state, kept for the thread that resumes it
        self._args = (setup, worker_id, self.tasks, results, self)
        self.handle = self._new_thread()
        self.handle.start()

    def _new_thread(self) -> threading.Thread:
        return threading.Thread(
            target=_worker.serve_thread,
            args=self._args,
            name=f"batchloader-thread-worker-{self.worker_id}",
            daemon=True,
        )

    def send(self, message: Any) -> None:
        self.tasks.put(message)

    def resume(self) -> None:
        """Starts the worker's thread again if it parked for a fork."""
        if self.parking.unpark():
            self.handle.join()  # it has decided to park: it returns at once
            self.handle = self._new_thread()
            self.handle.start()


class WorkerPool:
    """``num_workers`` processes or threads holding one :class:`FetchSpec`.

    Example::

        pool = WorkerPool(config, spec, base_seed=0)
        epoch = pool.begin_epoch()
        pool.submit(Task(0, [0, 1], epoch=epoch))
        result = pool.receive(timeout_s=0.1)  # None if nothing came in time
        pool.close()
    """

    def __init__(self, config: LoaderConfig, spec: FetchSpec, base_seed: int):
        self.kind = config.worker_kind
        self.num_workers = config.num_workers
        self.spec = spec
        self.base_seed = base_seed
        self._per_worker = config.prefetch_factor
        self._started_with = _start_settings(config)
        self._closed = False
        self.broken = False
        self._epoch = 0
        self._turn = 0  # the worker whose turn it is to get the next task
        self._ready: deque[_worker.Result] = deque()
        self._dead_seen = False
        self.members: list[_Member] = []
        if self.kind is WorkerKind.PROCESS:
            self._start_processes(config, spec, base_seed)
        else:
            self._start_threads(config, spec, base_seed)
        self._finalizer = weakref.finalize(self, _shutdown, self._state_for_shutdown())

    def _start_processes(self, config: LoaderConfig, spec: FetchSpec, base_seed: int) -> None:
        ctx = config.mp_context
        method = ctx.get_start_method()
        if method != "fork":
            check_picklable(spec, method)
        n = config.num_workers
        self.prefix: str | None = _shm.new_prefix()
        leases = _shm.new_leases(ctx, n)
        self.names: _shm.Names | None = _shm.Names(ctx, n)
        self.receiver: _shm.Receiver | None = _shm.Receiver(leases)
        iterable = spec.iterable
        self.setup = _worker.WorkerSetup(
            spec=spec,
            num_workers=n,
            base_seed=base_seed,
            shm_prefix=self.prefix,
            leases=leases,
            names=self.names,
            streams=_stream_queues(ctx.Queue, config) if iterable else None,
            stop=ctx.Event() if iterable else None,
        )
        self._results: Any = None
        self._poller = select.poll()
        self._by_fd: dict[int, tuple[_ProcessMember, bool]] = {}
        try:
            with _fork_guard.forking():  # the loader's own threads park while we fork
                for worker_id in range(n):
                    member = _ProcessMember(ctx, self.setup, worker_id)
                    self.members.append(member)
                    self._watch(member)
        except BaseException:
            _stop_processes(self.members)
            raise

    def _watch(self, member: _ProcessMember) -> None:
        for fd, is_sentinel in ((member.results.fileno(), False), (member.handle.sentinel, True)):
            self._by_fd[fd] = (member, is_sentinel)
            self._poller.register(fd, select.POLLIN)

    def _start_threads(self, config: LoaderConfig, spec: FetchSpec, base_seed: int) -> None:
        n = config.num_workers
        self.prefix = None
        self.names = None
        self.receiver = None
        iterable = spec.iterable
        self.setup = _worker.WorkerSetup(
            spec=spec,
            num_workers=n,
            base_seed=base_seed,
            shm_prefix=None,
            streams=_stream_queues(queue.Queue, config) if iterable else None,
            stop=threading.Event() if iterable else None,
        )
        self._results = queue.SimpleQueue()
        for worker_id in range(n):
            self.members.append(_ThreadMember(self.setup, worker_id, self._results))
        _fork_guard.register(self)  # another loader's fork parks these threads first

    def park(self, timeout_s: float) -> None:
        """Waits for the thread workers to park for a fork (each after its current task)."""
        deadline = time.monotonic() + timeout_s
        for member in self.members:
            member.handle.join(max(0.0, deadline - time.monotonic()))

    def resume(self) -> None:
        """Starts the thread workers that parked for a fork again."""
        for member in self.members:
            assert isinstance(member, _ThreadMember)
            member.resume()

    def _state_for_shutdown(self) -> tuple[Any, ...]:
        return (self.kind, self.members, self.names, self.setup)

    @property
    def workers(self) -> list[Any]:
        """The worker processes (or threads), indexed by worker id: torch's ``_workers``."""
        return [member.handle for member in self.members]

    def serves(self, spec: FetchSpec, config: LoaderConfig) -> bool:
        """Whether this pool was started for these settings (a persistent pool is reused)."""
        mine = self.spec
        return (
            mine.dataset is spec.dataset
            and mine.collate_fn is spec.collate_fn
            and mine.worker_init_fn is spec.worker_init_fn
            and (mine.mode, mine.batch_size, mine.drop_last)
            == (spec.mode, spec.batch_size, spec.drop_last)
            and self._started_with == _start_settings(config)
        )

    # -- map-style tasks ------------------------------------------------------------

    def begin_epoch(self) -> int:
        """A new epoch's number: results of tasks sent in earlier epochs are dropped."""
        self._epoch += 1
        return self._epoch

    def submit(self, task: _worker.Task) -> bool:
        """Writes ``task`` into the channel of the next worker in turn that has room.

        Returns False if none has: each already holds ``prefetch_factor``
        tasks, or as many unread bytes of tasks as its pipe safely takes.
        """
        count = len(self.members)
        encoded = self.members[0].encode(task)
        for step in range(count):
            member = self.members[(self._turn + step) % count]
            if member.outstanding < self._per_worker and member.room_for(encoded):
                self._turn = (member.worker_id + 1) % count
                member.send_task(task, encoded)
                return True
        return False

    @property
    def waiting(self) -> int:
        """Results read from the workers and not yet taken by :meth:`receive`."""
        return len(self._ready)

    def receive(self, timeout_s: float) -> _worker.Result | None:
        """The next result of this epoch, or None if none came within ``timeout_s``.

        It also returns None early when a worker process has exited, so that
        the caller's liveness check reports it at once.
        """
        deadline = time.monotonic() + timeout_s
        while not self._ready:
            wait_s = deadline - time.monotonic()
            if self.kind is WorkerKind.THREAD:
                try:
                    result = self._results.get(timeout=max(wait_s, 0.0))
                except queue.Empty:
                    return None
                self._settle(self.members[result.worker_id], result)
                continue
            events = self._poller.poll(max(wait_s, 0.0) * 1000)
            for fd, _ in events:
                self._read(fd)
            if not self._ready and (self._dead_seen or not events or wait_s <= 0):
                return None
        return self._ready.popleft()

    def _read(self, fd: int) -> None:
        member, is_sentinel = self._by_fd[fd]
        if is_sentinel:
            self._dead_seen = True
            return
        try:
            data = member.results.recv_bytes()
        except (EOFError, OSError):  # the worker is gone; its sentinel says how
            self._poller.unregister(fd)
            del self._by_fd[fd]
            self._dead_seen = True
            return
        self._settle(member, ForkingPickler.loads(data))

    def _settle(self, member: _Member, result: _worker.Result) -> None:
        if result.status is _worker.Status.STREAM_ENDED:
            member.streaming = False
            return
        member.answered()
        if result.epoch != self._epoch:
            self.release(result)  # an abandoned epoch's batch
            return
        self._ready.append(result)

    # -- iterable datasets: one stream per worker -------------------------------------

    def start_streams(
        self, shared_seed: int | None = None, resume_states: dict[int, Any] | None = None
    ) -> int:
        """Starts one stream task per worker for a new epoch; returns the epoch."""
        if not self._await_streams_ended():
            raise RuntimeError(
                "[INTERNAL ERROR] the previous epoch's streams did not end before a new epoch"
            )
        self.setup.stop.clear()
        epoch = next(_stream_epochs)
        start = _worker.StreamStart(epoch, shared_seed, resume_states)
        for member in self.members:
            member.streaming = True
            member.send(start)
        return epoch

    def _await_streams_ended(self) -> bool:
        """Reads results until every stream task has returned; False if that took too long."""
        deadline = time.monotonic() + _STREAM_STOP_S
        while any(member.streaming for member in self.members):
            self.drain_streams()
            if time.monotonic() > deadline:
                return False
            self.receive(0.01)
            if self._dead_seen:
                return False
        return True

    def stop_streams(self) -> None:
        """Stops an epoch's stream tasks early, dropping what they queued."""
        self.setup.stop.set()
        if not self._await_streams_ended():
            _log.warning("iterable dataset workers did not stop; restarting them")
            self.broken = True
        self.drain_streams()

    def drain_streams(self) -> None:
        """Empties the stream queues, unlinking the batches in them."""
        streams = self.setup.streams
        if streams is None:  # only an iterable dataset's pool starts streams
            raise RuntimeError("[INTERNAL ERROR] drain_streams() on a pool without streams")
        for stream in streams:
            while True:
                try:
                    result = stream.get_nowait()
                except queue.Empty:
                    break
                self.release(result)

    # -- results, liveness, shutdown ------------------------------------------------------

    def release(self, result: _worker.Result) -> None:
        """Frees the shared memory of a result that will not be handed out."""
        if self.receiver is not None and result.status is _worker.Status.OK:
            self.receiver.release(result.payload)

    def check_alive(self) -> None:
        """Raises :class:`WorkerDiedError` if any worker has exited."""
        for member in self.members:
            handle = member.handle
            if self.kind is WorkerKind.PROCESS:
                code = handle.exitcode
                if code is not None:
                    self.broken = True
                    raise WorkerDiedError(
                        f"DataLoader worker (pid {handle.pid}) {_exit_description(code)}. "
                        f"{_likely_cause(code)}See docs/troubleshooting.md#a-worker-died.",
                        pid=handle.pid,
                        exitcode=code,
                    )
            elif not handle.is_alive():
                self.broken = True
                raise WorkerDiedError(f"DataLoader worker thread {handle.name} stopped")

    def describe(self) -> str:
        """One line on each worker's state, for error messages."""
        handles = self.workers
        if self.kind is WorkerKind.THREAD:
            return ", ".join(f"{h.name}: {'alive' if h.is_alive() else 'dead'}" for h in handles)
        return ", ".join(
            f"pid {h.pid}: {'alive' if h.exitcode is None else _exit_description(h.exitcode)}"
            for h in handles
        )

    def close(self) -> None:
        """Stops every worker and frees what they held; idempotent."""
        self._closed = True
        self._finalizer()

    @property
    def closed(self) -> bool:
        return self._closed


def _shutdown(state: tuple[Any, ...]) -> None:
    kind, members, names, setup = state
    if setup.stop is not None:
        setup.stop.set()
    try:
        if kind is WorkerKind.PROCESS:
            _stop_processes(members)
        else:
            _stop_threads(members)
    finally:
        if setup.streams is not None and kind is WorkerKind.PROCESS:
            for stream in {id(s): s for s in setup.streams}.values():
                stream.close()
                stream.cancel_join_thread()
        if names is not None:
            names.unlink_all()  # what the workers made and the main process never unlinked


def _stop_processes(members: list[Any]) -> None:
    """STOP to each worker; one still busy after a short grace is killed.

    A worker told to stop exits with status 0, as torch's do (torch's tests
    and users check it). SIGKILL, not SIGTERM, for the rest: a worker holds
    nothing worth saving (the pool's segments are removed by name
    afterwards), and no handler, ours or one a worker inherited from the
    trainer, can run, delay or refuse it. The Process objects stay usable
    (``pid``, ``exitcode``, ``join``): torch's ``_workers`` outlive the pool.
    """
    alive = [m for m in members if m.handle.exitcode is None]
    stop = bytes(ForkingPickler.dumps(_worker.Command.STOP))
    for member in alive:
        fd = member.tasks.fileno()
        os.set_blocking(fd, False)  # a worker that stopped reading must not block us
        with contextlib.suppress(OSError):  # BlockingIOError, BrokenPipeError: killed below
            member.tasks.send_bytes(stop)
    deadline = time.monotonic() + _STOP_GRACE_S
    while alive and time.monotonic() < deadline:
        multiprocessing.connection.wait(
            [m.handle.sentinel for m in alive], deadline - time.monotonic()
        )
        alive = [m for m in alive if m.handle.exitcode is None]
    for member in alive:
        member.handle.kill()
    for member in members:
        member.handle.join()
        member.tasks.close()
        member.results.close()


def _stop_threads(members: list[Any]) -> None:
    for member in members:
        member.send(_worker.Command.STOP)
    deadline = time.monotonic() + _THREAD_JOIN_S
    for member in members:
        member.handle.join(max(0.0, deadline - time.monotonic()))
