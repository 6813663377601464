"""The targets a benchmark run is judged on, and how.

A target (:class:`Target`: the suite's, :func:`suite_targets`, or the auto
comparison's goals, :func:`auto_targets`) is a figure measured once per round,
mostly a ratio of two runs of the same round; its value is the median over
rounds. :func:`judge` says whether the
rounds meet its limit (``pass``), miss it by less than their noise
(``within noise``) or by more (``FAIL``), and :func:`needs_more_rounds`
whether to measure its cells again before saying so (:func:`remeasure` names
them for the runner). The noise of a median
over rounds is the widest of:

* the rounds' own spread: the half-width of the 95% confidence interval of
  their mean (Student's t times the standard deviation over the square root
  of the number of rounds);
* what other processes could hide: with a share ``s`` of the machine taken
  during the target's runs (``others_cpu_cores`` over the CPUs), the median
  could be off by ``s / (1 - s)`` of itself (what is left is ``1 - s``); a
  steady neighbour does not show in the spread;
* 2% of the median (timers, scheduling, caches: what a quiet machine still varies).
"""

from __future__ import annotations

import enum
import math
import operator
import statistics
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the runner imports this module
    from .runner import BenchResult, CellResult

__all__ = [
    "JUDGE_ROUNDS",
    "MAX_ROUNDS",
    "AutoSide",
    "Target",
    "Verdict",
    "auto_side",
    "auto_targets",
    "by_round",
    "figure",
    "judge",
    "needs_more_rounds",
    "noise",
    "others",
    "remeasure",
    "suite_targets",
    "targets",
]


# --- targets and noise -------------------------------------------------------------------------

# A target may FAIL only when judged on at least this many rounds ...
JUDGE_ROUNDS = 3
# ... and one still within noise is measured again, up to this many rounds in all.
MAX_ROUNDS = 5
# Relative noise assumed however steady the rounds: what a quiet machine still varies.
NOISE_FLOOR = 0.02
# Others' share of the machine is counted up to this (beyond it nothing can be judged).
_MAX_LOAD = 0.9
# A pass closer than this (relative) to its limit is measured again before it is believed.
CLOSE = 0.05
# Student's t at 97.5% by degrees of freedom (rounds - 1): a two-sided 95% interval.
_T_975 = (12.71, 4.30, 3.18, 2.78, 2.57, 2.45, 2.36, 2.31, 2.26, 2.23)
_T_975_LIMIT = 1.96


class Verdict(enum.Enum):
    """What a target's rounds say about its limit."""

    PASS = "pass"
    WITHIN_NOISE = "within noise"  # missed, by less than the rounds' noise
    FAIL = "FAIL"  # missed by more than the noise
    NOT_MEASURED = "n/a"


def noise(rounds: Sequence[float], load: float = 0.0) -> float:
    """The noise of the median of ``rounds``, in its units; ``load``: others' share of the machine.

    The widest of the rounds' 95% interval (Student's t times their standard
    deviation over the square root of their number); what others' share
    could hide (with ``load`` of the machine taken, what is left of it is
    ``1 - load``: the median could be ``1 / (1 - load)`` times itself, that is
    off by ``load / (1 - load)`` of it); and ``NOISE_FLOOR`` of the median.
    """
    middle = abs(statistics.median(rounds))
    spread = 0.0
    if len(rounds) >= 2:
        t = _T_975[len(rounds) - 2] if len(rounds) - 2 < len(_T_975) else _T_975_LIMIT
        spread = t * statistics.stdev(rounds) / math.sqrt(len(rounds))
    taken = min(max(load, 0.0), _MAX_LOAD)
    return max(NOISE_FLOOR * middle, taken / (1 - taken) * middle, spread)


def _miss(rounds: Sequence[float], limit: float, at_least: bool) -> float:
    """How far the median misses ``limit``, in its units (negative: the margin it passes by)."""
    value = statistics.median(rounds)
    return limit - value if at_least else value - limit


def judge(rounds: Sequence[float], limit: float, *, at_least: bool, load: float = 0.0) -> Verdict:
    """``pass`` if the median meets ``limit``; a miss is ``FAIL`` only beyond the noise."""
    if not rounds or any(math.isnan(r) for r in rounds):
        return Verdict.NOT_MEASURED
    miss = _miss(rounds, limit, at_least)
    if miss <= 0:
        return Verdict.PASS
    return Verdict.WITHIN_NOISE if miss <= noise(rounds, load) else Verdict.FAIL


