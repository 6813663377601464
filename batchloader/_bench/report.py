"""What a benchmark run found: tables, targets, a JSON document and a plot.

The targets and the rule that judges them are :mod:`.checks`'s; this module
shows them.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import os
import platform
import statistics
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from . import workloads
from .runner import BenchOptions, BenchResult, Cell, CellResult, paired_ratio
from .targets import Target, auto_side, others, remeasure, targets

__all__ = ["Target", "format_report", "from_json", "plot", "remeasure", "targets", "to_json"]

_MB = 1 << 20
# A cell whose runs saw other processes use more than this many cores is marked noisy.
_NOISY_CORES = 0.5
# Others taking more than this share of the machine: the report says verdicts are blunt.
_BUSY_SHARE = 0.25


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def baseline_ratio(result: BenchResult, cell: CellResult) -> float | None:
    """Ours in this cell over ours with 0 workers on the same workload, round by round."""
    base = result.cell(Cell(cell.cell.workload, 0, settle=cell.cell.settle).name)
    return paired_ratio(cell.runs.get("ours", []), base.runs.get("ours", [])) if base else None


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


def _check_text(cell: CellResult) -> str:
    """'ok', or 'FAILED'; 'noisy' where other processes took a core share from the runs."""
    if cell.problems:
        return "FAILED"
    seen = others([r for runs in cell.runs.values() for r in runs])
    noisy = seen and statistics.median(seen) > _NOISY_CORES
    return "ok, noisy" if noisy else "ok"


_HEADER = [
    "cell", "ours samples/s", "torch samples/s", "ours/torch", "first batch ms",
    "persistent 2nd epoch ms", "main CPU ms/batch", "main MB", "workers MB", "check",
]  # fmt: skip


def _reference_rows(result: BenchResult) -> list[list[str]]:
    rows = []
    for name in dict.fromkeys(c.cell.workload for c in result.cells):
        workload = workloads.WORKLOADS[name]
        memcpy = result.reference(name, "memcpy_bytes_per_s")
        plain, two = result.reference(name), result.reference(name, "plain_2proc_rate")
        rows.append([
            name,
            workload.summary,
            str(workload.batch_size),
            f"{workload.size(result.options.size, auto=result.options.auto):,}",
            _num(plain),
            _num(result.reference(name, "rate_torch_collate")),
            f"{_num(two)} ({two / plain:.2f}x)" if two and plain else "-",
            f"{memcpy / 1e9:.1f} GB/s" if memcpy else "-",
        ])  # fmt: skip
    return rows


def _noise_line(result: BenchResult) -> str:
    seen = others([r for c in result.cells for rs in c.runs.values() for r in rs])
    load = " -> ".join(f"{x:.1f}" for x in result.load)
    line = f"Machine: {result.cpus} CPUs, load average {load} over the run."
    if seen:
        line += (
            f" Other processes used a median {statistics.median(seen):.2f} cores "
            f"(max {max(seen):.2f}) during the measured epochs; 'noisy' marks cells "
            f"where they used more than {_NOISY_CORES}."
        )
        if statistics.median(seen) > _BUSY_SHARE * result.cpus:
            line += (
                " The machine was busy: targets are judged with wide noise (a FAIL is still a "
                "real shortfall); a quieter machine gives sharper verdicts."
            )
    for k, names in enumerate(result.remeasured):
        line += f"\nExtra round {result.options.repeats + k + 1}: {', '.join(names)}."
    return line


def _target_rows(result: BenchResult) -> list[list[str]]:
    return [
        [t.name, _num(t.value, digits=3), t.noise_label, ("≥ " if t.at_least else "≤ ") + f"{t.limit:g}",
         str(len(t.rounds) or "-"), t.status]
        for t in targets(result)
    ]  # fmt: skip


_REFERENCE_HEADER = [
    "workload", "what", "batch", "samples", "plain loop (np.stack) samples/s",
    "same, torch's default_collate", "plain loop, 2 processes", "memcpy",
]  # fmt: skip
_TARGET_HEADER = ["target", "measured", "noise", "limit", "rounds", ""]


def format_report(result: BenchResult) -> str:
    """The tables printed at the end of a run (Markdown, so docs can paste them)."""
    if result.options.auto:
        parts = _auto_tables(result)
    else:
        parts = [
            _table(_HEADER, [_row(result, c) for c in result.cells]),
            f"Pairs are ours / torch; medians of {result.options.repeats} alternating runs; "
            "ratios are medians of each round's ratio; MB is peak USS (private memory: shared "
            "pages count for nobody).",
        ]
    parts += [
        _noise_line(result),
        _table(_REFERENCE_HEADER, _reference_rows(result)),
        _table(_TARGET_HEADER, _target_rows(result)),
        "A target misses 'within noise' when its median misses by less than the noise of its "
        "rounds (docs/performance.md); FAIL is a miss beyond it.",
    ]
    problems = [f"{c.cell.name}: {p}" for c in result.cells for p in c.problems]
    if problems:
        parts.append("Checks FAILED:\n" + "\n".join(f"  {p}" for p in problems))
    return "\n\n".join(parts)


# --- the auto comparison -----------------------------------------------------------------------


def _share(cell: CellResult, key: str) -> str:
    value = cell.median("ours", f"stats.{key}")
    return "-" if value is None else f"{100 * value:.1f}%"


def _workers_text(cell: CellResult) -> str:
    """The fixed count, or the counts auto used in its measured epochs (one per round)."""
    if not cell.cell.auto:
        return str(cell.cell.num_workers)
    used = sorted({r["workers_used"] for r in cell.runs.get("ours", []) if r.get("ok")})
    return "auto: " + ", ".join(map(str, used)) if used else "-"


def _auto_row(cell: CellResult) -> list[str]:
    return [
        cell.cell.setting,
        _num(cell.median("ours", "rate")),
        _num(cell.median("torch", "rate")) if cell.cell.with_torch else "-",
        _num(cell.ratio(), digits=2) if cell.cell.with_torch else "-",
        _workers_text(cell),
        _share(cell, "wait_share"),
        _share(cell, "starved_share"),
        _check_text(cell),
    ]


def _best_text(cell: CellResult | None, loader: str = "ours") -> str:
    return "-" if cell is None else f"{_num(cell.median(loader, 'rate'))} ({cell.cell.setting})"


def _vs_text(top: CellResult | None, bottom: CellResult | None, loader: str = "ours") -> str:
    if top is None or bottom is None:
        return "-"
    return _num(paired_ratio(top.runs.get("ours", []), bottom.runs.get(loader, [])), digits=2)


def _summary_row(result: BenchResult, workload: str) -> list[str]:
    side = auto_side(result, workload)
    autos = (side.auto, side.threads)
    return [
        workload,
        *(_num(c.median("ours", "rate")) if c else "-" for c in autos),
        " / ".join(_workers_text(c).removeprefix("auto: ") if c else "-" for c in autos),
        _best_text(side.best),
        _best_text(side.torch_best, "torch"),
        *(_vs_text(c, side.best) for c in autos),
        _vs_text(side.chosen, side.torch_best, "torch"),
    ]


_AUTO_HEADER = [
    "setting", "ours samples/s", "torch samples/s", "ours/torch", "workers", "waiting",
    "starved", "check",
]  # fmt: skip
_SUMMARY_HEADER = [
    "workload", "auto", "auto threads", "settled on (processes / threads)", "best fixed, ours",
    "torch's best fixed", "auto / best", "auto threads / best", "better auto / torch's best",
]  # fmt: skip


def _auto_tables(result: BenchResult) -> list[str]:
    """A summary across workloads, then each workload's settings (all measured warm)."""
    names = list(dict.fromkeys(c.cell.workload for c in result.cells if c.cell.settle))
    parts = [
        _table(_SUMMARY_HEADER, [_summary_row(result, name) for name in names]),
        f"Samples/s are medians of {result.options.repeats} rounds, each cell measured on an "
        "epoch of a persistent loader after warm-up epochs (auto: until its count held 1 s); "
        "ratios are medians of each round's ratio. 'waiting' and 'starved' are ours' "
        "loader.stats of that epoch: the loop's time in next(), and the part of it with no "
        "batch ready.",
    ]
    for name in names:
        cells = [c for c in result.cells if c.cell.workload == name and c.cell.settle]
        title = f"{name}: {workloads.WORKLOADS[name].summary}"
        parts.append(f"{title}\n\n" + _table(_AUTO_HEADER, [_auto_row(c) for c in cells]))
    return parts


# --- json and plot -----------------------------------------------------------------------------


def _medians(cell: CellResult, loader: str) -> dict[str, float | None]:
    keys = (
        "rate", "ttfb_s", "ttfb_cold_s", "ttfb_epoch2_s", "ttfb_persistent_epoch2_s",
        "cpu_per_batch_s", "mem_main_uss", "mem_main_pss", "mem_workers_uss", "mem_workers_pss",
        "rate_with_checks", "others_cpu_cores", "workers_used", "stats.wait_share",
        "stats.starved_share",
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
        "cpus": result.cpus,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "batchloader": batchloader.__version__,
        "options": options,
        "load_average": result.load,
        "remeasured": result.remeasured,
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
    found = [{**asdict(t), "status": t.status, "noise": t.noise} for t in targets(result)]
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
    meta = document["meta"]
    return BenchResult(
        options, cells, references, meta.get("load_average", []), meta.get("remeasured", []),
        meta.get("cpus") or os.cpu_count() or 1,
    )  # fmt: skip


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
        f"batchloader vs torch DataLoader, {result.cpus} CPUs (labels: ours/torch)", fontsize=9
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
