"""Drives a worker pool from the main process: prefetch, reordering, failure.

Both iterators share one state machine::

    RUNNING ──last batch handed out──────────────► EXHAUSTED
       │
       ├──error in one batch: raised, stays RUNNING
       │
       ├──worker_init_fn error / timeout / dead worker─► FAILED
       │
       └──close() (also from EXHAUSTED, FAILED)──► CLOSED

Leaving RUNNING releases every batch not handed out and, when the iterator
owns its pool (``persistent_workers=False``), shuts the pool down.

Seeding (map-style): batch ``b`` of an epoch is made after the worker reseeds
``random``, torch and NumPy from ``(epoch seed, b)`` (below 2**63), so random
augmentations do not depend on which worker, or how many workers, made the
batch. A generator that ``worker_init_fn`` seeded is left to the user. Every seeding
rule is in :mod:`batchloader._seeding`.

Bounded buffer (map-style): batches in flight plus batches waiting in the
reorder buffer never exceed ``prefetch_factor * num_workers``, and every batch
id sent is in flight, in the reorder buffer, or already handed out.
"""

from __future__ import annotations

import enum
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any

from . import _fork_guard
from ._config import LoaderConfig
from ._errors import LoaderTimeoutError
from ._fetch import number_batches
from ._pool import WorkerPool
from ._seeding import batch_seed
from ._stats import EpochRecorder
from ._tuning import AutoTuner, Change
from ._worker import Result, Status, Task

__all__ = ["MultiWorkerIter", "StreamingIter"]

_log = logging.getLogger("batchloader")

# How often a waiting main thread checks worker liveness and the user's timeout.
_POLL_INTERVAL_S = 0.1
# How many indices an error message shows before it elides the rest.
_INDICES_SHOWN = 16


class _State(enum.Enum):
    RUNNING = "running"
    EXHAUSTED = "exhausted"
    FAILED = "failed"
    CLOSED = "closed"


def _show(indices: Any) -> str:
    if isinstance(indices, list) and len(indices) > _INDICES_SHOWN:
        return f"{indices[:_INDICES_SHOWN]} (and {len(indices) - _INDICES_SHOWN} more)"
    return repr(indices)