def needs_more_rounds(
    rounds: Sequence[float], limit: float, *, at_least: bool, load: float = 0.0
) -> bool:
    """Whether to measure the target's cells again before its verdict is believed.

    A miss is confirmed on ``JUDGE_ROUNDS`` rounds, and one within noise is
    measured up to ``MAX_ROUNDS``; a pass closer to its limit than the noise
    (or than ``CLOSE`` of the median) gets ``JUDGE_ROUNDS``.
    """
    n = len(rounds)
    if n == 0 or n >= MAX_ROUNDS:
        return False
    match judge(rounds, limit, at_least=at_least, load=load):
        case Verdict.PASS:
            close = max(noise(rounds, load), CLOSE * abs(statistics.median(rounds)))
            return n < JUDGE_ROUNDS and -_miss(rounds, limit, at_least) <= close
        case Verdict.WITHIN_NOISE:
            return True
        case Verdict.FAIL:
            return n < JUDGE_ROUNDS
    return False


# --- the suite's targets and the auto comparison's goals ---------------------------------------

_CPU_GROWTH_LIMIT = 1.5  # main CPU per batch, batch 32 over 8: a per-sample cost would make it 4x
_PERSISTENT_TTFB_LIMIT_S = 0.010
_TTFB_LIMIT = 0.5  # time to first batch with workers, ours over torch (issue 23)
# cpu w2 over w0 against the plain loop's two-process speed-up: 1.8x of 2x on two idle cores.
_SCALING = 0.9
# Issue 22's goals: auto against the best fixed setting, and on io against num_workers=0;
# with a training step slower than loading, the loop starved less than this share.
_AUTO_VS_BEST = 0.95
_AUTO_IO_GAIN = 6.0
STARVED_LIMIT = 0.02


def figure(run: dict[str, Any], key: str) -> Any:
    """``run[key]``; a dotted key reads inside (``stats.starved_share``); None if absent."""
    value: Any = run
    for part in key.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    return value


