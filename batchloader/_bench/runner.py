"""Plans the measurements, runs them alternately in fresh processes, checks and summarises.

A *cell* is one workload loaded one way (worker count, worker kind, batch
size). Each round runs every cell once with our loader and then once with
torch's (``ours, torch, ours, torch, ...``), and the physical reference (the
plain loop) once per workload; the summary takes medians over the rounds.

Every measurement runs in a fresh process. By default those processes are
forked from one *measurement server* (``measure --serve``) that imported
torch once, because importing torch costs seconds here and would dominate a
quick run; ``exec_each=True`` starts ``python -m batchloader._bench.measure``
afresh for every measurement instead. Either way the runner samples the
measured process's memory (PSS, so pages shared with workers or the server
are not counted twice) from outside, between its ``#phase`` markers.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil

from . import workloads as wl
from .measure import Spec

__all__ = [
    "BenchOptions",
    "BenchResult",
    "Cell",
    "CellResult",
    "check_run",
    "expected_label_hash",
    "measure_env",
    "plan",
    "run_bench",
]

# A measurement that takes longer than this is hung; its process tree is killed.
_RUN_TIMEOUT_S = 300.0
# How often the memory sampler reads the measured processes' PSS: one read costs
# milliseconds of kernel time on a torch-sized process, so not much more often.
_MEMORY_INTERVAL_S = 0.2
# Two probes differing by more than this (relative) mean different data was delivered.
_PROBE_RTOL = 1e-9
_HASH_MOD = (1 << 61) - 1
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


def _workload_cells(name: str, workers: tuple[int, ...], quick: bool, threads: int) -> list[Cell]:
    """The cells of one workload. Quick runs keep what the targets need."""
    multi = [Cell(name, w) for w in workers]
    match name:
        case "tiny":
            batched = [Cell(name, 0, batched=True)]
            if not quick:
                batched += [Cell(name, w, batched=True) for w in workers]
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


def measure_env() -> dict[str, str]:
    """The measured processes' environment, the same for both loaders.

    ``OMP_WAIT_POLICY=PASSIVE``: an OpenMP thread that finished a parallel
    region sleeps instead of spinning, so it does not steal a core from the
    workers. ``OMP_NUM_THREADS`` is left alone: both loaders already run their
    workers' torch single-threaded, and in the main process the user's default
    is what a user gets (see docs/performance.md for the measurement).
    """
    env = dict(os.environ)
    env["OMP_WAIT_POLICY"] = "PASSIVE"
    package_root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    return env


# --- memory ------------------------------------------------------------------------------------


def _pss_bytes(pid: int) -> int:
    """A process's proportional set size; ``smaps_rollup`` is twice as cheap as psutil's reader."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except FileNotFoundError:
        pass
    return psutil.Process(pid).memory_full_info().pss


class _MemorySampler(threading.Thread):
    """Samples the PSS of a process and of its children while ``active`` is set."""

    def __init__(self) -> None:
        super().__init__(name="bench-memory", daemon=True)
        self.pid: int | None = None
        self.active = threading.Event()
        self.stopped = threading.Event()
        self.peak_main = self.peak_workers = self.start_main = 0

    def run(self) -> None:
        while not self.stopped.wait(_MEMORY_INTERVAL_S):
            if self.active.is_set() and self.pid is not None:
                try:
                    self._sample(self.pid)
                except (psutil.Error, OSError):
                    pass  # a process exited between listing and reading

    def _sample(self, pid: int) -> None:
        main = _pss_bytes(pid)
        workers = sum(_pss_bytes(c.pid) for c in psutil.Process(pid).children(recursive=True))
        self.start_main = self.start_main or main
        self.peak_main = max(self.peak_main, main)
        self.peak_workers = max(self.peak_workers, workers)

    def start_phase(self) -> None:
        if self.pid is not None:
            try:
                self._sample(self.pid)  # at least one sample, however short the phase
            except (psutil.Error, OSError):
                pass
        self.active.set()

    def result(self) -> dict[str, int]:
        self.stopped.set()
        return {
            "mem_main_start": self.start_main,
            "mem_main_peak": self.peak_main,
            "mem_workers_peak": self.peak_workers,
        }


# --- processes ---------------------------------------------------------------------------------


def _kill_tree(pid: int) -> None:
    try:
        process = psutil.Process(pid)
        for child in [*process.children(recursive=True), process]:
            child.kill()
    except psutil.Error:
        pass


