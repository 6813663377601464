"""The memory workload: what a list-of-dicts dataset costs the machine, loader by loader.

``python -m batchloader bench --workloads memory`` loads a dataset that holds
its annotations as a ``list`` of small dicts (COCO-like, 1,000,000 by default)
with torch's ``DataLoader``, with ours (``share_dataset=False``) and with ours
sharing it (``share_dataset=True``), under ``fork`` and ``forkserver``, with 2
and 4 persistent workers, for 3 shuffled epochs. Each cell runs in a newly
started interpreter (``python -m batchloader._bench.memory '<cell json>'``):
in a process forked from one that imported torch, torch's pages would be
shared with that process too, and the sum of PSS over the loader's processes
would grow with every worker for reasons that are not the loader's.

The measured process reads, with psutil (``memory_full_info``: USS and PSS,
never RSS), its own PSS after building the dataset and before building the
loader, and after each epoch every descendant's USS and PSS. A worker is a
descendant that read a sample: its first ``__getitem__`` writes its own USS
to a probe file, the baseline of its growth. Other descendants (the
forkserver, a resource tracker) are helpers, and their PSS counts in the
cost. Each epoch's sample count and category sum are checked. See
docs/memory.md.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import logging
import multiprocessing
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from .processes import measure_env

__all__ = [
    "LOADERS",
    "AnnotationDataset",
    "MemoryCell",
    "MemoryOptions",
    "MemoryResult",
    "main",
    "measure_cell",
    "plan",
    "run_memory",
]

# The loaders, and their names in the tables: "ours+share" is ours with share_dataset=True.
LOADERS = {"torch": "torch", "ours": "ours", "shared": "ours+share"}
_CONTEXTS = ("fork", "forkserver")
_BATCH_SIZE = 512
# size: (annotations, epochs, worker counts, start methods)
_SIZES = {
    "full": (1_000_000, 3, (2, 4), _CONTEXTS),
    "quick": (200_000, 3, (2,), _CONTEXTS),
    "smoke": (2_000, 1, (2,), ("fork",)),
}
# The forkserver reference: the same loader over this many annotations (goal b).
_SMALL_ANNOTATIONS = 1_000
# The first tenth of an epoch is warm-up, as in the speed workloads.
_WARMUP_FRACTION = 0.1
# A cell that runs longer than this is hung: its process group is killed.
_RUN_TIMEOUT_S = 600.0
# What the loader logs at INFO when it converts (batchloader/_worker_memory.py).
_CONVERSION = re.compile(r"^share_dataset: .* shared in (?P<seconds>[0-9.]+) s")
_SHARED_MAPPING = "memfd:batchloader-Shared"


# --- the dataset -------------------------------------------------------------------------------


def _annotations(n: int) -> tuple[list[dict[str, Any]], int]:
    """``n`` COCO-like annotations (about 700 bytes each as Python objects), their category sum."""
    rng = np.random.default_rng(21)
    corners = rng.uniform(0, 600, (n, 2)).round(2)
    sizes = rng.uniform(1, 300, (n, 2)).round(2)
    categories = rng.integers(1, 91, n)
    boxes = np.concatenate([corners, sizes], axis=1).tolist()
    areas = (sizes[:, 0] * sizes[:, 1]).round(2).tolist()
    images = (np.arange(n) // 7 + 1).tolist()  # about seven objects per image
    records = [
        {"id": i + 1, "image_id": image, "category_id": category, "bbox": box, "area": area,
         "iscrowd": 0, "file_name": f"{image:012d}.jpg"}
        for i, (image, category, box, area)
        in enumerate(zip(images, categories.tolist(), boxes, areas, strict=True))
    ]  # fmt: skip
    return records, int(categories.sum())


class AnnotationDataset:
    """A detection dataset that holds its annotations as a ``list`` of dicts.

    ``dataset[i]`` reads one annotation and returns its box as a float32
    tensor and its category: little work per sample, so reading dominates.
    With ``probe_dir``, each process's first ``__getitem__`` writes that
    process's USS and CPU seconds to ``probe_dir/<pid>``.
    """

    def __init__(self, annotations: list[dict[str, Any]], category_sum: int, probe_dir: str = ""):
        self.annotations = annotations
        self.category_sum = category_sum
        self.probe_dir = probe_dir
        self._probed = False

    @classmethod
    def synthetic(cls, n: int, probe_dir: str = "") -> AnnotationDataset:
        return cls(*_annotations(n), probe_dir=probe_dir)

    def __len__(self) -> int:
        return len(self.annotations)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        if not self._probed:
            self._probe()
        record = self.annotations[index]
        return torch.tensor(record["bbox"], dtype=torch.float32), record["category_id"]

    def _probe(self) -> None:
        self._probed = True  # only workers read samples, so this is a worker's first
        if self.probe_dir:
            path = Path(self.probe_dir, str(os.getpid()))
            process = psutil.Process()
            cpu = sum(process.cpu_times()[:2])
            path.with_suffix(".tmp").write_text(f"{process.memory_full_info().uss} {cpu}")
            path.with_suffix(".tmp").rename(path)


# --- one cell, measured in this process --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemoryCell:
    """One loader, start method and worker count over ``annotations`` annotations."""

    loader: str  # a key of LOADERS
    context: str  # "fork" | "forkserver"
    workers: int
    annotations: int
    epochs: int = 3
    batch_size: int = _BATCH_SIZE

    @property
    def name(self) -> str:
        return f"{self.context} w{self.workers} {LOADERS[self.loader]}"


def _make_loader(cell: MemoryCell, dataset: Any) -> Any:
    kwargs: dict[str, Any] = {
        "batch_size": cell.batch_size,
        "shuffle": True,
        "num_workers": cell.workers,
        "persistent_workers": True,
        "multiprocessing_context": cell.context,
    }
    if cell.loader == "torch":
        return torch.utils.data.DataLoader(dataset, **kwargs)
    import batchloader

    return batchloader.DataLoader(dataset, share_dataset=cell.loader == "shared", **kwargs)


def _steady_rate(arrivals: list[float], sizes: list[int]) -> float | None:
    """Samples/s after the warm-up batches (see ``_WARMUP_FRACTION``)."""
    if len(arrivals) < 2:
        return None
    warm = min(len(arrivals) - 1, max(1, int(len(arrivals) * _WARMUP_FRACTION)))
    elapsed = arrivals[-1] - arrivals[warm - 1]
    return sum(sizes[warm:]) / elapsed if elapsed > 0 else None


def _epoch(loader: Any, dataset: AnnotationDataset) -> dict[str, Any]:
    """Iterates one epoch: its timing, and whether every sample came, once."""
    arrivals: list[float] = []
    sizes: list[int] = []
    category_sum = 0
    start, cpu = time.perf_counter(), time.process_time()
    batches = iter(loader)  # with share_dataset=True, the first converts the dataset
    iter_cpu_s = time.process_time() - cpu
    for boxes, categories in batches:
        arrivals.append(time.perf_counter() - start)
        sizes.append(len(categories))
        category_sum += int(categories.sum())
        if boxes.shape != (len(categories), 4) or boxes.dtype != torch.float32:
            raise RuntimeError(f"a batch of boxes has shape {boxes.shape}, dtype {boxes.dtype}")
    return {
        "samples": sum(sizes),
        "first_batch_s": arrivals[0] if arrivals else None,
        "iter_cpu_s": iter_cpu_s,
        "rate": _steady_rate(arrivals, sizes),
        "delivered_ok": sum(sizes) == len(dataset) and category_sum == dataset.category_sum,
    }


def _snapshot(main: psutil.Process, probe_dir: str, pss_before: int) -> dict[str, Any]:
    """Every process's memory now; workers are the descendants that wrote a probe."""
    own = main.memory_full_info()
    workers, helpers_pss = [], 0
    for child in main.children(recursive=True):
        try:
            info, cpu = child.memory_full_info(), sum(child.cpu_times()[:2])
        except psutil.Error:
            continue  # exited between listing and reading
        probe = Path(probe_dir, str(child.pid))
        if probe.exists():
            uss_start, cpu_start = probe.read_text().split()
            workers.append({"pid": child.pid, "uss": info.uss, "pss": info.pss, "cpu_s": cpu,
                            "uss_start": int(uss_start), "cpu_start": float(cpu_start)})  # fmt: skip
        else:
            helpers_pss += info.pss
    growth = [w["uss"] - w["uss_start"] for w in workers]
    total = own.pss + helpers_pss + sum(w["pss"] for w in workers)
    return {
        "main_uss": own.uss,
        "main_pss": own.pss,
        "helpers_pss": helpers_pss,
        "workers": workers,
        "worker_uss_growth_mean": statistics.fmean(growth) if growth else None,
        "worker_uss_growth_max": max(growth, default=None),
        "worker_uss_max": max((w["uss"] for w in workers), default=None),
        "total_pss_cost": total - pss_before,
    }


