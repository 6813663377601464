"""A started pool of workers: start-up, liveness, and ordered shutdown.

``multiprocessing.Pool`` silently replaces a worker that dies and drops the
task it held (cpython#96062), and its ``terminate()`` can deadlock on a queue
lock that a killed worker held. So this module keeps its own handles on the
worker processes, reports a death by pid and exit code, and shuts down by
killing the workers itself before it lets the Pool stop its helper threads.
"""

from __future__ import annotations

import itertools
import logging
import pickle
import queue
import signal
import threading
import time
import weakref
from collections.abc import Callable
from multiprocessing.pool import TERMINATE, Pool, ThreadPool
from typing import Any

from . import _shm, _worker
from ._config import FetchSpec, LoaderConfig, WorkerKind
from ._errors import WorkerDiedError

__all__ = ["WorkerPool"]

_log = logging.getLogger("batchloader")

# How long the Pool's worker-replacing thread gets to notice it must stop.
_HANDLER_STOP_S = 1.0
# How long an abandoned epoch's stream tasks get to notice the stop flag.
_STREAM_STOP_S = 5.0
_POLL_S = 0.01
# Grace a thread worker gets to finish its current task at shutdown.
_THREAD_JOIN_S = 2.0


class _QuietPool(Pool):
    """A ``Pool`` whose worker-maintenance thread does not wake for every result.

    The stock Pool also waits on its result pipe, so while a result is unread
    that thread spins (a new selector, a poll of every worker, each time),
    taking the GIL from the thread that would read it. Worker exits still wake
    it: their sentinels are waited on separately.
    """

    def _get_sentinels(self) -> list[Any]:
        return [_internals(self)._change_notifier._reader]


def _internals(pool: Pool) -> Any:
    """``pool`` itself, typed so that its private attributes can be read and set.

    typeshed declares none of Pool's internals (``_pool``, ``_inqueue``,
    ``_outqueue``, ``_cache``, ``_worker_handler``, ``_change_notifier``), and
    this module relies on them on purpose (see the module docstring).
    """
    return pool


def check_picklable(spec: FetchSpec, start_method: str) -> None:
    """Raises a TypeError naming the part of ``spec`` that cannot be pickled."""
    for name in ("dataset", "collate_fn", "worker_init_fn"):
        value = getattr(spec, name)
        try:
            pickle.dumps(value)
        except Exception as e:
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


def _stream_queues(make: Callable[[int], Any], config: LoaderConfig) -> list[Any]:
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


def _free_lock(lock: Any) -> None:
    """Leaves a queue lock released, even if a killed worker died holding it."""
    if lock is None:
        return
    lock.acquire(False)  # taken now, or still held by a dead worker: released either way
    lock.release()