def _read_session(lines: Iterator[str], sampler: _MemorySampler) -> dict[str, Any]:
    """Reads one measurement's output up to its result line (or its end)."""
    result: dict[str, Any] = {"ok": False, "error": "the measurement printed no result"}
    for line in lines:
        match line.split():
            case ["#pid", pid]:
                sampler.pid = int(pid)
            case ["#phase", "load"]:
                sampler.start_phase()
            case ["#phase", "end"]:
                sampler.active.clear()
            case ["#exit", code]:
                if not result["ok"]:
                    result["error"] += f" (exit code {code})"
                break
            case _ if line.startswith("{"):
                result = json.loads(line)
                if not isinstance(result, dict):
                    raise RuntimeError(f"[INTERNAL ERROR] measurement printed {line!r}")
    return result


class _Measurer:
    """Runs specs in fresh processes: forked from one server, or exec'd each."""

    def __init__(self, exec_each: bool):
        self._exec_each = exec_each
        self._server: subprocess.Popen[str] | None = None

    def _start(self, args: list[str]) -> subprocess.Popen[str]:
        command = [sys.executable, "-m", "batchloader._bench.measure", *args]
        return subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=measure_env()
        )

    def run(self, spec: Spec) -> dict[str, Any]:
        sampler = _MemorySampler()
        sampler.start()
        if self._exec_each:
            process = self._start([spec.to_json()])
            watchdog = threading.Timer(_RUN_TIMEOUT_S, _kill_tree, (process.pid,))
            watchdog.start()
            result = _read_session(iter(process.stdout.readline, ""), sampler)
            process.wait()
        else:
            server = self._ensure_server()
            server.stdin.write(spec.to_json() + "\n")
            server.stdin.flush()
            watchdog = threading.Timer(_RUN_TIMEOUT_S, lambda: sampler.pid and _kill_tree(sampler.pid))
            watchdog.start()
            result = _read_session(iter(server.stdout.readline, ""), sampler)
        watchdog.cancel()
        return {**result, **sampler.result()}

    def _ensure_server(self) -> subprocess.Popen[str]:
        if self._server is None or self._server.poll() is not None:
            self._server = self._start(["--serve"])
        return self._server

    def close(self) -> None:
        if self._server is not None:
            self._server.stdin.close()
            try:
                self._server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._server.kill()
                self._server.wait()
            self._server = None


# --- checks and summary ------------------------------------------------------------------------


def expected_label_hash(n: int) -> int:
    """The label hash of samples ``0..n-1`` in order: sum of (p + 1) * p over positions p."""
    return ((n - 1) * n * (n + 1) // 3) % _HASH_MOD


def check_run(result: dict[str, Any], count: int, probe: float | None) -> list[str]:
    """What is wrong with what one run delivered; an empty list when nothing is."""
    if not result.get("ok"):
        return [f"failed: {result.get('error', 'unknown error')}"]
    got = result["checksum"]
    problems = []
    if got["count"] != count:
        problems.append(f"delivered {got['count']} samples, expected {count}")
    if got["labels"] != expected_label_hash(count):
        problems.append("samples missing, repeated or out of order (label hash differs)")
    if probe is not None and abs(got["probe"] - probe) > _PROBE_RTOL * max(1.0, abs(probe)):
        problems.append(f"data differs from the reference (probe {got['probe']!r} != {probe!r})")
    return problems


def _median(runs: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in runs if r.get("ok") and r.get(key) is not None]
    return statistics.median(values) if values else None


@dataclass(slots=True)
class CellResult:
    """All runs of one cell, and what the checks found."""

    cell: Cell
    runs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def median(self, loader: str, key: str) -> float | None:
        return _median(self.runs.get(loader, []), key)

    def ratio(self) -> float | None:
        ours, theirs = self.median("ours", "rate"), self.median("torch", "rate")
        return ours / theirs if ours and theirs else None


@dataclass(slots=True)
class BenchResult:
    """Everything one benchmark run measured."""

    options: BenchOptions
    cells: list[CellResult]
    references: dict[str, list[dict[str, Any]]]

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
                cell.problems += [f"{loader} run {k + 1}: {p}" for p in check_run(run, count, probe)]


def run_bench(options: BenchOptions) -> BenchResult:
    """Runs the whole benchmark: prepare, measure alternately, check."""
    from tqdm import tqdm

    cells = plan(options)
    for name in dict.fromkeys(c.workload for c in cells):
        wl.prepare(name, wl.WORKLOADS[name].size(options.size), options.cache_dir)
    result = BenchResult(options, [CellResult(c) for c in cells], {})
    by_cell = {c.cell: c for c in result.cells}
    measurer = _Measurer(options.exec_each)
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
    _check_all(result)
    return result
