"""What one epoch of the loader did, and whether the training loop waited for data.

Always on, and cheap: the hot paths (a batch handed to the user, a batch back
from a worker) add a few floats. :class:`EpochRecorder` keeps the running
counters of one epoch; :meth:`EpochRecorder.snapshot` turns them into a
:class:`LoaderStats`, the public report (``loader.stats``), whose
:attr:`~LoaderStats.verdict` names the bottleneck. :func:`diagnose` is the one
reading of the numbers, shared by the verdict and by ``num_workers="auto"``.
"""

from __future__ import annotations

import enum
import math
import os
import random
import threading
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "Bottleneck",
    "Diagnosis",
    "EpochRecorder",
    "LoaderStats",
    "cores",
    "diagnose",
    "work_time",
]

# Below this share of the epoch spent waiting, the loader is not what limits training.
WAIT_THRESHOLD = 0.02
# Workers busier than this share of their time are the bottleneck when the loop waits.
BUSY_THRESHOLD = 0.8
# Workers whose CPU time is below this share of their busy time wait on I/O, not the CPU.
IO_THRESHOLD = 0.5
# How many waits and worker times a series keeps for its percentiles (a uniform sample).
_SERIES_CAP = 4096
# Process workers on an I/O-bound dataset: at most this many per core.
IO_WORKERS_PER_CORE = 8


def cores() -> int:
    """The cores this process may run on (its CPU affinity), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


class _Series:
    """Count, total and a bounded uniform sample of a stream of durations."""

    __slots__ = ("_rng", "count", "total", "values")

    def __init__(self) -> None:
        self.values = array("d")
        self.count = 0
        self.total = 0.0
        self._rng = random.Random(0)

    def add(self, value: float) -> None:
        self.count += 1
        self.total += value
        if len(self.values) < _SERIES_CAP:
            self.values.append(value)
        else:  # reservoir sampling: every value has the same chance to be kept
            slot = int(self._rng.random() * self.count)
            if slot < _SERIES_CAP:
                self.values[slot] = value

    def quantile(self, q: float) -> float:
        if not self.values:
            return 0.0
        ordered = sorted(self.values)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class Bottleneck(enum.Enum):
    """What limits an epoch's pace, as :func:`diagnose` reads the numbers."""

    NONE = "the loader is not the bottleneck"
    MAIN_PROCESS = "batches are made in the main process"
    WORKERS_CPU = "the workers' CPU work"
    WORKERS_IO = "the workers wait on I/O"
    TRANSFER = "the main process's handling of each batch"
    STARTUP = "starting the workers"


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """A bottleneck, and how many workers would keep the loop fed (0: no estimate)."""

    bottleneck: Bottleneck
    workers_needed: int = 0


def diagnose(
    *,
    wait_share: float,
    first_batch_share: float,
    starved_share: float,
    num_workers: int,
    busy_share: float,
    cpu_share: float,
    step_s: float,
    work_s: float,
    available_cores: int,
) -> Diagnosis:
    """Reads an epoch's (or a window's) numbers: what limits it, and what would help.

    ``wait_share`` is the loop's time inside ``next()``, ``first_batch_share``
    the part of the epoch before the first batch (workers starting);
    ``starved_share`` the time after it that no batch was ready (blocked on
    the workers), as opposed to handing one over. ``busy_share`` is the workers' over the
    steady part; ``step_s`` the loop's own time per batch (not waiting),
    ``work_s`` a worker's time to make one batch.
    """
    if wait_share < WAIT_THRESHOLD:
        return Diagnosis(Bottleneck.NONE)
    if num_workers and first_batch_share >= wait_share / 2:
        return Diagnosis(Bottleneck.STARTUP)
    if starved_share < WAIT_THRESHOLD:
        # Never short of batches: the time in next() is handing them over, a fixed cost.
        return Diagnosis(Bottleneck.NONE if num_workers else Bottleneck.MAIN_PROCESS)
    io_bound = cpu_share < IO_THRESHOLD
    cap = available_cores * (IO_WORKERS_PER_CORE if io_bound else 1)
    needed = cap if step_s <= 0 else min(cap, max(1, math.ceil(work_s / step_s)))
    if num_workers == 0:
        return Diagnosis(Bottleneck.MAIN_PROCESS, needed)
    if busy_share < BUSY_THRESHOLD:
        return Diagnosis(Bottleneck.TRANSFER)
    return Diagnosis(Bottleneck.WORKERS_IO if io_bound else Bottleneck.WORKERS_CPU, needed)