class _ConversionLog(logging.Handler):
    """Keeps the seconds of each conversion the loader logs."""

    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.seconds: list[float] = []

    def emit(self, record: logging.LogRecord) -> None:
        found = _CONVERSION.match(record.getMessage())
        if found:
            self.seconds.append(float(found["seconds"]))


@contextmanager
def _listening(handler: logging.Handler) -> Iterator[None]:
    logger = logging.getLogger("batchloader")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def _shared_bytes() -> int:
    """Bytes of SharedList/SharedDict memory this process maps: the serialized copy."""
    total = 0
    with open("/proc/self/maps") as maps:
        for line in maps:
            if _SHARED_MAPPING in line:
                start, end = line.split(None, 1)[0].split("-")
                total += int(end, 16) - int(start, 16)
    return total


def _epochs(cell: MemoryCell, dataset: AnnotationDataset, pss_before: int) -> dict[str, Any]:
    """Runs the epochs with one loader; each epoch's figures, and the conversions it logged."""
    main, conversions = psutil.Process(), _ConversionLog()
    with _listening(conversions):
        loader = _make_loader(cell, dataset)
        epochs: list[dict[str, Any]] = []
        cpu: dict[int, float] = {}  # each worker's CPU seconds at the last snapshot
        for _ in range(cell.epochs):
            epoch = {**_epoch(loader, dataset), **_snapshot(main, dataset.probe_dir, pss_before)}
            used = sum(w["cpu_s"] - cpu.get(w["pid"], w["cpu_start"]) for w in epoch["workers"])
            epoch["worker_cpu_us_per_sample"] = used / max(1, epoch["samples"]) * 1e6
            cpu = {w["pid"]: w["cpu_s"] for w in epoch["workers"]}
            epochs.append(epoch)
        shared = _shared_bytes()
        getattr(loader, "close", lambda: None)()
    return {
        "conversions": len(conversions.seconds),
        "conversion_s": max(conversions.seconds, default=None),
        "shared_bytes": shared,
        "epochs": epochs,
    }


