"""Plans the measurements, runs them alternately in fresh processes, checks and summarises.

A *cell* is one workload loaded one way (worker count, worker kind, batch
size). Each round runs every cell once with our loader and then once with
torch's (``ours, torch, ours, torch, ...``), and the physical reference (the
plain loop) once per workload; the summary takes medians over the rounds.

Every measurement runs in a fresh process (see :mod:`.processes`). Then
every run's delivery is checked: the sample count, an order-sensitive hash of
the labels, and a probe of the data that must match the plain loop's.
"""

from __future__ import annotations

import os
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import workloads as wl
from .checks import check_run
from .measure import Spec
from .processes import Measurer

__all__ = [
    "BenchOptions",
    "BenchResult",
    "Cell",
    "CellResult",
    "paired_ratio",
    "plan",
    "run_bench",
]

_THREADS = 8
_LOADERS = ("ours", "torch")


@dataclass(frozen=True, slots=True)
class Cell:
    """One workload loaded one way; ``batched``: ours reads its ArrayDataset form."""

    workload: str
    num_workers: int = 0
    thread_pool: bool = False
    batch_size: int | None = None
    batched: bool = False
    with_torch: bool = True  # False: torch has no such mode, or it is not a target

    @property
    def name(self) -> str:
        parts = [self.workload]
        if self.batched:
            parts.append("batched")
        if self.batch_size is not None:
            parts.append(f"bs{self.batch_size}")
        parts.append(f"threads{self.num_workers}" if self.thread_pool else f"w{self.num_workers}")
        return " ".join(parts)

    def spec(self, loader: str, options: BenchOptions) -> Spec:
        return Spec(
            workload=self.workload,
            loader=loader,
            size=options.size,
            num_workers=0 if loader == "plain" else self.num_workers,
            thread_pool=self.thread_pool and loader == "ours",
            batch_size=self.batch_size,
            batched=self.batched and loader == "ours",
            memcpy=loader == "plain" and self.workload == "big",
            scaling=loader == "plain" and self.workload == "cpu",
            cache_dir=str(options.cache_dir),
        )


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """What to run; the command line builds it."""

    workloads: tuple[str, ...] = tuple(wl.WORKLOADS)
    workers: tuple[int, ...] = (2,)
    repeats: int = 3
    quick: bool = False
    size: str = "full"
    threads: int = _THREADS
    cache_dir: Path = field(default_factory=wl.default_cache_dir)
    exec_each: bool = False
    progress: bool = True

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


def plan(options: BenchOptions) -> list[Cell]:
    """Every cell to measure, workload by workload."""
    cells: list[Cell] = []
    for name in options.workloads:
        cells += _workload_cells(name, options.workers, options.quick, options.threads)
    return cells


@dataclass(frozen=True, slots=True)
class _Job:
    cell: Cell | None  # None: the workload's physical reference
    workload: str
    loader: str
    spec: Spec

    @property
    def label(self) -> str:
        return f"{self.workload} plain" if self.cell is None else f"{self.cell.name} {self.loader}"


def _jobs(cells: list[Cell], options: BenchOptions) -> list[_Job]:
    """Rounds of ``ours, torch`` per cell, each workload's reference first in its round."""
    jobs: list[_Job] = []
    for _ in range(options.repeats):
        referenced: set[str] = set()
        for cell in cells:
            if cell.workload not in referenced:
                referenced.add(cell.workload)
                spec = Cell(cell.workload).spec("plain", options)
                jobs.append(_Job(None, cell.workload, "plain", spec))
            for loader in _LOADERS if cell.with_torch else ("ours",):
                jobs.append(_Job(cell, cell.workload, loader, cell.spec(loader, options)))
    return jobs


# --- checks and summary ------------------------------------------------------------------------


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get("ok") and r.get(key) is not None]
    return statistics.median(values) if values else None


def paired_ratio(
    numerators: list[dict[str, Any]], denominators: list[dict[str, Any]]
) -> float | None:
    """The median over rounds of one round's rate over the same round's.

    Runs of one round ran back to back, so each ratio compares runs that saw
    about the same background load; the median of those is steadier than the
    ratio of two medians on a shared machine.
    """
    ratios = [
        a["rate"] / b["rate"]
        for a, b in zip(numerators, denominators, strict=False)
        if a.get("ok") and b.get("ok") and a.get("rate") is not None and b.get("rate")
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
    size = result.options.size
    for cell in result.cells:
        count = wl.WORKLOADS[cell.cell.workload].size(size)
        probe = _authority(result, cell.cell)
        for loader, runs in cell.runs.items():
            for k, run in enumerate(runs):
                cell.problems += [
                    f"{loader} run {k + 1}: {p}" for p in check_run(run, count, probe)
                ]


def run_bench(options: BenchOptions) -> BenchResult:
    """Runs the whole benchmark: prepare, measure alternately, check."""
    from tqdm import tqdm

    cells = plan(options)
    for name in dict.fromkeys(c.workload for c in cells):
        wl.prepare(name, wl.WORKLOADS[name].size(options.size), options.cache_dir)
    result = BenchResult(options, [CellResult(c) for c in cells], {}, [os.getloadavg()[0]])
    by_cell = {c.cell: c for c in result.cells}
    measurer = Measurer(options.exec_each)
    jobs = _jobs(cells, options)
    bar = tqdm(jobs, desc="bench", unit="run", disable=not options.progress, file=sys.stderr)
    try:
        for job in bar:
            bar.set_description(f"{job.label:<22}")
            run = measurer.run(job.spec)
            if job.cell is None:
                result.references.setdefault(job.workload, []).append(run)
            else:
                by_cell[job.cell].runs.setdefault(job.loader, []).append(run)
            if run.get("ok"):
                bar.set_postfix_str(f"{run['rate']:,.0f} samples/s")
    finally:
        bar.close()
        measurer.close()
    result.load.append(os.getloadavg()[0])
    _check_all(result)
    return result