@dataclass(frozen=True)
class LoaderStats:
    """What one epoch of a :class:`~batchloader.DataLoader` did (``loader.stats``).

    ``loader.stats`` is the running epoch's, or the latest one's. Print it for
    a table, log :meth:`as_dict` (Lightning's ``log_dict``, a Keras callback,
    TensorBoard), or read :attr:`verdict`: whether the training loop waited
    for data, and why. Times are seconds; shares are fractions of the
    epoch's wall time (workers: of their own time).

    Example::

        for batch in loader:
            ...
        print(loader.stats.verdict)
        # the loader is not the bottleneck (0.3% of the epoch waiting)
    """

    epoch: int
    running: bool
    wall_s: float
    batches: int
    samples: int
    first_batch_s: float
    wait_s: float
    wait_share: float
    wait_p50_s: float
    wait_p95_s: float
    step_s: float
    worker_batch_p50_s: float
    worker_batch_p95_s: float
    worker_busy_share: float
    worker_cpu_share: float
    steady_wait_share: float
    starved_share: float
    ready_mean: float
    bytes: int
    settings: dict[str, Any] = field(default_factory=dict)
    decisions: tuple[str, ...] = ()
    available_cores: int = 1

    @property
    def diagnosis(self) -> Diagnosis:
        workers = int(self.settings.get("num_workers", 0))
        return diagnose(
            wait_share=self.wait_share,
            first_batch_share=self.first_batch_s / self.wall_s if self.wall_s else 0.0,
            starved_share=self.starved_share,
            num_workers=workers,
            busy_share=self.worker_busy_share,
            cpu_share=self.worker_cpu_share,
            step_s=self.step_s,
            work_s=self.worker_batch_p50_s,
            available_cores=self.available_cores,
        )

    @property
    def verdict(self) -> str:
        """One line: did the loop wait for data, and what would help."""
        return _verdict(self)

    def as_dict(self) -> dict[str, Any]:
        """Every figure and setting, flat (``settings/num_workers`` ...), for loggers."""
        flat: dict[str, Any] = {
            name: getattr(self, name)
            for name in self.__dataclass_fields__
            if name not in ("settings", "decisions")
        }
        flat.update({f"settings/{k}": v for k, v in self.settings.items()})
        flat["bottleneck"] = self.diagnosis.bottleneck.name.lower()
        flat["verdict"] = self.verdict
        return flat

    def __str__(self) -> str:
        return _table(self)


def _verdict(s: LoaderStats) -> str:
    waited = f"{100 * s.wait_share:.1f}%"
    if s.batches == 0:
        return "no batch has been handed out yet"
    d = s.diagnosis
    busy = f"workers were {100 * s.worker_busy_share:.0f}% busy"
    match d.bottleneck:
        case Bottleneck.NONE if s.starved_share >= WAIT_THRESHOLD or s.wait_share < WAIT_THRESHOLD:
            return f"the loader is not the bottleneck ({waited} of the epoch waiting)"
        case Bottleneck.NONE:
            return (
                f"the loader is not the bottleneck: a batch was always ready; handing each over "
                f"took {s.wait_p50_s * 1e3:.2f} ms ({waited} of the epoch)"
            )
        case Bottleneck.STARTUP:
            fix = (
                "they start once, and later epochs reuse them"
                if s.settings.get("persistent_workers")
                else "persistent_workers=True keeps them from one epoch to the next"
            )
            return (
                f"the training loop waited for data {waited} of the time, mostly for the first "
                f"batch ({s.first_batch_s * 1e3:.0f} ms, workers starting): {fix}"
            )
        case Bottleneck.MAIN_PROCESS:
            return (
                f"the training loop waited for data {waited} of the time: batches are made in "
                f"the main process (num_workers=0); workers would take that off the loop, "
                f"up to {d.workers_needed}"
            )
        case Bottleneck.TRANSFER:
            return (
                f"the training loop waited for data {waited} of the time, but {busy}: the main "
                "process's handling of each batch (receiving, collating, pinning) sets the pace; "
                "try prefetch_factor, in_order=False, a cheaper collate_fn or an ArrayDataset"
            )
        case Bottleneck.WORKERS_IO:
            more = (
                f"more workers than cores would help, up to {d.workers_needed} "
                "(or thread_pool=True)"
                if d.workers_needed > int(s.settings.get("num_workers", 0))
                else "the workers are at auto's budget: faster storage, or thread_pool=True"
            )
            return (
                f"the training loop waited for data {waited} of the time; {busy} but used the "
                f"CPU only {100 * s.worker_cpu_share:.0f}% of it: the dataset waits on I/O; {more}"
            )
    cores_note = (
        f"more workers would help, up to {d.workers_needed}"
        if d.workers_needed > int(s.settings.get("num_workers", 0))
        else f"the workers already use the {s.available_cores} cores: make __getitem__ cheaper"
    )
    return (
        f"the training loop waited for data {waited} of the time; {busy}: the dataset's "
        f"__getitem__ and collate_fn ({s.worker_batch_p50_s * 1e3:.1f} ms a batch) are the "
        f"bottleneck: {cores_note}"
    )