def _summary(epochs: list[dict[str, Any]]) -> dict[str, Any]:
    """A run's figures over its epochs, as the goals read them."""

    def over(key: str) -> list[Any]:
        return [e[key] for e in epochs if e[key] is not None]

    starts = [w["uss_start"] for w in epochs[0]["workers"]]
    return {
        "rate": statistics.median(over("rate")) if over("rate") else None,
        "worker_cpu_us_per_sample": statistics.median(over("worker_cpu_us_per_sample")),
        "first_batch_s": epochs[0]["first_batch_s"],
        "iter_cpu_s": epochs[0]["iter_cpu_s"],
        "worker_uss_start": statistics.fmean(starts) if starts else None,
        "worker_uss_growth_max": max(over("worker_uss_growth_max"), default=None),
        "worker_uss_end": epochs[-1]["worker_uss_max"],
        "total_pss_cost_max": max(over("total_pss_cost")),
        "delivered_ok": all(e["delivered_ok"] for e in epochs),
    }


def measure_cell(cell: MemoryCell) -> dict[str, Any]:
    """Builds the dataset, then the loader, and measures each epoch; returns JSON-ready data."""
    if cell.context == "forkserver":
        # As `python train.py` would: the forkserver imports the main module (and torch) once.
        forkserver = multiprocessing.get_context("forkserver")
        forkserver.set_forkserver_preload([AnnotationDataset.__module__])
    main = psutil.Process()
    uss_empty = main.memory_full_info().uss
    with tempfile.TemporaryDirectory(prefix="batchloader-memory-") as probe_dir:
        started = time.perf_counter()
        dataset = AnnotationDataset.synthetic(cell.annotations, probe_dir)
        build_s = time.perf_counter() - started
        gc.collect()
        before = main.memory_full_info()
        measured = _epochs(cell, dataset, before.pss)
    return {
        "cell": dataclasses.asdict(cell),
        "build_s": build_s,
        "dataset_bytes": before.uss - uss_empty,
        "main_pss_before": before.pss,
        **measured,
        **_summary(measured["epochs"]),
        "load": os.getloadavg()[0],
    }