class _BaseIter:
    """The state machine and shutdown shared by both iterators."""

    log: deque[Any]
    """What the epoch's bookkeeping needs of each batch handed on, oldest first."""

    def __init__(
        self,
        config: LoaderConfig,
        pool: WorkerPool,
        *,
        owns_pool: bool,
        stats: EpochRecorder | None = None,
    ):
        self._config = config
        self._pool = pool
        self._owns_pool = owns_pool
        self._stats = stats if stats is not None else EpochRecorder(0, {})
        if pool.receiver is not None:
            receiver = pool.receiver
            self._stats.watch("bytes", lambda: receiver.bytes_received)
        self._stats.watch("starved_s", lambda: pool.blocked_s)
        self._state = _State.CLOSED  # until the subclass has started the epoch
        self._lock = threading.Lock()
        self._deadline: float | None = None

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._state is not _State.RUNNING:
            raise StopIteration
        self._deadline = (
            time.monotonic() + self._config.timeout_s if self._config.timeout_s > 0 else None
        )
        receiver = self._pool.receiver
        if receiver is not None:
            receiver.collect()  # the slots of batches the user has let go, for the workers
        try:
            result = self._next_result()
        except _fork_guard.ParkRequested:
            raise  # a pin-memory thread steps aside for a fork; the epoch goes on
        except BaseException:
            self._leave(_State.FAILED)
            raise
        if result is None:
            self._leave(_State.EXHAUSTED)
            raise StopIteration
        return self._deliver(*result)

    def _begin(self, start: Any) -> None:
        """Enters RUNNING by calling ``start``; if it fails, closes an owned pool."""
        self._state = _State.RUNNING
        try:
            start()
        except BaseException:
            self._leave(_State.FAILED)
            raise

    def _next_result(self) -> tuple[Result, Any] | None:
        raise NotImplementedError

    def _deliver(self, result: Result, indices: Any) -> Any:
        """Hands out one batch, or raises its error.

        As in torch, an error while loading one batch is raised for that
        batch and the epoch goes on: the next ``next()`` returns the batch
        after it. A worker that could not start (``worker_init_fn`` failed)
        ends the epoch.
        """
        if result.status is not Status.OK:
            where = "" if indices is None else f", indices {_show(indices)}"
            worker = "a worker" if result.worker_id < 0 else f"worker {result.worker_id}"
            doing = "sending" if result.worker_id < 0 else "loading"
            error = result.payload.rebuild(
                f"Raised in DataLoader {worker} while {doing} batch {result.batch_id}{where}."
            )
            if result.status is Status.FATAL:
                self._leave(_State.FAILED)
            raise error
        receiver = self._pool.receiver
        try:
            batch = result.payload if receiver is None else receiver.unpack(result.payload)
        except BaseException:
            self._leave(_State.FAILED)
            raise
        self.log.append(self._log_entry(result, indices))
        return batch

    def _log_entry(self, result: Result, indices: Any) -> Any:
        """What the epoch's bookkeeping needs of a batch handed on (see ``_epoch.Epoch``)."""
        raise NotImplementedError

    def _check(self) -> None:
        """Called on every idle poll: are the workers alive, has time run out, must we park?"""
        if _fork_guard.park_requested():
            raise _fork_guard.ParkRequested  # nothing taken yet: the next call goes on from here
        self._pool.check_alive()
        if self._deadline is not None and time.monotonic() > self._deadline:
            seconds = self._config.timeout_s
            shown = int(seconds) if seconds == int(seconds) else seconds
            self._pool.broken = True  # a stuck worker is not kept: the next epoch starts afresh
            raise LoaderTimeoutError(
                f"DataLoader timed out after {shown} seconds waiting for "
                f"{self._waiting_for()}; workers: {self._pool.describe()}"
            )

    def _waiting_for(self) -> str:
        raise NotImplementedError

    def _leave(self, state: _State) -> None:
        with self._lock:
            if self._state is not _State.RUNNING:
                if state is _State.CLOSED:
                    self._state = state
                return
            self._state = state
            pending = self._take_pending()
        for result in pending:
            self._pool.release(result)
        self._stop_work()
        if self._owns_pool or self._pool.broken:
            self._pool.close()

    def _take_pending(self) -> list[Result]:
        raise NotImplementedError

    def _stop_work(self) -> None:
        """Stops work this iterator started on a pool that outlives it."""

    def close(self) -> None:
        """Stops the epoch early and releases everything; idempotent."""
        self._leave(_State.CLOSED)

    @property
    def _workers(self) -> list[Any]:
        """torch's attribute: the worker processes (threads), indexed by worker id.

        Private in torch, but torch's own tests and user code that checks
        worker pids read it; each has ``pid`` (threads: ``ident``) and ``is_alive()``.
        """
        return self._pool.workers

    def adopt_pool(self) -> bool:
        """Takes over a persistent pool whose loader is gone: closes it when the epoch ends.

        Returns False if this epoch has already ended (the caller closes the pool).
        """
        with self._lock:
            if self._state is not _State.RUNNING:
                return False
            self._owns_pool = True
            return True

    def __del__(self) -> None:
        if getattr(self, "_state", _State.CLOSED) is _State.RUNNING:
            self.close()


