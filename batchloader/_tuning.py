"""``num_workers="auto"``: choosing the number of workers while the epoch runs.

The loader's batches do not depend on the number of workers (each batch is
seeded by its number), so the count can change in the middle of an epoch
without changing a sample. :class:`AutoTuner` reads the epoch's statistics
(:mod:`._stats`) over short windows and moves the count the way
:func:`._stats.diagnose` points:

* the training loop waits and the workers are busy: one more worker, or twice
  as many when they wait on I/O rather than the CPU, within the budget;
* the loop waits but the workers are not busy: more workers would not help;
  a deeper prefetch may (``prefetch_factor="auto"``);
* the loop does not wait: the fewest workers that keep it so (the workers'
  measured busy share says how many that is).

Every change is checked on the next window: a grow that did not raise the
rate, or a shrink that made the loop wait, is undone, and the tuner settles
on the better count. It re-opens only when the loop's waiting changes
clearly. The budget: process workers up to the cores this process may use
(``os.sched_getaffinity``) for CPU work, up to ``IO_WORKERS_PER_CORE`` per
core for I/O-bound datasets, and no more than the shared memory in flight
allows (a quarter of ``/dev/shm``'s free space).
"""

from __future__ import annotations

import enum
import math
import os
import time
from dataclasses import dataclass

from ._config import LoaderConfig, WorkerKind
from ._stats import (
    BUSY_THRESHOLD,
    IO_THRESHOLD,
    IO_WORKERS_PER_CORE,
    WAIT_THRESHOLD,
    Bottleneck,
    EpochRecorder,
    LoaderStats,
    cores,
)

__all__ = ["AutoCount", "AutoTuner", "Change", "LoaderAuto", "max_workers", "start_workers"]

# A window is at least this long and holds at least this many batches.
_WINDOW_S = 0.4
_WINDOW_BATCHES = 8
# ... and at most this long, whatever the batches (a slow loop still gets decisions).
_WINDOW_MAX_S = 3.0
# A grow must raise the rate by this much to be kept.
_GAIN = 1.05
# Settled: the loop's waiting share must move this far (either way) to re-open the search.
_REOPEN = 0.05
# An epoch this short says too little to try (or judge) num_workers=0 on.
_TRIAL_BATCHES = 16
# prefetch_factor="auto" grows the prefetch depth up to this.
_MAX_PREFETCH = 8
# Of /dev/shm's free space, what batches in flight may take.
_SHM_SHARE = 4


class AutoCount(int):
    """An ``"auto"`` setting as the loader keeps it: the count in use now, as an int.

    ``loader.num_workers`` stays an int for the code that compares it (Lightning
    does), and giving it to a new ``DataLoader`` (as frameworks that rebuild
    the loader do) keeps it automatic.
    """

    def __repr__(self) -> str:
        return f"auto({int(self)})"


def start_workers() -> int:
    """Where auto starts when it knows nothing yet: one worker per core, up to 8."""
    return min(cores(), 8)


def max_workers(*, processes: bool) -> int:
    """The most workers auto may use: I/O-bound datasets get several per core."""
    return cores() * IO_WORKERS_PER_CORE if processes else 4 * cores() * IO_WORKERS_PER_CORE


def _shm_free_bytes() -> int:
    try:
        stat = os.statvfs("/dev/shm")
    except OSError:
        return 0
    return stat.f_bavail * stat.f_frsize


class _Phase(enum.Enum):
    SEARCHING = "searching"
    CHECKING = "checking"  # a change was made; the next window says whether to keep it
    SETTLED = "settled"


@dataclass(frozen=True, slots=True)
class Change:
    """What the tuner asks of the pool, and why (it goes in the statistics)."""

    workers: int
    prefetch: int
    why: str


