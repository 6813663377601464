"""One measurement, made in a fresh process: one loader, one workload, one setting.

Usage::

    python -m batchloader._bench.measure '{"workload": "big", "loader": "ours", "num_workers": 2}'

prints ``#pid <pid>``, ``#phase load`` when the measured epoch starts,
``#phase sample`` at its first and middle batches and ``#phase end`` when it
ends (the runner samples memory at each marker and in between), then one
JSON line with the result (``"ok": false`` and the traceback if it failed).
``--serve`` reads one spec per line from stdin and measures each in a forked
child (see :func:`serve`). The process sets nothing global: the runner
chooses its environment.

What one measurement does, in order:

1. with workers, four short epochs (``latency_batches`` batches each), two with
   ``persistent_workers=False`` and two with ``True``, timing ``iter()`` to the
   first batch: the cold start, a second epoch, a second persistent epoch;
2. one full epoch (``persistent_workers=False``, ``shuffle=False``), timing every
   batch's arrival, the main process's CPU time, and checksumming each batch.

In the auto comparison (``settle``) step 1 is skipped and step 2 becomes: one
persistent loader (``num_workers="auto"`` or a fixed count), warm-up epochs
until its worker count has held for ``_SETTLE_S`` (see :func:`_settled`), then
the measured epoch, whose rate is over all of it, from ``iter()`` on. The consumer sleeps the workload's training step after
checking each batch (``train``): that time is the loop's, and counts.

The loader kinds: ``ours`` (``batchloader.DataLoader``), ``torch``
(``torch.utils.data.DataLoader``) and ``plain``, the physical reference: the
loop ``dataset[i]`` for each index, each field stacked with ``np.stack``, no
loader (:class:`.workloads.PlainLoop`), unless the workload brings its own collate
function; the reference also times torch's ``default_collate`` in the same loop.

``BATCHLOADER_BENCH_SLOWDOWN_S`` (a test hook, not a setting): seconds our
loader's every batch is held before the consumer gets it, a deliberately
slowed build to show that ``bench --check`` fails on a real regression.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import workloads
from .checks import Checksum, leaves

__all__ = ["LOADERS", "SLOWDOWN_ENV", "Spec", "main", "measure", "serve"]

# The first tenth of an epoch is warm-up: workers start and the prefetch window fills.
_WARMUP_FRACTION = 0.1
# Auto comparison: warm-up epochs go on until the worker count has held this long
# (auto's windows are 0.4 s; a settled count holds for several of them) ...
_SETTLE_S = 1.0
# ... but no longer than this, or this many epochs: a count that keeps moving is auto's result.
_SETTLE_MAX_S = 30.0
_SETTLE_MAX_EPOCHS = 10
SLOWDOWN_ENV = "BATCHLOADER_BENCH_SLOWDOWN_S"


@dataclass(frozen=True, slots=True)
class Spec:
    """What to measure; the runner writes it as JSON on the command line."""

    workload: str
    loader: str  # "ours" | "torch" | "plain"
    size: str = "full"  # a workloads.SIZES level
    num_workers: int = 0
    auto: bool = False  # ours with num_workers="auto" (num_workers is ignored)
    thread_pool: bool = False
    batch_size: int | None = None  # None: the workload's
    batched: bool = False  # read the workload's batched-fetch (ArrayDataset) form
    latency: bool = True  # with workers, also time first batches (step 1 above)
    memcpy: bool = False  # also measure memcpy bandwidth for one batch's bytes
    scaling: bool = False  # also run the plain loop in two processes at once
    settle: bool = False  # auto comparison: warm-up epochs of a persistent loader first
    cache_dir: str = ""

    def __post_init__(self) -> None:
        if self.loader not in LOADERS:
            raise ValueError(f"loader must be one of {sorted(LOADERS)}; got {self.loader!r}")
        if self.workload not in workloads.WORKLOADS:
            raise ValueError(
                f"workload must be one of {sorted(workloads.WORKLOADS)}; got {self.workload!r}"
            )
        if self.size not in workloads.SIZES:
            raise ValueError(f"size must be one of {workloads.SIZES}; got {self.size!r}")
        if self.auto and (self.loader != "ours" or not self.settle):
            raise ValueError(
                f"auto=True is our loader's num_workers='auto', measured with settle=True; "
                f"got loader={self.loader!r}, settle={self.settle}"
            )

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size or workloads.WORKLOADS[self.workload].batch_size

    @property
    def samples(self) -> int:
        return workloads.WORKLOADS[self.workload].size(self.size, auto=self.settle)

    @property
    def workers(self) -> int | str:
        return "auto" if self.auto else self.num_workers

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Spec:
        return cls(**json.loads(text))


def _ours(spec: Spec, dataset: Any, collate: Any, **kwargs: Any) -> Any:
    import batchloader

    return batchloader.DataLoader(
        dataset, collate_fn=collate, thread_pool=spec.thread_pool, **kwargs
    )


def _torch(spec: Spec, dataset: Any, collate: Any, **kwargs: Any) -> Any:
    import torch.utils.data

    if spec.thread_pool:
        raise ValueError("torch's DataLoader has no thread workers; thread_pool=True is ours only")
    return torch.utils.data.DataLoader(dataset, collate_fn=collate, **kwargs)


def _plain(_spec: Spec, dataset: Any, collate: Any, **kwargs: Any) -> Any:
    return workloads.PlainLoop(
        dataset, collate or workloads.stack_collate, kwargs["batch_size"], kwargs["sampler"]
    )


LOADERS: dict[str, Callable[..., Any]] = {"ours": _ours, "torch": _torch, "plain": _plain}


def _make_loader(
    spec: Spec, dataset: Any, collate: Any, *, sampler: Any = None, persistent: bool = False
) -> Any:
    # More workers than cores is what the auto comparison asks for; torch's advice (ours
    # repeats it) is noise in the benchmark's output.
    warnings.filterwarnings("ignore", "This DataLoader will create", UserWarning)
    kwargs: dict[str, Any] = {"batch_size": spec.effective_batch_size, "sampler": sampler}
    if spec.loader != "plain":
        kwargs["num_workers"] = spec.workers
    if spec.auto or spec.num_workers > 0:
        kwargs["persistent_workers"] = persistent
        if not spec.thread_pool:
            kwargs["multiprocessing_context"] = "fork"
    return LOADERS[spec.loader](spec, dataset, collate, **kwargs)


def _close(loader: Any) -> None:
    close = getattr(loader, "close", None)
    if callable(close):
        close()


@dataclass(slots=True)
class _Epoch:
    """One epoch's timeline: ``iter()`` at 0, then each batch's arrival.

    ``arrivals`` run on the loader's clock, which stops while the consumer
    checks a batch: checking is the benchmark's work, not the loader's. With
    workers that slightly flatters both loaders when the workers are the
    bottleneck (they keep working meanwhile), by the checking time, about
    1% of a batch there; when the main process is the bottleneck it is exact.
    """

    first_s: float
    arrivals: list[float]  # loader clock at each batch's arrival
    wall: list[float]  # wall clock at the same points, checking included
    cpu: list[float]  # process CPU time after each batch was checked
    check_cpu: list[float]  # cumulative checking CPU at the same points
    checksum: Checksum
    cpu_start: float = 0.0  # process CPU time at iter()


@dataclass(frozen=True, slots=True)
class _Consumer:
    """What the loop does besides checking: a training step, and the slowed-build hook."""

    step_s: float = 0.0  # slept after each batch is checked: the loop's time, counted
    # Slept as the loader hands a batch over, before its arrival is timed: the loader's
    # time (the slowed-build test hook).
    slowdown_s: float = 0.0


def _epoch(
    loader: Any, marks: Callable[[int], None] | None = None, consumer: _Consumer = _Consumer()
) -> _Epoch:
    """Iterates one epoch; ``marks(k)`` runs after batch ``k`` arrives, on the benchmark's time."""
    timeline = _Epoch(float("nan"), [], [], [], [], Checksum(), time.process_time())
    checking = 0.0
    start = time.perf_counter()
    for batch in loader:
        if consumer.slowdown_s:
            time.sleep(consumer.slowdown_s)
        arrived = time.perf_counter()
        timeline.arrivals.append(arrived - start - checking)
        timeline.wall.append(arrived - start)
        if marks is not None:
            marks(len(timeline.arrivals) - 1)
        timeline.checksum.add(batch)
        # The bookkeeping is the benchmark's time too: reading the CPU clock costs
        # about a microsecond, a visible share of a ~40 us batch.
        timeline.cpu.append(time.process_time())
        timeline.check_cpu.append(timeline.checksum.cpu_s)
        checking += time.perf_counter() - arrived
        del batch  # let the loader reuse or free its buffer before the next one
        if consumer.step_s:
            time.sleep(consumer.step_s)
    if timeline.arrivals:
        timeline.first_s = timeline.arrivals[0]
    return timeline


