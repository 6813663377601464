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
import dataclasses
import itertools
import logging
import queue
import select
import threading
import time
import weakref
from collections import deque
from multiprocessing.reduction import ForkingPickler
from typing import Any

from . import _fork_guard, _shm, _worker
from ._config import FetchSpec, LoaderConfig, WorkerKind
from ._errors import WorkerDiedError, exit_description, likely_cause
from ._members import (
    Member,
    ProcessMember,
    ThreadMember,
    check_picklable,
    stop_processes,
    stop_threads,
)

__all__ = ["WorkerPool"]

_log = logging.getLogger("batchloader")

# How long an abandoned epoch's stream tasks get to notice the stop flag.
_STREAM_STOP_S = 5.0


def _start_settings(config: LoaderConfig) -> tuple[Any, ...]:
    """The parts of a config a started pool cannot change ("auto" ones it changes itself)."""
    return (
        "auto" if config.auto_workers else config.num_workers,
        config.worker_kind,
        "auto" if config.auto_prefetch else config.prefetch_factor,
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


class WorkerPool:
    """Processes or threads holding one :class:`FetchSpec`; their number can change.

    Worker ids are dense: the ``n`` workers that take tasks are ids ``0 ..
    n-1``. Shrinking retires the highest ids: a retiring worker takes no new
    task, and is told to stop once it has answered the ones it holds.
    Growing brings a retiring worker back if its id is needed, else starts a
    new one (after the old holder of that id has exited and its segments are
    removed: ids own lease slots in shared memory).

    Example::

        pool = WorkerPool(config, spec, base_seed=0)
        epoch = pool.begin_epoch()
        pool.submit(Task(0, [0, 1], epoch=epoch))
        result = pool.receive(timeout_s=0.1)  # None if nothing came in time
        pool.resize(4)  # while the epoch runs: batches do not depend on it
        pool.close()
    """

    def __init__(
        self,
        config: LoaderConfig,
        spec: FetchSpec,
        base_seed: int,
        *,
        capacity: int = 0,
        start: bool = True,
    ):
        self.kind = config.worker_kind
        self.spec = spec
        self.base_seed = base_seed
        self.capacity = max(capacity, config.num_workers)  # the most workers it may have
        self.prefetch = config.prefetch_factor  # tasks each worker may hold
        self._started_with = _start_settings(config)
        self._ctx = config.mp_context
        self._closed = False
        self.broken = False
        self._epoch = 0
        self._turn = 0  # the worker whose turn it is to get the next task
        self._ready: deque[_worker.Result] = deque()
        self._dead_seen = False
        self.blocked_s = 0.0  # time spent waiting for the workers with no result at hand
        self.members: list[Member] = []  # every worker not yet joined (what shutdown stops)
        self._active: list[Member] = []  # the workers that take tasks; index = worker id
        self._retiring: list[Member] = []  # finishing what they hold, then stopped
        self._stopped: list[Member] = []  # told to stop; joined when their id is needed again
        if self.kind is WorkerKind.PROCESS:
            self._prepare_processes(config, spec, base_seed)
        else:
            self._prepare_threads(config, spec, base_seed)
        self._finalizer = weakref.finalize(self, _shutdown, self._state_for_shutdown())
        self._target = config.num_workers  # the workers start() brings up
        if start:
            try:
                self._grow(config.num_workers)
            except BaseException:
                self.close()
                raise

    def _prepare_processes(self, config: LoaderConfig, spec: FetchSpec, base_seed: int) -> None:
        ctx = config.mp_context
        method = ctx.get_start_method()
        if method != "fork":
            check_picklable(spec, method)
        self.prefix: str | None = _shm.new_prefix()
        leases = _shm.new_leases(ctx, self.capacity)
        self.names: _shm.Names | None = _shm.Names(ctx, self.capacity)
        self.receiver: _shm.Receiver | None = _shm.Receiver(leases)
        iterable = spec.iterable
        self.setup = _worker.WorkerSetup(
            spec=spec,
            num_workers=config.num_workers,
            base_seed=base_seed,
            shm_prefix=self.prefix,
            leases=leases,
            names=self.names,
            streams=_stream_queues(ctx.Queue, config) if iterable else None,
            stop=ctx.Event() if iterable else None,
        )
        self._results: Any = None
        self._poller = select.poll()
        self._by_fd: dict[int, tuple[ProcessMember, bool]] = {}

    def _prepare_threads(self, config: LoaderConfig, spec: FetchSpec, base_seed: int) -> None:
        self.prefix = None
        self.names = None
        self.receiver = None
        iterable = spec.iterable
        self.setup = _worker.WorkerSetup(
            spec=spec,
            num_workers=config.num_workers,
            base_seed=base_seed,
            shm_prefix=None,
            streams=_stream_queues(queue.Queue, config) if iterable else None,
            stop=threading.Event() if iterable else None,
        )
        self._results = queue.SimpleQueue()
        _fork_guard.register(self)  # another loader's fork parks these threads first

    def _state_for_shutdown(self) -> tuple[Any, ...]:
        return (self.kind, self.members, self.names, self.setup)

    @property
    def num_workers(self) -> int:
        """The workers that take tasks (those it is to start, before :meth:`start`)."""
        return len(self._active) or self._target

    @property
    def max_in_flight(self) -> int:
        """Bound on batches sent but not yet handed to the user: ``prefetch * num_workers``."""
        return self.prefetch * len(self._active)

    @property
    def workers(self) -> list[Any]:
        """The worker processes (or threads), indexed by worker id: torch's ``_workers``."""
        return [member.handle for member in self._active]

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

    # -- the number of workers ------------------------------------------------------------

    def resize(self, count: int) -> None:
        """Grows or shrinks to ``count`` workers (1 to ``capacity``) while tasks are in flight.

        Call it from the thread that iterates (a fork must not happen beside a
        thread of the loader's: the pin-memory thread parks meanwhile).
        """
        if not 1 <= count <= self.capacity:
            raise ValueError(f"a pool of capacity {self.capacity} cannot have {count} workers")
        self._target = count
        # Auto resizes from the consuming thread while a pin-memory thread may be reading
        # this pool: parked, it keeps out of the pool's members while they change.
        with _fork_guard.forking():
            if count > len(self._active):
                self._grow(count)
            else:
                self._shrink(count)

    def set_prefetch(self, prefetch: int) -> None:
        """How many tasks each worker may hold from now on."""
        self.prefetch = max(1, prefetch)

    def start(self) -> None:
        """Starts the workers of a pool made with ``start=False`` (else nothing)."""
        if self._target > len(self._active):
            self._grow(self._target)

    def _grow(self, count: int) -> None:
        setup = dataclasses.replace(self.setup, num_workers=count)
        # The loader's own threads park while we fork; starting threads forks nothing
        # (resize() has parked them already when it grows a running pool).
        forks = self.kind is WorkerKind.PROCESS
        with _fork_guard.forking() if forks else contextlib.nullcontext():
            while len(self._active) < count:
                worker_id = len(self._active)
                back = next((m for m in self._retiring if m.worker_id == worker_id), None)
                if back is not None:  # still alive and finishing its tasks: it stays
                    self._retiring.remove(back)
                    self._active.append(back)
                    continue
                self._forget(worker_id)
                member: Member
                if self.kind is WorkerKind.PROCESS:
                    member = ProcessMember(self._ctx, setup, worker_id)
                    self._watch(member)
                else:
                    member = ThreadMember(setup, worker_id, self._results)
                self.members.append(member)
                self._active.append(member)

    def _shrink(self, count: int) -> None:
        while len(self._active) > count:
            member = self._active.pop()
            if member.outstanding == 0:
                self._stop(member)
            else:
                self._retiring.append(member)
        self._turn %= len(self._active)

    def _stop(self, member: Member) -> None:
        """Tells an idle worker to exit; it is joined when its id is needed again, or at close."""
        if isinstance(member, ProcessMember):
            for fd in (member.results.fileno(), member.handle.sentinel):
                self._poller.unregister(fd)
                del self._by_fd[fd]
        member.stop()
        self._stopped.append(member)

    def _forget(self, worker_id: int) -> None:
        """Joins the stopped worker that had ``worker_id`` and removes its segments."""
        for member in [m for m in self._stopped if m.worker_id == worker_id]:
            member.join()
            self._stopped.remove(member)
            self.members.remove(member)
            if self.names is not None:
                self.names.unlink_worker(worker_id)

    def _watch(self, member: ProcessMember) -> None:
        for fd, is_sentinel in ((member.results.fileno(), False), (member.handle.sentinel, True)):
            self._by_fd[fd] = (member, is_sentinel)
            self._poller.register(fd, select.POLLIN)

    def park(self, timeout_s: float) -> None:
        """Waits for the thread workers to park for a fork (each after its current task)."""
        deadline = time.monotonic() + timeout_s
        for member in [*self._active, *self._retiring]:
            _fork_guard.join_thread(member.handle, max(0.0, deadline - time.monotonic()))

    def resume(self) -> None:
        """Starts the thread workers that parked for a fork again."""
        for member in [*self._active, *self._retiring]:
            member.resume()

    # -- map-style tasks ------------------------------------------------------------

    def begin_epoch(self) -> int:
        """A new epoch's number: results of tasks sent in earlier epochs are dropped."""
        self._epoch += 1
        return self._epoch

    def submit(self, task: _worker.Task) -> bool:
        """Writes ``task`` into the channel of the next worker in turn that has room.

        Returns False if none has: each already holds ``prefetch`` tasks, or
        as many unread bytes of tasks as its pipe safely takes.
        """
        active = self._active
        count = len(active)
        encoded = active[0].encode(task)
        for step in range(count):
            member = active[(self._turn + step) % count]
            if member.outstanding < self.prefetch and member.room_for(encoded):
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
            started = time.perf_counter()
            if self.kind is WorkerKind.THREAD:
                try:
                    member, result = self._results.get(timeout=max(wait_s, 0.0))
                except queue.Empty:
                    return None
                finally:
                    self.blocked_s += time.perf_counter() - started
                self._settle(member, result)
                continue
            events = self._poller.poll(max(wait_s, 0.0) * 1000)
            self.blocked_s += time.perf_counter() - started
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

    def _settle(self, member: Member, result: _worker.Result) -> None:
        if result.status is _worker.Status.STREAM_ENDED:
            member.streaming = False
            return
        member.answered()
        if member.outstanding == 0 and member in self._retiring:
            self._retiring.remove(member)
            self._stop(member)
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
        for member in self._active:
            member.streaming = True
            member.send(start)
        return epoch

    def _await_streams_ended(self) -> bool:
        """Reads results until every stream task has returned; False if that took too long."""
        deadline = time.monotonic() + _STREAM_STOP_S
        while any(member.streaming for member in self._active):
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
        """Raises :class:`WorkerDiedError` if any worker that holds or takes tasks has exited."""
        for member in [*self._active, *self._retiring]:
            handle = member.handle
            if self.kind is WorkerKind.PROCESS:
                code = handle.exitcode
                if code is not None:
                    self.broken = True
                    raise WorkerDiedError(
                        f"DataLoader worker (pid {handle.pid}) {exit_description(code)}. "
                        f"{likely_cause(code)}See docs/troubleshooting.md#a-worker-died.",
                        pid=handle.pid,
                        exitcode=code,
                    )
            elif not handle.is_alive() and not member.parked:
                self.broken = True
                raise WorkerDiedError(f"DataLoader worker thread {handle.name} stopped")

    def describe(self) -> str:
        """One line on each worker's state, for error messages."""
        handles = self.workers
        if self.kind is WorkerKind.THREAD:
            return ", ".join(f"{h.name}: {'alive' if h.is_alive() else 'dead'}" for h in handles)
        return ", ".join(
            f"pid {h.pid}: {'alive' if h.exitcode is None else exit_description(h.exitcode)}"
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
            stop_processes(members)
        else:
            stop_threads(members)
    finally:
        if setup.streams is not None and kind is WorkerKind.PROCESS:
            for stream in {id(s): s for s in setup.streams}.values():
                stream.close()
                stream.cancel_join_thread()
        if names is not None:
            names.unlink_all()  # what the workers made and the main process never unlinked
