"""Plans the measurements, runs them alternately in fresh processes, checks and summarises.

A *cell* is one workload loaded one way (worker count, worker kind, batch
size, ``auto``). Each round runs every cell once with our loader and then once
with torch's (``ours, torch, ours, torch, ...``), and the physical reference
(the plain loop) once per workload; the summary takes medians over the rounds.
Every run carries its round's number, and ratios pair runs of the same round.

Every measurement runs in a fresh process (see :mod:`.processes`). Then
every run's delivery is checked: the sample count, an order-sensitive hash of
the labels, and a probe of the data that must match the plain loop's. After
the planned rounds, ``run_bench``'s ``more`` callback may ask for extra rounds
of a few cells (the report's targets that are too close to call, see
:func:`.targets.judge`), until it asks for none.

The auto comparison (``BenchOptions.auto``) has cells of its own: per
workload, ``num_workers="auto"`` (processes, and threads) beside every fixed
setting, each measured the same way (``Spec.settle``).
"""

from __future__ import annotations

import os
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import workloads as wl
from .checks import check_run
from .measure import Spec
from .processes import Measurer
from .targets import by_round, figure

__all__ = [
    "BenchOptions",
    "BenchResult",
    "Cell",
    "CellResult",
    "default_workers",
    "paired_ratio",
    "plan",
    "run_bench",
]

_THREADS = 8
_LOADERS = ("ours", "torch")
# The auto comparison's fixed settings (issue 22): process workers (0 is always added) for
# both loaders, and thread workers for ours; --quick keeps the few that decide its goals.
_AUTO_PROCESSES = {False: (1, 2, 4, 8), True: (1, 2, 8)}
_AUTO_THREADS = {False: (4, 8, 16), True: (16,)}
# Workloads whose targets compare with the plain loop in two processes (issue 23).
_TWO_CORE_WORKLOADS = ("cpu", "big", "jpeg")
# Extra rounds after the planned ones, at most (the report's rule stops sooner).
_MAX_EXTRA_ROUNDS = 6


def default_workers(*, auto: bool, quick: bool) -> tuple[int, ...]:
    """Process worker counts when the command line names none."""
    return _AUTO_PROCESSES[quick] if auto else (2,)


@dataclass(frozen=True, slots=True)
class Cell:
    """One workload loaded one way; ``batched``: ours reads its ArrayDataset form."""

    workload: str
    num_workers: int = 0
    thread_pool: bool = False
    batch_size: int | None = None
    batched: bool = False
    with_torch: bool = True  # False: torch has no such mode, or it is not a target
    auto: bool = False  # ours with num_workers="auto" (num_workers unused)
    settle: bool = False  # the auto comparison's way: warm-up epochs, then the measured one

    @property
    def setting(self) -> str:
        """How it loads, without the workload: ``w2``, ``threads8``, ``auto threads``."""
        if self.auto:
            return "auto threads" if self.thread_pool else "auto"
        return f"threads{self.num_workers}" if self.thread_pool else f"w{self.num_workers}"

    @property
    def name(self) -> str:
        parts = [self.workload]
        if self.batched:
            parts.append("batched")
        if self.batch_size is not None:
            parts.append(f"bs{self.batch_size}")
        parts.append(self.setting)
        if self.settle and not self.auto:
            parts.append("warm")  # not the suite's cell of the same setting: measured warm
        return " ".join(parts)

    def spec(self, loader: str, options: BenchOptions) -> Spec:
        reference = loader == "plain" and not self.settle
        return Spec(
            workload=self.workload,
            loader=loader,
            size=options.size,
            num_workers=0 if loader == "plain" else self.num_workers,
            auto=self.auto and loader == "ours",
            thread_pool=self.thread_pool and loader == "ours",
            batch_size=self.batch_size,
            batched=self.batched and loader == "ours",
            memcpy=reference and self.workload == "big",
            scaling=reference and self.workload in _TWO_CORE_WORKLOADS,
            settle=self.settle,
            cache_dir=str(options.cache_dir),
        )


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """What to run; the command line builds it."""

    workloads: tuple[str, ...] = wl.SUITE
    workers: tuple[int, ...] = (2,)
    repeats: int = 3
    quick: bool = False
    size: str = "full"
    threads: int = _THREADS
    cache_dir: Path = field(default_factory=wl.default_cache_dir)
    exec_each: bool = False
    progress: bool = True
    auto: bool = False  # the auto comparison instead of the suite's cells

    def __post_init__(self) -> None:
        unknown = sorted(set(self.workloads) - set(wl.WORKLOADS))
        if unknown:
            raise ValueError(f"unknown workloads {unknown}; choose from {list(wl.WORKLOADS)}")
        if self.repeats < 1:
            raise ValueError(f"repeats must be at least 1; got {self.repeats}")
        if not self.workers or any(w < 1 for w in self.workers):
            raise ValueError(f"workers must be counts of at least 1; got {self.workers}")
        if self.threads < 1:
            raise ValueError(f"threads must be at least 1; got {self.threads}")


