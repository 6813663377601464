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

The loader kinds: ``ours`` (``batchloader.DataLoader``), ``torch``
(``torch.utils.data.DataLoader``) and ``plain``, the physical reference: the
loop ``collate([ds[i] for i in batch])`` in one process, with torch's
``default_collate`` unless the workload brings its own collate function.
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import workloads
from .checks import Checksum, leaves

__all__ = ["LOADERS", "Spec", "main", "measure", "serve"]

# The first tenth of an epoch is warm-up: workers start and the prefetch window fills.
_WARMUP_FRACTION = 0.1
_MEMCPY_REPEATS = 8


@dataclass(frozen=True, slots=True)
class Spec:
    """What to measure; the runner writes it as JSON on the command line."""

    workload: str
    loader: str  # "ours" | "torch" | "plain"
    size: str = "full"  # a workloads.SIZES level
    num_workers: int = 0
    thread_pool: bool = False
    batch_size: int | None = None  # None: the workload's
    batched: bool = False  # read the workload's batched-fetch (ArrayDataset) form
    latency: bool = True  # with workers, also time first batches (step 1 above)
    memcpy: bool = False  # also measure memcpy bandwidth for one batch's bytes
    scaling: bool = False  # also run the plain loop in two processes at once
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

    @property
    def effective_batch_size(self) -> int:
        return self.batch_size or workloads.WORKLOADS[self.workload].batch_size

    @property
    def samples(self) -> int:
        return workloads.WORKLOADS[self.workload].size(self.size)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> Spec:
        return cls(**json.loads(text))


class PlainLoop:
    """The physical reference: ``collate([ds[i] for i in batch])``, in this process."""

    def __init__(
        self, dataset: Any, collate: Callable[[list[Any]], Any], batch_size: int, sampler: Any
    ):
        self.dataset, self.collate, self.batch_size = dataset, collate, batch_size
        self.sampler = range(len(dataset)) if sampler is None else sampler

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self) -> Iterator[Any]:
        indices = list(self.sampler)
        for start in range(0, len(indices), self.batch_size):
            chunk = indices[start : start + self.batch_size]
            yield self.collate([self.dataset[i] for i in chunk])


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
    import torch.utils.data

    return PlainLoop(
        dataset,
        collate or torch.utils.data.default_collate,
        kwargs["batch_size"],
        kwargs["sampler"],
    )


LOADERS: dict[str, Callable[..., Any]] = {"ours": _ours, "torch": _torch, "plain": _plain}


def _make_loader(
    spec: Spec, dataset: Any, collate: Any, *, sampler: Any = None, persistent: bool = False
) -> Any:
    kwargs: dict[str, Any] = {"batch_size": spec.effective_batch_size, "sampler": sampler}
    if spec.loader != "plain":
        kwargs["num_workers"] = spec.num_workers
    if spec.num_workers > 0:
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


def _epoch(loader: Any, marks: Callable[[int], None] | None = None) -> _Epoch:
    """Iterates one epoch; ``marks(k)`` runs after batch ``k`` arrives, on the benchmark's time."""
    timeline = _Epoch(float("nan"), [], [], [], [], Checksum())
    checking = 0.0
    start = time.perf_counter()
    for batch in loader:
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
    if timeline.arrivals:
        timeline.first_s = timeline.arrivals[0]
    return timeline


def _steady_state(epoch: _Epoch) -> dict[str, float]:
    """Samples/s and main-process CPU per batch after the warm-up batches."""
    batches = len(epoch.arrivals)
    if batches < 2:
        nan = float("nan")
        return {"rate": nan, "rate_with_checks": nan, "cpu_per_batch_s": nan}
    warm = min(batches - 1, max(1, int(batches * _WARMUP_FRACTION)))
    samples = sum(epoch.checksum.sizes[warm:])
    elapsed = epoch.arrivals[-1] - epoch.arrivals[warm - 1]
    wall = epoch.wall[-1] - epoch.wall[warm - 1]
    loader_cpu = (epoch.cpu[-1] - epoch.cpu[warm - 1]) - (
        epoch.check_cpu[-1] - epoch.check_cpu[warm - 1]
    )
    return {
        "rate": samples / elapsed if elapsed > 0 else float("inf"),
        "rate_with_checks": samples / wall if wall > 0 else float("inf"),
        "cpu_per_batch_s": loader_cpu / (batches - warm),
    }