def main(argv: list[str] | None = None) -> int:
    """Measures one cell (its JSON is the only argument) and prints one JSON line."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        sys.stderr.write("usage: python -m batchloader._bench.memory '<cell json>'\n")
        return 2
    spec = json.loads(argv[0])
    try:
        result = {"ok": True, **measure_cell(MemoryCell(**spec))}
    except Exception as e:
        error = f"{type(e).__name__}: {e}"
        result = {"ok": False, "cell": spec, "error": error, "traceback": traceback.format_exc()}
    sys.stdout.write(json.dumps(result) + "\n")
    return 0 if result["ok"] else 1


# --- the plan and the runs ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MemoryOptions:
    """What to run; :meth:`for_size` gives the command line's sizes."""

    annotations: int = 1_000_000
    epochs: int = 3
    workers: tuple[int, ...] = (2, 4)
    contexts: tuple[str, ...] = _CONTEXTS
    loaders: tuple[str, ...] = tuple(LOADERS)
    small: int = _SMALL_ANNOTATIONS  # ours+share's forkserver reference size; 0: none
    repeats: int = 1
    batch_size: int = _BATCH_SIZE
    progress: bool = True

    def __post_init__(self) -> None:
        counts = {"annotations": self.annotations, "epochs": self.epochs, "repeats": self.repeats}
        for name, value in {**counts, "workers": min(self.workers, default=0)}.items():
            if value < 1:
                raise ValueError(f"{name} must be at least 1; got {getattr(self, name)}")
        if not set(self.contexts) <= set(_CONTEXTS) or not set(self.loaders) <= set(LOADERS):
            raise ValueError(
                f"contexts must be among {_CONTEXTS} and loaders among {tuple(LOADERS)}; "
                f"got {self.contexts} and {self.loaders}"
            )

    @classmethod
    def for_size(cls, size: str, workers: tuple[int, ...] | None = None, **kwargs: Any) -> Any:
        if size not in _SIZES:
            raise ValueError(f"size must be one of {sorted(_SIZES)}; got {size!r}")
        annotations, epochs, default_workers, contexts = _SIZES[size]
        return cls(annotations, epochs, workers or default_workers, contexts, **kwargs)

    def cell(self, loader: str, context: str, workers: int, annotations: int = 0) -> MemoryCell:
        n = annotations or self.annotations
        return MemoryCell(loader, context, workers, n, self.epochs, self.batch_size)


def plan(options: MemoryOptions) -> list[MemoryCell]:
    """One round's cells: the loaders alternate within each start method and worker count."""
    cells = []
    for context in options.contexts:
        for w in options.workers:
            cells += [options.cell(loader, context, w) for loader in options.loaders]
            if context == "forkserver" and options.small and "shared" in options.loaders:
                cells.append(options.cell("shared", context, w, options.small))
    return cells


def _run_cell(cell: MemoryCell) -> dict[str, Any]:
    """Measures ``cell`` in a new interpreter, in its own process group."""
    spec = json.dumps(dataclasses.asdict(cell))
    process = subprocess.Popen(
        [sys.executable, "-m", "batchloader._bench.memory", spec],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=measure_env(),
        start_new_session=True,
    )
    try:
        out, err = process.communicate(timeout=_RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        out, err = process.communicate()
    lines = [line for line in out.splitlines() if line.startswith("{")]
    if lines:
        return dict(json.loads(lines[-1]))
    error = f"the measurement printed no result (exit code {process.returncode})"
    return {"ok": False, "cell": dataclasses.asdict(cell), "error": error, "stderr": err[-4000:]}


@dataclass(slots=True)
class MemoryResult:
    """Every run of one memory benchmark, and the load average before and after."""

    options: MemoryOptions
    runs: list[dict[str, Any]]
    load: list[float]

    def runs_of(self, cell: MemoryCell) -> list[dict[str, Any]]:
        wanted = dataclasses.asdict(cell)
        return [r for r in self.runs if r.get("cell") == wanted]

    def problems(self) -> list[str]:
        found = []
        for run in self.runs:
            name = f"{MemoryCell(**run['cell']).name} ({run['cell']['annotations']:,})"
            if not run.get("ok"):
                found.append(f"{name}: {run.get('error')}")
            elif not run["delivered_ok"]:
                found.append(f"{name}: a sample was lost, repeated or wrong")
        return found

    @property
    def ok(self) -> bool:
        return not self.problems()


def run_memory(options: MemoryOptions) -> MemoryResult:
    """Runs every cell of every round, each in a fresh interpreter."""
    from tqdm import tqdm

    tqdm.monitor_interval = 0  # no monitor thread: it would outlive the run in this process

    jobs = plan(options) * options.repeats
    result = MemoryResult(options, [], [os.getloadavg()[0]])
    bar = tqdm(jobs, desc="memory", unit="run", disable=not options.progress, file=sys.stderr)
    for cell in bar:
        bar.set_description(f"{cell.name} {cell.annotations:,}")
        result.runs.append(_run_cell(cell))
    result.load.append(os.getloadavg()[0])
    return result


if __name__ == "__main__":
    # Run under its importable name, so that forkserver workers unpickle the dataset's class.
    from batchloader._bench import memory

    sys.exit(memory.main())