def _workload_cells(name: str, workers: tuple[int, ...], quick: bool, threads: int) -> list[Cell]:
    """The cells of one workload. Quick runs keep what the targets need."""
    multi = [Cell(name, w) for w in workers]
    match name:
        case "tiny":
            batched = [Cell(name, 0, batched=True)]
            if not quick:  # torch's side would repeat the tiny wN cell's torch runs
                batched += [Cell(name, w, batched=True, with_torch=False) for w in workers]
            return [Cell(name, 0), *multi, *batched]
        case "cpu":
            return [Cell(name, 0, with_torch=not quick), *multi]
        case "big":
            small = [Cell(name, w, batch_size=8, with_torch=not quick) for w in workers]
            return [*([] if quick else [Cell(name, 0)]), *multi, *small]
        case "io":
            pool = Cell(name, threads, thread_pool=True, with_torch=False)
            return [Cell(name, 0, with_torch=not quick), *multi, pool]
    return [*([] if quick else [Cell(name, 0)]), *multi]


def _auto_cells(name: str, options: BenchOptions) -> list[Cell]:
    """The auto comparison for one workload: auto beside every fixed setting, all warm."""
    fixed = [Cell(name, w, settle=True) for w in dict.fromkeys((0, *options.workers))]
    pools = [
        Cell(name, t, thread_pool=True, with_torch=False, settle=True)
        for t in _AUTO_THREADS[options.quick]
    ]
    autos = [
        Cell(name, 0, thread_pool=threads, with_torch=False, auto=True, settle=True)
        for threads in (False, True)
    ]
    return [*fixed, *pools, *autos]


def plan(options: BenchOptions) -> list[Cell]:
    """Every cell to measure, workload by workload."""
    cells: list[Cell] = []
    for name in options.workloads:
        if options.auto:
            cells += _auto_cells(name, options)
        else:
            cells += _workload_cells(name, options.workers, options.quick, options.threads)
    return cells


@dataclass(frozen=True, slots=True)
class _Job:
    cell: Cell | None  # None: the workload's physical reference
    workload: str
    loader: str
    spec: Spec
    round: int

    @property
    def label(self) -> str:
        return f"{self.workload} plain" if self.cell is None else f"{self.cell.name} {self.loader}"


def _jobs(
    cells: list[Cell], options: BenchOptions, rounds: range, references: set[str] | None = None
) -> list[_Job]:
    """Rounds of ``ours, torch`` per cell, each workload's reference first in its round.

    ``references``: the workloads whose reference runs (default: every workload of ``cells``).
    """
    wanted = {c.workload for c in cells} if references is None else references
    order = list(dict.fromkeys([*(c.workload for c in cells), *sorted(wanted)]))
    jobs: list[_Job] = []
    for k in rounds:
        for workload in order:
            if workload in wanted:
                spec = Cell(workload, settle=options.auto).spec("plain", options)
                jobs.append(_Job(None, workload, "plain", spec, k))
            for cell in (c for c in cells if c.workload == workload):
                for loader in _LOADERS if cell.with_torch else ("ours",):
                    jobs.append(_Job(cell, workload, loader, cell.spec(loader, options), k))
    return jobs


# --- checks and summary ------------------------------------------------------------------------


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [v for r in runs if r.get("ok") and (v := figure(r, key)) is not None]
    return statistics.median(values) if values else None


def paired_ratio(
    numerators: list[dict[str, Any]], denominators: list[dict[str, Any]]
) -> float | None:
    """The median over rounds of one round's rate over the same round's.

    Runs of one round ran back to back, so each ratio compares runs that saw
    about the same background load; the median of those is steadier than the
    ratio of two medians on a shared machine.
    """
    tops, bottoms = by_round(numerators), by_round(denominators)
    ratios = [
        tops[k]["rate"] / bottoms[k]["rate"]
        for k in sorted(tops.keys() & bottoms.keys())
        if tops[k].get("rate") is not None and bottoms[k].get("rate")
    ]
    return statistics.median(ratios) if ratios else None