def _table(s: LoaderStats) -> str:
    ms = 1e3
    rows = [
        ("epoch", f"{s.epoch}{' (running)' if s.running else ''}"),
        ("batches / samples", f"{s.batches:,} / {s.samples:,}"),
        ("wall time", f"{s.wall_s:.2f} s"),
        ("first batch", f"{s.first_batch_s * ms:.1f} ms"),
        (
            "waiting for data",
            f"{s.wait_s:.2f} s = {100 * s.wait_share:.1f}% "
            f"(p50 {s.wait_p50_s * ms:.2f} ms, p95 {s.wait_p95_s * ms:.2f} ms a batch)",
        ),
        ("loop's own time a batch", f"{s.step_s * ms:.2f} ms"),
        (
            "a worker's time a batch",
            f"p50 {s.worker_batch_p50_s * ms:.2f} ms, p95 {s.worker_batch_p95_s * ms:.2f} ms",
        ),
        (
            "workers busy",
            f"{100 * s.worker_busy_share:.0f}% (CPU {100 * s.worker_cpu_share:.0f}% of that)",
        ),
        ("batches ready when asked", f"{s.ready_mean:.1f} on average"),
        ("bytes delivered", f"{s.bytes / 1e6:,.1f} MB"),
        ("settings", ", ".join(f"{k}={v}" for k, v in s.settings.items())),
    ]
    rows += [("auto", decision) for decision in s.decisions]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    return "\n".join([*lines, f"verdict: {s.verdict}"])


