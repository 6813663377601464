"""What a benchmark run found: tables, targets, a JSON document and a plot."""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import platform
import statistics
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from . import workloads
from .runner import BenchOptions, BenchResult, Cell, CellResult, paired_ratio

__all__ = ["Target", "format_report", "from_json", "plot", "targets", "to_json"]

_MB = 1 << 20
# Growth allowed in main-process CPU per batch from batch 8 to the workload's 32:
# a per-sample cost in the main process would make it 4x.
_CPU_GROWTH_LIMIT = 1.5
_PERSISTENT_TTFB_LIMIT_S = 0.010
# A cell whose runs saw other processes use more than this many cores is marked noisy.
_NOISY_CORES = 0.5


@dataclass(frozen=True, slots=True)
class Target:
    """One goal from the issue, and whether this run met it."""

    name: str
    value: float | None
    limit: float
    at_least: bool = True  # True: value >= limit passes; False: value <= limit

    @property
    def status(self) -> str:
        if self.value is None or math.isnan(self.value):
            return "n/a"
        met = self.value >= self.limit if self.at_least else self.value <= self.limit
        return "pass" if met else "FAIL"


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def baseline_ratio(result: BenchResult, cell: CellResult) -> float | None:
    """Ours in this cell over ours with 0 workers on the same workload, round by round."""
    base = result.cell(Cell(cell.cell.workload, 0).name)
    return paired_ratio(cell.runs.get("ours", []), base.runs.get("ours", [])) if base else None


def _cell_ratio(result: BenchResult, name: str) -> float | None:
    cell = result.cell(name)
    return cell.ratio() if cell else None


def _throughput_targets(result: BenchResult, w: int) -> list[Target]:
    cpu, io = result.cell(f"cpu w{w}"), result.cell(f"io threads{result.options.threads}")
    return [
        Target("tiny w0: ours/torch samples/s", _cell_ratio(result, "tiny w0"), 1.2),
        Target(f"tiny w{w}: ours/torch samples/s", _cell_ratio(result, f"tiny w{w}"), 1.2),
        Target("tiny batched w0: ours (ArrayDataset) / torch per-sample", _cell_ratio(result, "tiny batched w0"), 10.0),
        Target(f"cpu w{w}: ours/torch samples/s", _cell_ratio(result, f"cpu w{w}"), 1.0),
        Target(f"cpu w{w}: ours / ours w0", baseline_ratio(result, cpu) if cpu else None, 1.8),
        Target(f"big w{w}: ours/torch samples/s", _cell_ratio(result, f"big w{w}"), 1.3),
        Target(f"io threads{result.options.threads}: ours / ours w0", baseline_ratio(result, io) if io else None, 6.0),
        Target(f"io w{w}: ours/torch samples/s", _cell_ratio(result, f"io w{w}"), 1.0),
        Target(f"jpeg w{w}: ours/torch samples/s", _cell_ratio(result, f"jpeg w{w}"), 1.0),
    ]  # fmt: skip


def _latency_targets(result: BenchResult, w: int) -> list[Target]:
    found = []
    big, small = result.cell(f"big w{w}"), result.cell(f"big bs8 w{w}")
    if big and small:
        growth = _ratio(
            big.median("ours", "cpu_per_batch_s"), small.median("ours", "cpu_per_batch_s")
        )
        found.append(
            Target("big: ours main CPU/batch, bs32 / bs8", growth, _CPU_GROWTH_LIMIT, False)
        )
    for cell in result.cells:
        c = cell.cell
        if c.with_torch and c.num_workers > 0 and not c.thread_pool:
            value = _ratio(cell.median("ours", "ttfb_cold_s"), cell.median("torch", "ttfb_cold_s"))
            found.append(Target(f"{c.name}: first batch, ours/torch time", value, 1.0, False))
    tiny = result.cell(f"tiny w{w}")
    if tiny:
        value = tiny.median("ours", "ttfb_persistent_epoch2_s")
        found.append(
            Target(
                f"tiny w{w}: persistent 2nd-epoch first batch (s)",
                value,
                _PERSISTENT_TTFB_LIMIT_S,
                False,
            )
        )
    return found


def targets(result: BenchResult) -> list[Target]:
    """The issue's targets that this run measured (the rest are left out)."""
    w = result.options.workers[0]
    found = _throughput_targets(result, w) + _latency_targets(result, w)
    return [t for t in found if t.value is not None]


# --- tables ------------------------------------------------------------------------------------


def _num(value: float | None, scale: float = 1.0, digits: int = 0) -> str:
    if value is None or math.isnan(value):
        return "-"
    return f"{value * scale:,.{digits}f}"