def by_round(runs: list[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """The successful runs by their round (a run saved without one: its position)."""
    return {run.get("round", k): run for k, run in enumerate(runs) if run.get("ok")}


def others(runs: list[dict[str, Any]]) -> list[float]:
    """The cores other processes used during each run's measured epoch."""
    return [r["others_cpu_cores"] for r in runs if r.get("others_cpu_cores") is not None]


@dataclass(frozen=True, slots=True)
class Target:
    """One goal, its figure in each round, and whether the rounds meet it.

    ``rounds`` empty: one figure with no spread (``value``), met or not.
    ``cells`` and ``references`` are what to measure again to judge it better.
    """

    name: str
    value: float | None
    limit: float
    at_least: bool = True  # True: value >= limit passes; False: value <= limit
    rounds: tuple[float, ...] = ()
    load: float = 0.0  # the share of the machine other processes took during its runs
    cells: tuple[str, ...] = ()
    references: tuple[str, ...] = ()

    @property
    def verdict(self) -> Verdict:
        if self.rounds:
            return judge(self.rounds, self.limit, at_least=self.at_least, load=self.load)
        if self.value is None or math.isnan(self.value):
            return Verdict.NOT_MEASURED
        met = self.value >= self.limit if self.at_least else self.value <= self.limit
        return Verdict.PASS if met else Verdict.FAIL

    @property
    def status(self) -> str:
        return self.verdict.value

    @property
    def noise(self) -> float | None:
        """The noise of ``value``, in its units (see :func:`noise`); None without rounds."""
        return noise(self.rounds, self.load) if self.rounds else None

    @property
    def noise_label(self) -> str:
        """The noise as a report prints it: ``±4%`` of the value, or ``-`` without rounds."""
        if self.noise is None or self.value is None:
            return "-"
        return f"±{100 * self.noise / abs(self.value):.0f}%" if self.value else f"±{self.noise:.3g}"

    @property
    def wants_more(self) -> bool:
        return needs_more_rounds(self.rounds, self.limit, at_least=self.at_least, load=self.load)


# --- targets -----------------------------------------------------------------------------------

# Where a figure comes from: (cell name, loader, key), or (workload, "plain", key).
Source = tuple[str, str, str]


def _runs(result: BenchResult, where: str, loader: str) -> list[dict[str, Any]]:
    if loader == "plain":
        return result.references.get(where, [])
    cell = result.cell(where)
    return cell.runs.get(loader, []) if cell else []


def _per_round(
    lists: Sequence[list[dict[str, Any]]], keys: Sequence[str], combine: Callable[..., float]
) -> list[float]:
    """``combine`` of each source's figure, for every round that all sources measured."""
    rounds = [by_round(runs) for runs in lists]
    common = set.intersection(*(set(r) for r in rounds)) if rounds else set()
    values = []
    for k in sorted(common):
        args = [figure(r[k], key) for r, key in zip(rounds, keys, strict=True)]
        if all(isinstance(a, int | float) and math.isfinite(a) for a in args):
            try:
                values.append(float(combine(*args)))
            except ZeroDivisionError:
                continue
    return values


def _target(
    result: BenchResult, name: str, limit: float, sources: Sequence[Source],
    combine: Callable[..., float] = operator.truediv, *, at_least: bool = True,
) -> Target:  # fmt: skip
    lists = [_runs(result, where, loader) for where, loader, _ in sources]
    rounds = _per_round(lists, [key for *_, key in sources], combine)
    seen = others([run for runs in lists for run in runs])
    return Target(
        name, statistics.median(rounds) if rounds else None, limit, at_least, tuple(rounds),
        statistics.median(seen) / result.cpus if seen else 0.0,
        tuple(dict.fromkeys(w for w, loader, _ in sources if loader != "plain")),
        tuple(dict.fromkeys(w for w, loader, _ in sources if loader == "plain")),
    )  # fmt: skip


def _vs(result: BenchResult, name: str, limit: float, top: Source, bottom: Source) -> Target:
    return _target(result, name, limit, [top, bottom])


def _throughput_targets(result: BenchResult, w: int) -> list[Target]:
    def torch(cell: str, limit: float, what: str = "ours/torch samples/s") -> Target:
        return _vs(result, f"{cell}: {what}", limit, (cell, "ours", "rate"), (cell, "torch", "rate"))  # fmt: skip

    def ours(cell: str, base: str, limit: float) -> Target:
        name = f"{cell}: ours / ours {base.split()[-1]}"
        return _vs(result, name, limit, (cell, "ours", "rate"), (base, "ours", "rate"))

    def plain(cell: str, limit: float, key: str = "rate", what: str = "plain loop") -> Target:
        workload = cell.split()[0]
        name = f"{cell}: ours / {what}"
        return _vs(result, name, limit, (cell, "ours", "rate"), (workload, "plain", key))

    def two_cores(workload: str, limit: float) -> Target:
        return plain(f"{workload} w2", limit, "plain_2proc_rate", "plain loop in 2 processes")

    return [
        torch("tiny w0", 1.2), torch(f"tiny w{w}", 1.2),
        torch("tiny batched w0", 10.0, "ours (ArrayDataset) / torch per-sample"),
        torch(f"cpu w{w}", 1.0), _scaling(result), torch(f"big w{w}", 1.3),
        ours(f"io threads{result.options.threads}", "io w0", 6.0), torch(f"io w{w}", 1.0),
        torch(f"jpeg w{w}", 1.0),
        # Issue 23: against the plain loop measured in the same run.
        plain("tiny w0", 0.9), ours("tiny w2", "tiny w0", 1.0),
        two_cores("big", 0.75), two_cores("jpeg", 0.9), two_cores("cpu", 0.95),
    ]  # fmt: skip


def _scaling(result: BenchResult) -> Target:
    """cpu w2's speed-up over w0, as a share of what the machine gives two plain loops."""
    name = "cpu w2: ours' speed-up over w0 / the plain loop's in 2 processes"
    sources = [("cpu w2", "ours", "rate"), ("cpu w0", "ours", "rate"),
               ("cpu", "plain", "plain_2proc_rate"), ("cpu", "plain", "rate")]  # fmt: skip
    return _target(result, name, _SCALING, sources, lambda a, b, c, d: (a / b) / (c / d))


def _latency_targets(result: BenchResult, w: int) -> list[Target]:
    cpu = "cpu_per_batch_s"
    found = [
        _target(result, "big: ours main CPU/batch, bs32 / bs8", _CPU_GROWTH_LIMIT,
                [(f"big w{w}", "ours", cpu), (f"big bs8 w{w}", "ours", cpu)], at_least=False),
    ]  # fmt: skip
    for cell in result.cells:
        c = cell.cell
        if c.with_torch and c.num_workers > 0 and not c.thread_pool and not c.settle:
            sources = [(c.name, "ours", "ttfb_cold_s"), (c.name, "torch", "ttfb_cold_s")]
            name = f"{c.name}: first batch, ours/torch time"
            found.append(_target(result, name, _TTFB_LIMIT, sources, at_least=False))
    name = f"tiny w{w}: persistent 2nd-epoch first batch (s)"
    source = (f"tiny w{w}", "ours", "ttfb_persistent_epoch2_s")
    found.append(_target(result, name, _PERSISTENT_TTFB_LIMIT_S, [source], float, at_least=False))
    return found


def suite_targets(result: BenchResult) -> list[Target]:
    """The suite's targets (docs/performance.md) that this run measured."""
    w = result.options.workers[0]
    return _throughput_targets(result, w) + _latency_targets(result, w)


@dataclass(frozen=True, slots=True)
class AutoSide:
    """One workload of the auto comparison: its cells, the best fixed ones, auto's."""

    fixed: list[CellResult]  # ours with a fixed count, processes and threads
    best: CellResult | None  # the fastest of those (median samples/s)
    torch_best: CellResult | None  # torch's fastest
    auto: CellResult | None
    threads: CellResult | None  # auto with thread_pool=True
    chosen: CellResult | None  # the faster of the two autos


def auto_side(result: BenchResult, workload: str) -> AutoSide:
    cells = [c for c in result.cells if c.cell.workload == workload and c.cell.settle]
    fixed = [c for c in cells if not c.cell.auto]

    def fastest(among: list[CellResult], loader: str = "ours") -> CellResult | None:
        measured = [c for c in among if c.median(loader, "rate") is not None]
        return max(measured, key=lambda c: c.median(loader, "rate") or 0.0, default=None)

    auto = next((c for c in cells if c.cell.auto and not c.cell.thread_pool), None)
    threads = next((c for c in cells if c.cell.auto and c.cell.thread_pool), None)
    autos = [c for c in (auto, threads) if c is not None]
    return AutoSide(
        fixed, fastest(fixed), fastest([c for c in fixed if c.cell.with_torch], "torch"),
        auto, threads, fastest(autos),
    )  # fmt: skip


def _fewest_fed(side: AutoSide) -> CellResult | None:
    """The fixed process cell with the fewest workers whose loop starved < 2% (loader.stats)."""

    def fed(cell: CellResult) -> bool:
        starved = cell.median("ours", "stats.starved_share")
        return not cell.cell.thread_pool and starved is not None and starved < STARVED_LIMIT

    return min(filter(fed, side.fixed), key=lambda c: c.cell.num_workers, default=None)


def _faster(
    result: BenchResult, name: str, limit: float, top: CellResult, bottom: CellResult,
    loader: str = "ours",
) -> Target:  # fmt: skip
    return _vs(result, name, limit, (top.cell.name, "ours", "rate"), (bottom.cell.name, loader, "rate"))  # fmt: skip


def auto_targets(result: BenchResult) -> list[Target]:
    """Issue 22's goals, per workload of the auto comparison."""
    found = []
    for workload in dict.fromkeys(c.cell.workload for c in result.cells if c.cell.auto):
        side = auto_side(result, workload)
        chosen, best, torch_best = side.chosen, side.best, side.torch_best
        if chosen and best:
            name = f"{workload}: {chosen.cell.setting} / best fixed ({best.cell.setting}) samples/s"
            found.append(_faster(result, name, _AUTO_VS_BEST, chosen, best))
        if chosen and torch_best:
            name = f"{workload}: {chosen.cell.setting} / torch's best ({torch_best.cell.setting})"
            found.append(_faster(result, name, 1.0, chosen, torch_best, "torch"))
        base = next((c for c in side.fixed if c.cell.setting == "w0"), None)
        if workload == "io" and base is not None:
            for auto in (c for c in (side.auto, side.threads) if c is not None):
                name = f"io: {auto.cell.setting} / ours w0"
                found.append(_faster(result, name, _AUTO_IO_GAIN, auto, base))
        if workload == "train" and side.auto:
            found += _train_targets(result, side.auto, _fewest_fed(side))
    return found


def _train_targets(result: BenchResult, auto: CellResult, fed: CellResult | None) -> list[Target]:
    """A step slower than loading: auto keeps the loop fed, with no more workers than needed."""
    name = auto.cell.name
    starved = "train: auto's starved share (loader.stats)"
    source = (name, "ours", "stats.starved_share")
    found = [_target(result, starved, STARVED_LIMIT, [source], float, at_least=False)]
    if fed is not None:
        title = (
            f"train: auto's workers, at most the fewest fixed starving < 2% ({fed.cell.setting})"
        )
        limit = float(fed.cell.num_workers)
        source = (name, "ours", "workers_used")
        found.append(_target(result, title, limit, [source], float, at_least=False))
    return found


def targets(result: BenchResult) -> list[Target]:
    """The targets (or the auto comparison's goals) that this run measured."""
    found = auto_targets(result) if result.options.auto else suite_targets(result)
    return [t for t in found if t.value is not None]


def remeasure(result: BenchResult) -> tuple[set[str], set[str]]:
    """What to measure again: the cells and references of the targets too close to call."""
    cells: set[str] = set()
    references: set[str] = set()
    for target in targets(result):
        if target.wants_more:
            cells.update(target.cells)
            references.update(target.references)
    return cells, references