def _first_batches(spec: Spec, dataset: Any, collate: Any) -> dict[str, float]:
    """Time to first batch: cold, second epoch, second epoch with persistent workers."""
    workload = workloads.WORKLOADS[spec.workload]
    subset = range(min(len(dataset), workload.latency_batches * spec.effective_batch_size))
    firsts: dict[bool, list[float]] = {}
    for persistent in (False, True):
        loader = _make_loader(spec, dataset, collate, sampler=subset, persistent=persistent)
        firsts[persistent] = [_epoch(loader).first_s for _ in range(2)]
        _close(loader)
        del loader
        gc.collect()
    return {
        "ttfb_cold_s": firsts[False][0],
        "ttfb_epoch2_s": firsts[False][1],
        "ttfb_persistent_cold_s": firsts[True][0],
        "ttfb_persistent_epoch2_s": firsts[True][1],
    }


def _memcpy_bandwidth(nbytes: int) -> float:
    """Bytes/s of one large copy: the floor under moving a batch between buffers."""
    source = np.ones(nbytes // 4, dtype=np.float32)
    dest = np.zeros_like(source)
    np.copyto(dest, source)  # fault the pages in first
    start = time.perf_counter()
    for _ in range(_MEMCPY_REPEATS):
        np.copyto(dest, source)
    return nbytes * _MEMCPY_REPEATS / (time.perf_counter() - start)


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


def measure(spec: Spec) -> dict[str, Any]:
    """Runs one measurement in this process; returns the result as a JSON-ready dict."""
    cache_dir = Path(spec.cache_dir) if spec.cache_dir else workloads.default_cache_dir()
    dataset = workloads.build_dataset(spec.workload, spec.samples, cache_dir, batched=spec.batched)
    collate = workloads.build_collate(spec.workload)
    result: dict[str, Any] = {"spec": dataclasses.asdict(spec)}
    if spec.latency and spec.num_workers > 0 and spec.loader != "plain":
        result.update(_first_batches(spec, dataset, collate))
    loader = _make_loader(spec, dataset, collate)
    _phase("load")
    epoch = _epoch(loader, _sample_marks(loader))
    _phase("end")
    _close(loader)
    result.update(_steady_state(epoch))
    result.update(
        ttfb_s=epoch.first_s,
        epoch_s=epoch.wall[-1] if epoch.wall else float("nan"),
        batches=len(epoch.arrivals),
        check_cpu_s=epoch.checksum.cpu_s,
        checksum=epoch.checksum.as_dict(),
        load=os.getloadavg()[0],
    )
    if spec.memcpy:
        sample_bytes = sum(np.asarray(leaf).nbytes for leaf in leaves(dataset[0][:-1]))
        result["memcpy_bytes_per_s"] = _memcpy_bandwidth(sample_bytes * spec.effective_batch_size)
    if spec.scaling:
        result["plain_2proc_rate"] = _two_process_rate(dataset, collate, spec.effective_batch_size)
    return result


def _plain_half(dataset: Any, collate: Any, batch_size: int, half: range, out: Any) -> None:
    start = time.perf_counter()
    for _ in PlainLoop(dataset, collate or _default_collate(), batch_size, half):
        pass
    out.send((start, time.perf_counter()))


def _default_collate() -> Callable[[list[Any]], Any]:
    import torch.utils.data

    return torch.utils.data.default_collate


def _two_process_rate(dataset: Any, collate: Any, batch_size: int) -> float:
    """Samples/s of the plain loop run in two processes at once, each on half the data.

    What this machine gives two CPU-bound processes with no loader at all: the
    ceiling for any loader's two-worker speed-up.
    """
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    n = len(dataset)
    halves = (range(n // 2), range(n // 2, n))
    pipes = [ctx.Pipe(duplex=False) for _ in halves]
    procs = [
        ctx.Process(target=_plain_half, args=(dataset, collate, batch_size, half, w))
        for half, (_, w) in zip(halves, pipes, strict=True)
    ]
    for p in procs:
        p.start()
    spans = [r.recv() for r, _ in pipes]
    for p in procs:
        p.join()
    return n / (max(end for _, end in spans) - min(start for start, _ in spans))


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