def _pair(cell: CellResult, key: str, scale: float, digits: int = 1) -> str:
    ours = _num(cell.median("ours", key), scale, digits)
    if not cell.cell.with_torch:
        return ours
    return f"{ours} / {_num(cell.median('torch', key), scale, digits)}"


def _ratio_text(result: BenchResult, cell: CellResult) -> str:
    if cell.cell.with_torch:
        return _num(cell.ratio(), digits=2)
    base = baseline_ratio(result, cell)
    return f"{_num(base, digits=2)}x w0" if base is not None else "-"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _row(result: BenchResult, cell: CellResult) -> list[str]:
    return [
        cell.cell.name,
        _num(cell.median("ours", "rate")),
        _num(cell.median("torch", "rate")) if cell.cell.with_torch else "-",
        _ratio_text(result, cell),
        _pair(cell, "ttfb_cold_s", 1e3) if cell.cell.num_workers else _pair(cell, "ttfb_s", 1e3),
        _pair(cell, "ttfb_persistent_epoch2_s", 1e3),
        _pair(cell, "cpu_per_batch_s", 1e3, 2),
        _pair(cell, "mem_main_uss", 1 / _MB, 0),
        _pair(cell, "mem_workers_uss", 1 / _MB, 0),
        _check_text(cell),
    ]


def _others(runs: list[dict[str, Any]]) -> list[float]:
    return [r["others_cpu_cores"] for r in runs if r.get("others_cpu_cores") is not None]


def _check_text(cell: CellResult) -> str:
    """'ok', or 'FAILED'; 'noisy' where other processes took a core share from the runs."""
    if cell.problems:
        return "FAILED"
    others = _others([r for runs in cell.runs.values() for r in runs])
    noisy = others and statistics.median(others) > _NOISY_CORES
    return "ok, noisy" if noisy else "ok"


_HEADER = [
    "cell", "ours samples/s", "torch samples/s", "ours/torch", "first batch ms",
    "persistent 2nd epoch ms", "main CPU ms/batch", "main MB", "workers MB", "check",
]  # fmt: skip


def _reference_rows(result: BenchResult) -> list[list[str]]:
    rows = []
    for name in result.options.workloads:
        workload = workloads.WORKLOADS[name]
        memcpy = result.reference(name, "memcpy_bytes_per_s")
        plain, two = result.reference(name), result.reference(name, "plain_2proc_rate")
        rows.append([
            name,
            workload.summary,
            str(workload.batch_size),
            f"{workload.size(result.options.size):,}",
            _num(plain),
            f"{_num(two)} ({two / plain:.2f}x)" if two and plain else "-",
            f"{memcpy / 1e9:.1f} GB/s" if memcpy else "-",
        ])  # fmt: skip
    return rows


def _noise_line(result: BenchResult) -> str:
    runs = [r for c in result.cells for rs in c.runs.values() for r in rs]
    others = _others(runs)
    load = " -> ".join(f"{x:.1f}" for x in result.load)
    line = f"Machine: {os.cpu_count()} CPUs, load average {load} over the run."
    if others:
        line += (
            f" Other processes used a median {statistics.median(others):.2f} cores "
            f"(max {max(others):.2f}) during the measured epochs; 'noisy' marks cells "
            f"where they used more than {_NOISY_CORES}."
        )
    return line


def format_report(result: BenchResult) -> str:
    """The tables printed at the end of a run (Markdown, so docs can paste them)."""
    rows = [_row(result, c) for c in result.cells]
    pairs = "Pairs are ours / torch; medians of "
    parts = [
        _table(_HEADER, rows),
        f"{pairs}{result.options.repeats} alternating runs; ratios are medians of each round's "
        "ratio; MB is peak USS (private memory: shared pages count for nobody).",
        _table(
            ["workload", "what", "batch", "samples", "plain loop samples/s",
             "plain loop, 2 processes", "memcpy"],
            _reference_rows(result),
        ),
        _table(
            ["target", "measured", "limit", ""],
            [[t.name, _num(t.value, digits=3), ("≥ " if t.at_least else "≤ ") + f"{t.limit:g}", t.status] for t in targets(result)],
        ),
    ]  # fmt: skip
    parts.insert(2, _noise_line(result))
    problems = [f"{c.cell.name}: {p}" for c in result.cells for p in c.problems]
    if problems:
        parts.append("Checks FAILED:\n" + "\n".join(f"  {p}" for p in problems))
    return "\n\n".join(parts)


# --- json and plot -----------------------------------------------------------------------------