class MultiWorkerIter(_BaseIter):
    """One epoch of a map-style dataset: index lists out, batches back in order."""

    def __init__(
        self,
        config: LoaderConfig,
        pool: WorkerPool,
        batches: Iterator[Any],
        *,
        owns_pool: bool,
        epoch_seed: int | None = None,
        skip: int = 0,
        done: frozenset[int] = frozenset(),
        stats: EpochRecorder | None = None,
        tuner: AutoTuner | None = None,
        on_change: Callable[[Change], None] | None = None,
    ):
        super().__init__(config, pool, owns_pool=owns_pool, stats=stats)
        self._tuner = tuner  # num_workers="auto": resizes the pool while the epoch runs
        self._on_change = on_change
        self._epoch_seed = epoch_seed
        # (batch id, indices), without the batches a resumed epoch had delivered already
        self._batches = number_batches(batches, skip, done)
        self._unsent: tuple[int, Any] | None = None  # drawn, but no worker could take it yet
        self._pool_epoch = pool.begin_epoch()  # results of an earlier epoch are dropped
        self._in_flight: dict[int, Any] = {}  # batch id -> indices: sent, not yet back
        self._reorder: dict[int, tuple[Result, Any]] = {}  # back, not yet handed out
        self._sent_order: deque[int] = deque()  # ids in the order sent: the in-order sequence
        self.log: deque[int] = deque()  # ids handed on, in that order (see _epoch.Epoch)
        self._begin(self._start)

    def _start(self) -> None:
        """Starts a fresh pool's workers, then sends the first tasks.

        Every worker is forked before the batch sampler is first drawn from:
        a sampler's first draw makes its epoch's permutation (a million
        Python ints for a million samples) in this process, and a worker
        forked after that would copy each page of it that this process then
        touches.
        """
        self._pool.start()
        self._fill()

    def _fill(self) -> None:
        """Sends index lists while the prefetch window has room and a worker can take one."""
        while len(self._in_flight) + len(self._reorder) < self._pool.max_in_flight:
            if self._unsent is None:
                try:
                    self._unsent = next(self._batches)
                except StopIteration:
                    return
            batch_id, indices = self._unsent
            seed = None if self._epoch_seed is None else batch_seed(self._epoch_seed, batch_id)
            if not self._pool.submit(Task(batch_id, indices, seed, self._pool_epoch)):
                return  # every worker's channel is full (huge index lists): sent on a later call
            self._unsent = None
            self._sent_order.append(batch_id)
            self._in_flight[batch_id] = indices

    def _next_result(self) -> tuple[Result, Any] | None:
        self._stats.ready(len(self._reorder) + self._pool.waiting)
        while True:
            ready = self._pop_ready()
            if ready is not None:
                self._fill()
                return ready
            if not self._in_flight and self._unsent is None:
                return None
            self._receive()
            if self._unsent is not None:
                self._fill()  # a worker may have room again (an earlier epoch's task came back)

    @property
    def tunes(self) -> bool:
        """Whether "auto" may resize the pool during this epoch."""
        return self._tuner is not None

    def tune(self) -> None:
        """After each batch, in the thread that iterates: lets "auto" resize the pool.

        Batches do not depend on the number of workers (each is seeded by its
        number), so the pool grows or shrinks between two batches of an epoch.
        """
        tuner = self._tuner
        if tuner is None or self._state is not _State.RUNNING:
            return
        stats = self._stats
        batches = stats.wait.count
        moved = stats.counted("bytes")
        change = tuner.observe(stats, int(moved // batches) if batches else 0)
        if change is None:
            return
        if change.workers != self._pool.num_workers:
            self._pool.resize(change.workers)
        self._pool.set_prefetch(change.prefetch)
        stats.workers_changed(change.workers, change.why)
        _log.debug(
            "auto: %d workers, prefetch %d (%s)", change.workers, change.prefetch, change.why
        )
        if self._on_change is not None:
            self._on_change(change)

    def _pop_ready(self) -> tuple[Result, Any] | None:
        if self._config.in_order:
            if not self._sent_order or self._sent_order[0] not in self._reorder:
                return None
            return self._reorder.pop(self._sent_order.popleft())
        return self._reorder.pop(min(self._reorder)) if self._reorder else None

    def _receive(self) -> None:
        result = self._pool.receive(_POLL_INTERVAL_S)
        if result is None:
            self._check()
            return
        self._stats.produced(result.busy_s, result.cpu_s)
        self._reorder[result.batch_id] = (result, self._in_flight.pop(result.batch_id))

    def _log_entry(self, result: Result, indices: Any) -> int:
        self._stats.samples += len(indices) if isinstance(indices, list) else 1
        return result.batch_id

    def _waiting_for(self) -> str:
        if self._config.in_order:
            waiting = self._sent_order[0] if self._sent_order else None
            indices = None if waiting is None else self._in_flight.get(waiting)
            return f"batch {waiting} (indices {_show(indices)})"
        return f"any of batches {sorted(self._in_flight)}"

    def _take_pending(self) -> list[Result]:
        # Results still in flight are dropped by the pool when they come (their epoch is over).
        pending = [result for result, _ in self._reorder.values()]
        self._reorder.clear()
        return pending


class StreamingIter(_BaseIter):
    """One epoch of an iterable dataset: each worker streams its own copy.

    Batches are taken round-robin over the workers still streaming (as torch
    does); a worker whose shard ends leaves the rotation; the epoch ends when
    all have. With merged streams (one queue for all workers) the iterator
    waits on that queue: ``in_order=False`` hands over whichever batch comes
    first, and a generator shared by thread workers is handed over in the
    order its batches were taken from it.
    """

    def __init__(
        self,
        config: LoaderConfig,
        pool: WorkerPool,
        *,
        owns_pool: bool,
        shared_seed: int | None = None,
        resume_states: dict[int, Any] | None = None,
        first_worker: int = 0,
        stats: EpochRecorder | None = None,
    ):
        super().__init__(config, pool, owns_pool=owns_pool, stats=stats)
        self._config_batch_size = pool.spec.batch_size or 1  # samples a batch (the last: fewer)
        self._shared_seed = shared_seed  # the epoch's seed for a datapipe's shufflers
        self._resume_states = resume_states  # per worker: a stateful dataset's saved state
        if pool.setup.streams is None:
            raise RuntimeError("[INTERNAL ERROR] StreamingIter needs a pool made with streams")
        self._streams: list[Any] = pool.setup.streams
        self._active = deque(range(config.num_workers))
        self._active.rotate(-first_worker)  # a resumed epoch's turn goes on where it was
        self.log: deque[tuple[int, Any]] = deque()  # (worker, dataset state) handed on
        self._epoch = -1
        self._reorder: dict[int, Result] = {}  # merged, in order: batch number -> result
        self._next_id = 0
        self._begin(self._start_streams)

    def _start_streams(self) -> None:
        self._pool.start()
        self._epoch = self._pool.start_streams(self._shared_seed, self._resume_states)

    def _next_result(self) -> tuple[Result, Any] | None:
        if self._config.merged_streams:
            return self._next_merged()
        while self._active:
            result = self._get(self._streams[self._active[0]])
            if result is None:
                continue
            if result.status is Status.EXHAUSTED:
                self._active.remove(result.worker_id)
                continue
            self._active.rotate(-1)
            return result, None
        return None

    def _next_merged(self) -> tuple[Result, Any] | None:
        while True:
            if self._next_id in self._reorder:
                self._next_id += 1
                return self._reorder.pop(self._next_id - 1), None
            if not self._active:  # every stream has ended: what is left, in order
                return (self._reorder.pop(min(self._reorder)), None) if self._reorder else None
            result = self._get(self._streams[0])
            if result is None:
                continue
            if result.status is Status.EXHAUSTED:
                self._active.remove(result.worker_id)
            elif result.status is not Status.OK or not self._config.in_order:
                return result, None
            else:
                self._reorder[result.batch_id] = result

    def _get(self, stream: Any) -> Result | None:
        """The stream's next result of this epoch; None after an idle poll or a stale result."""
        started = time.perf_counter()
        try:
            result = stream.get(timeout=_POLL_INTERVAL_S)
        except queue.Empty:
            self._pool.blocked_s += time.perf_counter() - started
            self._check()
            return None
        self._pool.blocked_s += time.perf_counter() - started
        if result.epoch != self._epoch:
            self._pool.release(result)
            return None
        if result.status is Status.OK:
            self._stats.produced(result.busy_s, result.cpu_s)
        return result

    def _log_entry(self, result: Result, indices: Any) -> tuple[int, Any]:
        self._stats.samples += self._config_batch_size
        return result.worker_id, result.state

    def _waiting_for(self) -> str:
        if self._config.merged_streams:
            return f"the next batch from any of workers {sorted(self._active)}"
        return f"the next batch from worker {self._active[0]}"

    def _take_pending(self) -> list[Result]:
        pending = list(self._reorder.values())
        self._reorder.clear()
        return pending

    def _stop_work(self) -> None:
        if not self._owns_pool and not self._pool.closed:
            self._pool.stop_streams()