@dataclass(slots=True)
class CellResult:
    """All runs of one cell, and what the checks found."""

    cell: Cell
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def median(self, loader: str, key: str) -> float | None:
        return _median(self.runs.get(loader, []), key)

    def ratio(self) -> float | None:
        """Ours over torch: the median of the rounds' ratios (see :func:`paired_ratio`)."""
        return paired_ratio(self.runs.get("ours", []), self.runs.get("torch", []))


@dataclass(slots=True)
class BenchResult:
    """Everything one benchmark run measured."""

    options: BenchOptions
    cells: list[CellResult]
    references: dict[str, list[dict[str, Any]]]
    load: list[float] = field(default_factory=list)  # 1-minute load average, before and after
    remeasured: list[list[str]] = field(default_factory=list)  # each extra round's cells
    cpus: int = field(default_factory=lambda: os.cpu_count() or 1)

    def reference(self, workload: str, key: str = "rate") -> float | None:
        return _median(self.references.get(workload, []), key)

    def cell(self, name: str) -> CellResult | None:
        return next((c for c in self.cells if c.cell.name == name), None)

    @property
    def ok(self) -> bool:
        return not any(c.problems for c in self.cells)


def _authority(result: BenchResult, cell: Cell) -> float | None:
    """The probe every run of ``cell`` must reproduce: the plain loop's, else torch's, else ours.

    Probes are per sample, so they do not depend on the batch size, except where
    samples are padded to the batch's longest (``pad``, which has one batch size).
    """
    for run in result.references.get(cell.workload, []):
        if run.get("ok"):
            return run["checksum"]["probe"]
    for loader in _LOADERS:
        for other in result.cells:
            if other.cell.workload == cell.workload and other.cell.batch_size == cell.batch_size:
                for run in other.runs.get(loader, []):
                    if run.get("ok"):
                        return run["checksum"]["probe"]
    return None


def _check_all(result: BenchResult) -> None:
    for cell in result.cells:
        count = wl.WORKLOADS[cell.cell.workload].size(result.options.size, auto=cell.cell.settle)
        probe = _authority(result, cell.cell)
        cell.problems = [
            f"{loader} run {k + 1}: {p}"
            for loader, runs in cell.runs.items()
            for k, run in enumerate(runs)
            for p in check_run(run, count, probe)
        ]


# Which cells and references an extra round measures again: (cell names, workloads).
Remeasure = Callable[["BenchResult"], tuple[set[str], set[str]]]


def run_bench(options: BenchOptions, more: Remeasure | None = None) -> BenchResult:
    """Runs the whole benchmark: prepare, measure alternately, check; then extra rounds.

    ``more(result)`` names what to measure again after the planned rounds and
    after each extra round (nothing: done); the report's targets decide it.
    """
    cells = plan(options)
    for name in dict.fromkeys(c.workload for c in cells):
        workload = wl.WORKLOADS[name]
        count = max(workload.size(options.size), workload.size(options.size, auto=True))
        wl.prepare(name, count, options.cache_dir)
    result = BenchResult(options, [CellResult(c) for c in cells], {}, [os.getloadavg()[0]])
    measurer = Measurer(options.exec_each)
    try:
        _measure(result, _jobs(cells, options, range(options.repeats)), measurer, "bench")
        _check_all(result)
        for k in range(options.repeats, options.repeats + _MAX_EXTRA_ROUNDS):
            names, references = more(result) if more else (set(), set())
            chosen = [c for c in cells if c.name in names]
            if not chosen and not references:
                break
            result.remeasured.append(sorted(names) + [f"{w} plain" for w in sorted(references)])
            _measure(result, _jobs(chosen, options, range(k, k + 1), references), measurer, "again")
            _check_all(result)
    finally:
        measurer.close()
    result.load.append(os.getloadavg()[0])
    return result


def _measure(result: BenchResult, jobs: list[_Job], measurer: Measurer, what: str) -> None:
    """Runs ``jobs`` in turn, filing each run under its cell (or reference) with its round."""
    from tqdm import tqdm

    tqdm.monitor_interval = 0  # no monitor thread: it would outlive the run in this process

    by_cell = {c.cell: c for c in result.cells}
    progress = result.options.progress
    bar = tqdm(jobs, desc=what, unit="run", disable=not progress, file=sys.stderr)
    try:
        for job in bar:
            bar.set_description(f"{what} {job.label:<24}")
            run = {**measurer.run(job.spec), "round": job.round}
            if job.cell is None:
                result.references.setdefault(job.workload, []).append(run)
            else:
                by_cell[job.cell].runs.setdefault(job.loader, []).append(run)
            if run.get("ok"):
                bar.set_postfix_str(f"{run['rate']:,.0f} samples/s")
    finally:
        bar.close()