def _medians(cell: CellResult, loader: str) -> dict[str, float | None]:
    keys = (
        "rate", "ttfb_s", "ttfb_cold_s", "ttfb_epoch2_s", "ttfb_persistent_epoch2_s",
        "cpu_per_batch_s", "mem_main_uss", "mem_main_pss", "mem_workers_uss", "mem_workers_pss",
        "rate_with_checks", "others_cpu_cores",
    )  # fmt: skip
    return {key: cell.median(loader, key) for key in keys}


def _meta(result: BenchResult) -> dict[str, Any]:
    import numpy
    import torch

    import batchloader

    options = {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(result.options).items()}
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "batchloader": batchloader.__version__,
        "options": options,
        "load_average": result.load,
    }


def to_json(result: BenchResult) -> dict[str, Any]:
    """The whole run as one JSON-ready document: every run, medians, ratios, targets."""
    cells = []
    for cell in result.cells:
        loaders = [loader for loader in ("ours", "torch") if cell.runs.get(loader)]
        cells.append({
            "name": cell.cell.name,
            **asdict(cell.cell),
            "median": {loader: _medians(cell, loader) for loader in loaders},
            "ratio": cell.ratio(),
            "ratio_to_ours_w0": baseline_ratio(result, cell),
            "problems": cell.problems,
            "runs": cell.runs,
        })  # fmt: skip
    references = {
        name: {"rate": result.reference(name), "runs": runs}
        for name, runs in result.references.items()
    }
    found = [{**asdict(t), "status": t.status} for t in targets(result)]
    document = {
        "meta": _meta(result),
        "ok": result.ok,
        "cells": cells,
        "references": references,
        "targets": found,
    }
    return _finite(document)


def _finite(value: Any) -> Any:
    """``value`` with NaN and infinities as None: strict JSON readers reject them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def from_json(document: dict[str, Any]) -> BenchResult:
    """Rebuilds a run from :func:`to_json`'s document, to report or plot it again."""
    saved = document["meta"]["options"]
    options = BenchOptions(
        **{**saved, "workloads": tuple(saved["workloads"]), "workers": tuple(saved["workers"]),
           "cache_dir": Path(saved["cache_dir"])}
    )  # fmt: skip
    fields = {f.name for f in dataclasses.fields(Cell)}
    cells = [
        CellResult(Cell(**{k: v for k, v in c.items() if k in fields}), c["runs"], c["problems"])
        for c in document["cells"]
    ]
    references = {name: ref["runs"] for name, ref in document["references"].items()}
    return BenchResult(options, cells, references, document["meta"].get("load_average", []))


def _panel(ax: Any, result: BenchResult, name: str) -> None:
    from matplotlib.ticker import EngFormatter

    cells = [c for c in result.cells if c.cell.workload == name]
    xs = range(len(cells))
    width = 0.38
    series: list[tuple[str, float, str, Callable[[CellResult], float | None]]] = [
        ("ours", -width / 2, "tab:blue", lambda c: c.median("ours", "rate")),
        (
            "torch",
            width / 2,
            "tab:orange",
            lambda c: c.median("torch", "rate") if c.cell.with_torch else None,
        ),
    ]
    for label, offset, color, value in series:
        heights = [value(c) or 0.0 for c in cells]
        ax.bar([x + offset for x in xs], heights, width, label=label, color=color)
    for x, cell in zip(xs, cells, strict=True):
        text = _ratio_text(result, cell)
        top = max(cell.median("ours", "rate") or 0, cell.median("torch", "rate") or 0)
        ax.annotate(text, (x, top), ha="center", va="bottom", fontsize=7)
    reference = result.reference(name)
    if reference:
        ax.axhline(reference, color="gray", linestyle="--", linewidth=1, label="plain loop")
    ax.set_title(f"{name}: {workloads.WORKLOADS[name].summary}", fontsize=8)
    ax.set_xticks(list(xs), [c.cell.name.removeprefix(name + " ") for c in cells], fontsize=7)
    ax.tick_params(axis="y", labelsize=7)
    ax.yaxis.set_major_formatter(EngFormatter(sep=""))  # 200k, 1M: no offset text over the title
    ax.set_ylabel("samples/s", fontsize=7)
    ax.margins(y=0.15)


def plot(result: BenchResult, path: str | os.PathLike[str]) -> None:
    """One panel per workload: median samples/s of each cell, ours beside torch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(dict.fromkeys(c.cell.workload for c in result.cells))
    columns = min(3, len(names))
    rows = math.ceil(len(names) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(4 * columns, 2.8 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names, strict=False):
        _panel(ax, result, name)
    for ax in list(axes.flat)[len(names) :]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize=7)
    fig.suptitle(
        f"batchloader vs torch DataLoader, {os.cpu_count()} CPUs (labels: ours/torch)", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