class WorkerPool:
    """``num_workers`` processes or threads holding one :class:`FetchSpec`.

    Example::

        pool = WorkerPool(config, spec, base_seed=0)
        pool.submit(Task(0, [0, 1]), on_result, on_error)
        pool.close()
    """

    def __init__(self, config: LoaderConfig, spec: FetchSpec, base_seed: int):
        self.kind = config.worker_kind
        self.num_workers = config.num_workers
        self.spec = spec
        self.base_seed = base_seed
        self._started_with = _start_settings(config)
        self._closed = False
        self.broken = False
        self._stream_epoch = -1
        self._streams: list[Any] = []
        if self.kind is WorkerKind.PROCESS:
            self._start_processes(config, spec, base_seed)
        else:
            self._start_threads(config, spec, base_seed)
        # Pool._pool is private, but it is the only handle on the workers it starts.
        self._members = list(_internals(self._pool)._pool)
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
            id_source=ctx.Value("i", 0),
            leases=leases,
            names=self.names,
            streams=_stream_queues(ctx.Queue, config) if iterable else None,
            barrier=ctx.Barrier(n) if iterable else None,
            stop=ctx.Event() if iterable else None,
        )
        with _worker.forking_workers():
            self._pool: Pool = _QuietPool(
                n, _worker.init_process_worker, (self.setup,), context=ctx
            )
        _worker.forks_workers(_internals(self._pool)._worker_handler)

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
            id_source=itertools.count(),
            streams=_stream_queues(queue.Queue, config) if iterable else None,
            barrier=threading.Barrier(n) if iterable else None,
            stop=threading.Event() if iterable else None,
        )
        self._pool = ThreadPool(n, _worker.init_thread_worker, (self.setup,))

    def _state_for_shutdown(self) -> tuple[Any, ...]:
        return (self.kind, self._pool, self._members, self.names, self.setup)

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

    def submit(
        self,
        task: _worker.Task,
        on_result: Callable[[_worker.Result], None],
        on_error: Callable[[BaseException], None],
    ) -> None:
        """Sends one task; exactly one of the callbacks runs when it is done."""
        self._pool.apply_async(
            _worker.run_task, (task,), callback=on_result, error_callback=on_error
        )

    def start_streams(
        self, shared_seed: int | None = None, resume_states: dict[int, Any] | None = None
    ) -> int:
        """Starts one stream task per worker for a new epoch; returns the epoch."""
        self.setup.stop.clear()
        self.setup.barrier.reset()
        self._stream_epoch = next(_stream_epochs)
        self._streams = [
            self._pool.apply_async(
                _worker.stream_shard, (self._stream_epoch, shared_seed, resume_states)
            )
            for _ in range(self.num_workers)
        ]
        return self._stream_epoch

    def stop_streams(self) -> None:
        """Stops an epoch's stream tasks early, dropping what they queued."""
        self.setup.stop.set()
        deadline = time.monotonic() + _STREAM_STOP_S
        while not all(r.ready() for r in self._streams):
            self.drain_streams()
            if time.monotonic() > deadline:
                _log.warning("iterable dataset workers did not stop; restarting them")
                self.broken = True
                return
            time.sleep(_POLL_S)
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

    def release(self, result: _worker.Result) -> None:
        """Frees the shared memory of a result that will not be handed out."""
        if self.receiver is not None and result.status is _worker.Status.OK:
            self.receiver.release(result.payload)

    def check_alive(self) -> None:
        """Raises :class:`WorkerDiedError` if any worker has exited."""
        for member in self._members:
            if self.kind is WorkerKind.PROCESS:
                code = member.exitcode
                if code is not None:
                    self.broken = True
                    raise WorkerDiedError(
                        f"DataLoader worker (pid {member.pid}) {_exit_description(code)}. "
                        f"{_likely_cause(code)}See docs/troubleshooting.md#a-worker-died.",
                        pid=member.pid,
                        exitcode=code,
                    )
            elif not member.is_alive():
                self.broken = True
                raise WorkerDiedError(f"DataLoader worker thread {member.name} stopped")

    def describe(self) -> str:
        """One line on each worker's state, for error messages."""
        if self.kind is WorkerKind.THREAD:
            return ", ".join(
                f"{m.name}: {'alive' if m.is_alive() else 'dead'}" for m in self._members
            )
        return ", ".join(
            f"pid {m.pid}: {'alive' if m.exitcode is None else _exit_description(m.exitcode)}"
            for m in self._members
        )

    def close(self) -> None:
        """Stops every worker and frees what they held; idempotent."""
        self._closed = True
        self._finalizer()

    @property
    def closed(self) -> bool:
        return self._closed


def _shutdown(state: tuple[Any, ...]) -> None:
    kind, pool, members, names, setup = state
    helpers = (pool._worker_handler, pool._task_handler, pool._result_handler)
    if threading.current_thread() in helpers:
        # Collected on one of the Pool's own threads, which terminate() must join.
        threading.Thread(target=_shutdown, args=(state,), name="batchloader-shutdown").start()
        return
    if setup.stop is not None:
        setup.stop.set()
    if setup.barrier is not None:
        setup.barrier.abort()
    try:
        if kind is WorkerKind.PROCESS:
            _stop_processes(pool, members)
        else:
            pool.terminate()
            for thread in members:
                thread.join(_THREAD_JOIN_S)
            pool._cache.clear()  # unfinished tasks hold the pool in a cycle
    finally:
        if setup.streams is not None and kind is WorkerKind.PROCESS:
            for stream in {id(s): s for s in setup.streams}.values():
                stream.close()
                stream.cancel_join_thread()
        if names is not None:
            names.unlink_all()  # what the workers made and the main process never unlinked


def _stop_processes(pool: Pool, members: list[Any]) -> None:
    internals = _internals(pool)
    # First stop the Pool's handler from replacing the workers we are about to kill.
    internals._worker_handler._state = TERMINATE
    internals._change_notifier.put(None)
    internals._worker_handler.join(_HANDLER_STOP_S)
    processes = list({p.pid: p for p in [*members, *internals._pool]}.values())
    # SIGKILL, not SIGTERM: a worker holds nothing worth saving (the pool's segments are
    # removed by name afterwards), and no handler, ours or one a worker inherited from
    # the trainer, can run, delay or refuse it.
    for p in processes:
        if p.exitcode is None:
            p.kill()
    for p in processes:
        p.join()
    # Pool.terminate() takes these locks; a worker killed inside get()/put() held them.
    _free_lock(internals._inqueue._rlock)
    _free_lock(getattr(internals._outqueue, "_wlock", None))
    pool.terminate()
    pool.join()
    _release_pool(pool, processes)


def _release_pool(pool: Pool, processes: list[Any]) -> None:
    """Frees a stopped pool's pipes and handles now, not when the cyclic GC next runs.

    A task that never finished stays in ``Pool._cache`` holding the pool (a
    cycle), and through its callbacks the iterator's inbox and the batches'
    mappings; its pipes and each worker's sentinel are file descriptors.
    """
    internals = _internals(pool)
    internals._cache.clear()
    for queue_ in (internals._inqueue, internals._outqueue):
        queue_._reader.close()
        queue_._writer.close()
    for process in processes:
        process.close()