@dataclass(frozen=True, slots=True)
class _Counts:
    """An epoch's running counters at one moment, or (subtracted) over a stretch of time."""

    at: float  # seconds (a moment, or a length of time)
    batches: int
    starved_s: float
    busy_s: float
    cpu_s: float

    def __sub__(self, other: _Counts) -> _Counts:
        return _Counts(
            self.at - other.at,
            self.batches - other.batches,
            self.starved_s - other.starved_s,
            self.busy_s - other.busy_s,
            self.cpu_s - other.cpu_s,
        )

    def __add__(self, other: _Counts) -> _Counts:
        return _Counts(
            self.at + other.at,
            self.batches + other.batches,
            self.starved_s + other.starved_s,
            self.busy_s + other.busy_s,
            self.cpu_s + other.cpu_s,
        )


class AutoTuner:
    """Chooses ``num_workers`` (and ``prefetch_factor``) from the epoch's statistics.

    Example::

        tuner = AutoTuner(workers=2, prefetch=2, processes=True, auto_prefetch=False)
        change = tuner.observe(recorder)  # after each batch; None, or a Change to apply
    """

    def __init__(
        self,
        *,
        workers: int,
        prefetch: int,
        processes: bool,
        auto_workers: bool = True,
        auto_prefetch: bool = False,
        limit: int | None = None,
    ) -> None:
        self.workers = workers
        self.prefetch = prefetch
        self._processes = processes
        self._auto_workers = auto_workers
        self._auto_prefetch = auto_prefetch
        limit = limit if limit is not None else max_workers(processes=processes)
        self._limit = limit if auto_workers else workers
        self._phase = _Phase.SEARCHING
        self._window: _Counts | None = None  # the counters where the window began
        self._last: _Counts | None = None  # the counters at the latest batch
        self._carry = _Counts(0.0, 0, 0.0, 0.0, 0.0)  # a window's part in earlier epochs
        self._rates: dict[int, float] = {}  # workers -> batches/s measured with that many
        self._before: tuple[int, int, float, float] | None = None  # (workers, prefetch, rate, wait)
        self._ceiling = self._limit + 1  # a count found not to help: below it from now on
        self._settled_wait = 0.0

    def begin_epoch(self, workers: int, prefetch: int) -> None:
        """A new epoch (a new recorder); a settled count stays settled.

        The window in progress carries over: epochs shorter than a window
        (a fast loader over a small dataset) still add up to decisions.
        """
        self.workers, self.prefetch = workers, prefetch
        if self._window is not None and self._last is not None:
            self._carry = self._carry + (self._last - self._window)
        self._window = self._last = None
        if self._phase is _Phase.CHECKING:
            self._phase = _Phase.SEARCHING
            self._before = None

    # -- observing ------------------------------------------------------------------

    def observe(self, stats: EpochRecorder, batch_bytes: int = 0) -> Change | None:
        """Called after each batch the user gets; a :class:`Change` when a window ends."""
        now = _Counts(
            time.perf_counter(),
            stats.wait.count,
            stats.counted("starved_s"),
            stats.busy_s,
            stats.cpu_s,
        )
        if self._window is None or now.batches <= 1:
            # The first batch of an epoch (workers starting, the pipeline filling) is no window.
            self._window = now
            return None
        self._last = now
        seen = self._carry + (now - self._window)
        few = seen.batches < _WINDOW_BATCHES
        if seen.at < _WINDOW_S or (few and seen.at < _WINDOW_MAX_S):
            return None
        self._window, self._carry = now, _Counts(0.0, 0, 0.0, 0.0, 0.0)
        elapsed = seen.at
        rate = seen.batches / elapsed
        # The loop's waiting here is the time no batch was ready (not handing one over).
        wait = seen.starved_s / elapsed
        busy = seen.busy_s / (max(self.workers, 1) * elapsed)
        cpu = seen.cpu_s / seen.busy_s if seen.busy_s > 0 else 1.0
        self._rates[self.workers] = rate
        return self._decide(rate, wait, busy, cpu, batch_bytes)

    # -- deciding -------------------------------------------------------------------

    def _decide(
        self, rate: float, wait: float, busy: float, cpu: float, batch_bytes: int
    ) -> Change | None:
        if self._phase is _Phase.CHECKING:
            return self._check(rate, wait)
        if self._phase is _Phase.SETTLED:
            if abs(wait - self._settled_wait) < _REOPEN:
                return None
            self._phase = _Phase.SEARCHING
            self._ceiling = self._limit + 1
        if wait >= WAIT_THRESHOLD:
            if busy >= BUSY_THRESHOLD:
                return self._grow(rate, wait, io_bound=cpu < IO_THRESHOLD, batch_bytes=batch_bytes)
            if self._auto_prefetch and self.prefetch < _MAX_PREFETCH:
                why = (
                    f"the loop waited {100 * wait:.0f}% with workers {100 * busy:.0f}% busy: "
                    "a deeper prefetch"
                )
                return self._try(self.workers, self.prefetch * 2, rate, wait, why)
            return self._settle(
                wait,
                f"the loop waited {100 * wait:.0f}% but workers were {100 * busy:.0f}% busy: "
                "more workers would not help",
            )
        needed = max(1, math.ceil(self.workers * busy / BUSY_THRESHOLD))
        if needed < self.workers and self._auto_workers:
            why = f"the loop did not wait; workers {100 * busy:.0f}% busy: {needed} suffice"
            return self._try(needed, self.prefetch, rate, wait, why)
        return self._settle(
            wait, f"the loop waited {100 * wait:.1f}%, with workers {100 * busy:.0f}% busy"
        )

    def _grow(self, rate: float, wait: float, *, io_bound: bool, batch_bytes: int) -> Change | None:
        if not self._auto_workers:
            return self._settle(wait, f"the loop waited {100 * wait:.0f}%; num_workers is fixed")
        cap = min(self._ceiling - 1, self._limit)
        if not io_bound:
            cap = min(cap, cores())
        if batch_bytes and self._processes:
            in_flight = max(1, _shm_free_bytes() // _SHM_SHARE // batch_bytes)
            cap = min(cap, max(1, in_flight // max(self.prefetch, 1)))
        target = min(cap, self.workers * 2 if io_bound else self.workers + 1)
        kind = "I/O" if io_bound else "CPU"
        if target <= self.workers:
            return self._settle(
                wait,
                f"the loop waited {100 * wait:.0f}%, workers busy on {kind}, but more "
                f"did not help or would pass the budget ({cap})",
            )
        why = f"the loop waited {100 * wait:.0f}%, workers busy on {kind}: more workers"
        return self._try(target, self.prefetch, rate, wait, why)

    def _try(self, workers: int, prefetch: int, rate: float, wait: float, why: str) -> Change:
        self._before = (self.workers, self.prefetch, rate, wait)
        self._phase = _Phase.CHECKING
        self.workers, self.prefetch = workers, prefetch
        return Change(workers, prefetch, why)

    def _check(self, rate: float, wait: float) -> Change | None:
        """Keeps the change just made if it helped, else goes back and settles."""
        if self._before is None:
            raise RuntimeError("[INTERNAL ERROR] the tuner checks a change it never made")
        workers, prefetch, old_rate, old_wait = self._before
        self._before = None
        grew = self.workers > workers or self.prefetch > prefetch
        if grew and rate >= old_rate * _GAIN:
            self._phase = _Phase.SEARCHING
            return None
        if not grew and wait < WAIT_THRESHOLD and rate >= old_rate / _GAIN:
            self._phase = _Phase.SEARCHING
            return None
        if grew:
            self._ceiling = self.workers
        why = (
            f"{self.workers} workers, prefetch {self.prefetch}: {rate:.0f} batches/s, "
            f"waiting {100 * wait:.0f}%; back to the {old_rate:.0f} batches/s before"
        )
        self.workers, self.prefetch = workers, prefetch
        self._phase, self._settled_wait = _Phase.SETTLED, old_wait
        return Change(workers, prefetch, why)

    def _settle(self, wait: float, why: str) -> Change | None:
        """Stops searching until the loop's waiting moves clearly; says so once."""
        settling = self._phase is not _Phase.SETTLED
        self._phase = _Phase.SETTLED
        self._settled_wait = wait
        return Change(self.workers, self.prefetch, f"settled: {why}") if settling else None


class LoaderAuto:
    """One loader's automatic settings: the pool's capacity, and a tuner kept across epochs.

    Example::

        auto = LoaderAuto()
        pool = WorkerPool(config, spec, seed, capacity=auto.capacity(config, iterable=False))
        tuner = auto.tuner(config, pool.num_workers, pool.prefetch)  # None unless "auto"
    """

    def __init__(self) -> None:
        self._tuner: AutoTuner | None = None
        self._trial: tuple[int, float] | None = None  # (the count before, its rate): 0 on trial
        self._tried_zero = False
        self.note = ""  # why the epoch starts with the count it does (for its statistics)

    def epoch_workers(self, previous: LoaderStats | None, current: int) -> int:
        """The worker count the next epoch starts with: ``current``, or a trial of none.

        When the loop waited for batches that the workers were not busy making
        (the main process's handling of each batch set the pace: samples so
        cheap that a worker costs more than it brings), the next epoch runs with
        ``num_workers=0`` once, and keeps it if it was faster. Only at an epoch's
        start: batches made in the main process draw from its global random
        generators rather than the per-batch seeds, so each epoch is that of
        one fixed count.
        """
        self.note = ""
        if previous is None or previous.batches < _TRIAL_BATCHES:
            return current
        rate = _steady_rate(previous)
        if current == 0 and self._trial is not None:
            before, before_rate = self._trial
            self._trial = None
            if rate >= before_rate * _GAIN:
                self.note = (
                    f"num_workers=0 ran {rate:.0f} batches/s, {before} workers {before_rate:.0f}"
                )
                return 0
            self.note = f"back to {before} workers: num_workers=0 ran {rate:.0f} batches/s"
            return before
        if (
            current == 0
            or self._tried_zero
            or previous.diagnosis.bottleneck is not Bottleneck.TRANSFER
        ):
            return current
        self._tried_zero = True
        self._trial = (current, rate)
        self.note = (
            f"trying num_workers=0: the loop waited with {current} workers "
            f"{100 * previous.worker_busy_share:.0f}% busy ({rate:.0f} batches/s)"
        )
        return 0

    @staticmethod
    def capacity(config: LoaderConfig, *, iterable: bool) -> int:
        """How many workers the pool must be able to hold (more than it starts with, if auto)."""
        if not config.auto_workers or iterable:
            return config.num_workers
        return max(config.num_workers, max_workers(processes=_is_process(config)))

    def tuner(self, config: LoaderConfig, workers: int, prefetch: int) -> AutoTuner | None:
        """The loader's tuner, set for this epoch's pool; None when nothing is automatic."""
        if not (config.auto_workers or config.auto_prefetch):
            self._tuner = None
            return None
        if self._tuner is None:
            self._tuner = AutoTuner(
                workers=workers,
                prefetch=prefetch,
                processes=_is_process(config),
                auto_workers=config.auto_workers,
                auto_prefetch=config.auto_prefetch,
            )
        self._tuner.begin_epoch(workers, prefetch)
        return self._tuner


def _steady_rate(stats: LoaderStats) -> float:
    """An epoch's batches per second after its first batch."""
    return max(stats.batches - 1, 0) / max(stats.wall_s - stats.first_batch_s, 1e-9)


def _is_process(config: LoaderConfig) -> bool:
    return config.worker_kind is WorkerKind.PROCESS