def _steady_state(epoch: _Epoch, *, whole: bool = False) -> dict[str, float]:
    """Samples/s and main-process CPU per batch after the warm-up batches.

    ``whole``: over the whole epoch from ``iter()``, for a warm persistent
    loader (the auto comparison). Leaving out the first batches is then not
    needed, and would flatter many workers: with more batches in flight than
    a tenth of the epoch, the batches after the first ones arrive together.
    """
    batches = len(epoch.arrivals)
    if batches < 2:
        nan = float("nan")
        return {"rate": nan, "rate_with_checks": nan, "cpu_per_batch_s": nan}
    warm = 0 if whole else min(batches - 1, max(1, int(batches * _WARMUP_FRACTION)))

    def since(series: list[float], start: float) -> float:
        return series[-1] - (series[warm - 1] if warm else start)

    samples = sum(epoch.checksum.sizes[warm:])
    elapsed, wall = since(epoch.arrivals, 0.0), since(epoch.wall, 0.0)
    loader_cpu = since(epoch.cpu, epoch.cpu_start) - since(epoch.check_cpu, 0.0)
    return {
        "rate": samples / elapsed if elapsed > 0 else float("inf"),
        "rate_with_checks": samples / wall if wall > 0 else float("inf"),
        "cpu_per_batch_s": loader_cpu / (batches - warm),
    }