class EpochRecorder:
    """The running counters of one epoch; each hot path is a few additions.

    The consumer side calls :meth:`delivered` for every batch handed to the
    user; the iterator calls :meth:`produced` for every batch a worker made
    and :meth:`ready` each time the user asks; a changing pool calls
    :meth:`workers_changed`.
    """

    def __init__(self, epoch: int, settings: dict[str, Any]) -> None:
        self.epoch = epoch
        self.settings = dict(settings)
        self.started = time.perf_counter()
        self.ended: float | None = None
        self.first_batch_s = 0.0
        self.last_delivered = self.started
        self.samples = 0
        self.wait = _Series()
        self.work = _Series()
        self.busy_s = 0.0
        self.cpu_s = 0.0
        self.ready_total = 0
        self.ready_count = 0
        # Running totals kept elsewhere (the pool's), counted from when this epoch began.
        self._sources: dict[str, tuple[Callable[[], float], float]] = {}
        self.starved_s = 0.0  # without a pool: the time the loop spent making batches itself
        self._workers = int(settings.get("num_workers", 0))
        self._worker_seconds = 0.0
        self._workers_since = self.started
        self.decisions: list[str] = []

    def watch(self, name: str, source: Callable[[], float]) -> None:
        """Counts ``name`` (``"bytes"``, ``"starved_s"``) as ``source``'s running total grows."""
        self._sources[name] = (source, source())

    def counted(self, name: str) -> float:
        """How much a watched total has grown since this epoch began (0 if not watched)."""
        source, start = self._sources.get(name, (None, 0.0))
        return 0.0 if source is None else source() - start

    def delivered(self, asked: float, got: float) -> None:
        """A batch reached the user: asked for at ``asked``, returned at ``got``.

        (The iterator that knows the batch's size adds to :attr:`samples`.)
        """
        if self.wait.count == 0:
            self.first_batch_s = got - self.started
        self.wait.add(got - asked)
        self.last_delivered = got

    def produced(self, busy_s: float, cpu_s: float) -> None:
        """A worker (or the main process, without workers) made one batch."""
        self.work.add(busy_s)
        self.busy_s += busy_s
        self.cpu_s += cpu_s

    def ready(self, count: int) -> None:
        self.ready_total += count
        self.ready_count += 1

    def workers_changed(self, count: int, why: str) -> None:
        """The pool now has ``count`` workers (auto); ``why`` goes in the report."""
        now = time.perf_counter()
        self._worker_seconds += self._workers * (now - self._workers_since)
        self._workers, self._workers_since = count, now
        self.settings["num_workers"] = count
        self.decisions.append(f"{now - self.started:.2f} s: {count} workers ({why})")

    def end(self, *, finished: bool = True) -> None:
        """The epoch is over: run to its end, or (``finished=False``) left after its last batch."""
        if self.ended is None:
            self.ended = time.perf_counter() if finished else self.last_delivered

    def snapshot(self) -> LoaderStats:
        now = self.ended if self.ended is not None else time.perf_counter()
        wall = max(now - self.started, 1e-9)
        # The steady part: from the first batch on (workers started, the pipeline full).
        steady = max(wall - self.first_batch_s, 1e-9)
        steady_wait = self.wait.total - self.first_batch_s
        first_work = self.work.values[0] if self.work.values else 0.0
        worker_seconds = self._worker_seconds + self._workers * (now - self._workers_since)
        if worker_seconds == 0:  # no workers: the main process makes the batches
            busy_share = (self.busy_s - first_work) / steady
        else:
            busy_share = (self.busy_s - first_work) / (worker_seconds * steady / wall)
        batches = self.wait.count
        moved = int(self.counted("bytes"))
        starved = self.counted("starved_s") if "starved_s" in self._sources else self.starved_s
        steady_starved = max(0.0, starved - self.first_batch_s)
        return LoaderStats(
            epoch=self.epoch,
            running=self.ended is None,
            wall_s=wall,
            batches=batches,
            samples=self.samples,
            first_batch_s=self.first_batch_s,
            wait_s=self.wait.total,
            wait_share=min(1.0, self.wait.total / wall),
            wait_p50_s=self.wait.quantile(0.5),
            wait_p95_s=self.wait.quantile(0.95),
            step_s=max(0.0, wall - self.wait.total) / batches if batches else 0.0,
            worker_batch_p50_s=self.work.quantile(0.5),
            worker_batch_p95_s=self.work.quantile(0.95),
            worker_busy_share=max(0.0, min(1.0, busy_share)),
            worker_cpu_share=min(1.0, self.cpu_s / self.busy_s) if self.busy_s > 0 else 0.0,
            steady_wait_share=max(0.0, min(1.0, steady_wait / steady)),
            starved_share=max(0.0, min(1.0, steady_starved / steady)),
            ready_mean=self.ready_total / self.ready_count if self.ready_count else 0.0,
            bytes=moved,
            settings=dict(self.settings),
            decisions=tuple(self.decisions),
            available_cores=cores(),
        )


# A batch this long also reads how long the thread waited for a CPU (a file read: a few us).
_RUN_QUEUE_MIN_S = 0.001


class _SchedStat:
    """This thread's /proc/thread-self/schedstat, kept open; closed when the thread ends."""

    def __init__(self) -> None:
        try:
            self.fd = os.open("/proc/thread-self/schedstat", os.O_RDONLY)
        except OSError:
            self.fd = -1
        self.last = self.run_queue_s()

    def run_queue_s(self) -> float:
        if self.fd < 0:
            return 0.0
        try:
            return int(os.pread(self.fd, 64, 0).split()[1]) * 1e-9
        except (OSError, ValueError, IndexError):
            return 0.0

    def __del__(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)


_sched = threading.local()


def _waited_for_cpu() -> float:
    """Seconds this thread was runnable but not running since the last call (Linux), else 0.

    Wall time minus CPU time is not all I/O: on a busy machine part of it is
    waiting for a core, which more workers would not help.
    """
    stat = getattr(_sched, "stat", None)
    if stat is None:
        stat = _sched.stat = _SchedStat()  # the time before now is not this batch's
    now = stat.run_queue_s()
    waited, stat.last = now - stat.last, now
    return waited


def work_time(started: float, cpu_started: float) -> tuple[float, float]:
    """A batch's wall time, and the part of it the worker ran or was ready to run."""
    busy = time.perf_counter() - started
    cpu = time.thread_time() - cpu_started
    if busy >= _RUN_QUEUE_MIN_S:
        cpu = min(busy, cpu + _waited_for_cpu())
    return busy, cpu