def _first_batches(spec: Spec, dataset: Any, collate: Any, consumer: _Consumer) -> dict[str, float]:
    """Time to first batch: cold, second epoch, second epoch with persistent workers."""
    workload = workloads.WORKLOADS[spec.workload]
    subset = range(min(len(dataset), workload.latency_batches * spec.effective_batch_size))
    firsts: dict[bool, list[float]] = {}
    for persistent in (False, True):
        loader = _make_loader(spec, dataset, collate, sampler=subset, persistent=persistent)
        firsts[persistent] = [_epoch(loader, consumer=consumer).first_s for _ in range(2)]
        _close(loader)
        del loader
        gc.collect()
    return {
        "ttfb_cold_s": firsts[False][0],
        "ttfb_epoch2_s": firsts[False][1],
        "ttfb_persistent_cold_s": firsts[True][0],
        "ttfb_persistent_epoch2_s": firsts[True][1],
    }


def _emit(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


def _phase(name: str) -> None:
    _emit(f"#phase {name}")


def _sample_marks(loader: Any) -> Callable[[int], None]:
    """Asks the runner for a memory sample at the first and the middle batch.

    Workers are alive then, and the middle is steady state: every run gets
    those samples, however short, while the periodic ones can stay rare.
    """
    try:
        batches = len(loader)
    except TypeError:  # a loader without a length gets the first-batch sample only
        batches = 0
    at = {0, batches // 2}

    def mark(k: int) -> None:
        if k in at:
            _phase("sample")

    return mark


def _consumer(spec: Spec) -> _Consumer:
    slowdown = float(os.environ.get(SLOWDOWN_ENV) or 0) if spec.loader == "ours" else 0.0
    return _Consumer(workloads.WORKLOADS[spec.workload].step_s, slowdown)


def _jsonable(value: Any) -> Any:
    return value if isinstance(value, bool | int | float | str | type(None)) else str(value)


def _loader_stats(loader: Any) -> dict[str, Any]:
    """Our loader's own report of the epoch just run (``loader.stats``); nothing for others."""
    stats = getattr(loader, "stats", None)
    if stats is None or not hasattr(stats, "as_dict"):
        return {}
    return {
        "stats": {k: _jsonable(v) for k, v in stats.as_dict().items()},
        "decisions": list(stats.decisions),
        "workers_used": int(loader.num_workers),
    }


def _settled(loader: Any, consumer: _Consumer) -> dict[str, Any]:
    """Warm-up epochs of a persistent loader, until its worker count has held ``_SETTLE_S``.

    For ``num_workers="auto"`` this is the settling its first epochs do (it
    keeps what it found for the next epoch); a fixed count gets the same
    warm-up, so both are then measured the same way: started, warm, steady.
    """
    decisions: list[str] = []
    held = spent = 0.0
    epochs = 0
    while epochs < _SETTLE_MAX_EPOCHS and spent < _SETTLE_MAX_S:
        start = time.perf_counter()
        _epoch(loader, consumer=consumer)
        elapsed = time.perf_counter() - start
        epochs, spent = epochs + 1, spent + elapsed
        changes = list(getattr(getattr(loader, "stats", None), "decisions", ()))
        decisions += [f"warm-up epoch {epochs}: {d}" for d in changes]
        held = 0.0 if changes else held + elapsed
        if held >= _SETTLE_S:
            break
    return {"warmup_epochs": epochs, "warmup_s": spent, "warmup_decisions": decisions}


def measure(spec: Spec) -> dict[str, Any]:
    """Runs one measurement in this process; returns the result as a JSON-ready dict."""
    cache_dir = Path(spec.cache_dir) if spec.cache_dir else workloads.default_cache_dir()
    dataset = workloads.build_dataset(spec.workload, spec.samples, cache_dir, batched=spec.batched)
    collate = workloads.build_collate(spec.workload)
    consumer = _consumer(spec)
    result: dict[str, Any] = {"spec": dataclasses.asdict(spec)}
    if spec.latency and spec.num_workers > 0 and spec.loader != "plain" and not spec.settle:
        result.update(_first_batches(spec, dataset, collate, consumer))
    loader = _make_loader(spec, dataset, collate, persistent=spec.settle)
    if spec.settle:
        result.update(_settled(loader, consumer))
    _phase("load")
    epoch = _epoch(loader, _sample_marks(loader), consumer)
    _phase("end")
    result.update(_loader_stats(loader))
    _close(loader)
    result.update(_steady_state(epoch, whole=spec.settle))
    result.update(
        ttfb_s=epoch.first_s,
        epoch_s=epoch.wall[-1] if epoch.wall else float("nan"),
        batches=len(epoch.arrivals),
        check_cpu_s=epoch.checksum.cpu_s,
        checksum=epoch.checksum.as_dict(),
        load=os.getloadavg()[0],
    )
    if spec.loader == "plain":
        result.update(_plain_extras(spec, dataset, collate, consumer))
    return result


def _plain_extras(spec: Spec, dataset: Any, collate: Any, consumer: _Consumer) -> dict[str, Any]:
    """The reference's other figures: torch's collate, memcpy, two processes at once."""
    extras: dict[str, Any] = {}
    if collate is None and not consumer.step_s:
        import torch.utils.data

        batch = spec.effective_batch_size
        loop = workloads.PlainLoop(dataset, torch.utils.data.default_collate, batch, None)
        extras["rate_torch_collate"] = _steady_state(_epoch(loop))["rate"]
    if spec.memcpy:
        sample_bytes = sum(np.asarray(leaf).nbytes for leaf in leaves(dataset[0][:-1]))
        batch_bytes = sample_bytes * spec.effective_batch_size
        extras["memcpy_bytes_per_s"] = workloads.memcpy_bandwidth(batch_bytes)
    if spec.scaling:
        extras["plain_2proc_rate"] = workloads.two_process_rate(
            dataset, collate or workloads.stack_collate, spec.effective_batch_size, _WARMUP_FRACTION
        )
    return extras


def _run_one(text: str) -> int:
    """Measures one JSON spec in this process, printing its pid, phases and result."""
    _emit(f"#pid {os.getpid()}")
    try:
        result = {"ok": True, **measure(Spec.from_json(text))}
    except Exception as e:
        result = {
            "ok": False,
            "error": f"{type(e).__name__}: {e}",
            "traceback": traceback.format_exc(),
        }
    _emit(json.dumps(result))
    return 0 if result["ok"] else 1


def serve() -> int:
    """Forks one fresh process per JSON spec read from stdin, one at a time.

    Importing torch takes seconds; this process does it once, and each
    measurement runs in a child forked before any loader, thread pool or
    OpenMP region exists. After each child ends it prints ``#exit <code>``.
    """
    import torch  # noqa: F401  (imported once here, for every child)

    import batchloader  # noqa: F401

    for line in sys.stdin:
        if not line.strip():
            continue
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = _run_one(line)
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        _emit(f"#exit {os.waitstatus_to_exitcode(status)}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Command-line entry: one JSON spec in, one JSON line out; or ``--serve``."""
    argv = sys.argv[1:] if argv is None else argv
    if argv == ["--serve"]:
        return serve()
    if len(argv) != 1:
        sys.stderr.write("usage: python -m batchloader._bench.measure '<json spec>' | --serve\n")
        return 2
    return _run_one(argv[0])


if __name__ == "__main__":
    sys.exit(main())
