"""Checks the pin-memory stage on a real GPU and prints a small table (not collected by pytest).

Run from the repository root on a machine with CUDA::

    .venv/bin/python tests/gpu_check.py            # a 256 MB batch
    .venv/bin/python tests/gpu_check.py --mb 1024 --repeats 10

It measures host-to-device bandwidth, pageable vs pinned memory, blocking vs
``non_blocking``; then runs the pin-memory thread and ``DevicePrefetcher`` for
real and checks that what arrives on the GPU is what was sent. It exits 0 with
a message when CUDA is absent, and 1 when a check fails.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import torch

from batchloader import device

MB = 1 << 20
"""Bytes per megabyte."""

WARMUP_COPIES = 2
"""Copies before timing: the first pays for CUDA context and allocator setup."""

STAGE_BATCHES = 8
"""Batches pushed through the pin stage and the prefetcher; enough to see overlap."""

MATMUL_SIZE = 4096
"""Side of the square matmul standing in for a training step, sized to take milliseconds."""


def say(line: str = "") -> None:
    """Print one line of the report."""
    print(line, flush=True)


def import_pin_memory() -> ModuleType:
    """Import batchloader._pin_memory from the checkout when it is not installed."""
    try:
        return importlib.import_module("batchloader._pin_memory")
    except ModuleNotFoundError:
        sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
        return importlib.import_module("batchloader._pin_memory")


def timed_copy_s(host: torch.Tensor, *, non_blocking: bool, repeats: int) -> float:
    """Median seconds to copy ``host`` to the GPU, synchronizing after each copy."""
    for _ in range(WARMUP_COPIES):
        host.to("cuda", non_blocking=non_blocking)
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        host.to("cuda", non_blocking=non_blocking)
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return sorted(times)[len(times) // 2]


def bandwidth_table(mb: int, repeats: int) -> None:
    """Print GB/s for pageable and pinned memory, blocking and non_blocking."""
    pageable = torch.randn(mb * MB // 4)
    pinned = pageable.pin_memory()
    say(f"host-to-device copy of {mb} MB (median of {repeats})")
    say(f"{'memory':<10}{'non_blocking':>14}{'ms':>10}{'GB/s':>10}")
    for name, host in (("pageable", pageable), ("pinned", pinned)):
        for non_blocking in (False, True):
            seconds = timed_copy_s(host, non_blocking=non_blocking, repeats=repeats)
            gbps = mb * MB / seconds / 1e9
            say(f"{name:<10}{non_blocking!s:>14}{seconds * 1e3:>10.1f}{gbps:>10.1f}")
    say()


def make_batches(mb: int) -> list[dict[str, torch.Tensor]]:
    """Nested batches whose contents identify them, about ``mb`` MB each."""
    return [
        {"x": torch.full((mb * MB // 4,), float(i)), "y": torch.tensor([i])}
        for i in range(STAGE_BATCHES)
    ]


def check_pin_stage(pm: ModuleType, mb: int) -> list[str]:
    """Run the pin-memory thread for real; return the failures found."""
    failures = []
    pin_fn = pm.make_pin_fn("")
    if pin_fn is None:
        return ["make_pin_fn returned None although CUDA is available"]
    start = time.perf_counter()
    stage = pm.PinMemoryIter(iter(make_batches(mb)), pin_fn, queue_depth=2)
    out = list(stage)
    seconds = time.perf_counter() - start
    if [int(batch["y"]) for batch in out] != list(range(STAGE_BATCHES)):
        failures.append("pin stage changed the order of batches")
    if not all(batch["x"].is_pinned() and batch["y"].is_pinned() for batch in out):
        failures.append("pin stage returned a tensor that is not pinned")
    stage.close()
    if any(t.name.startswith(pm._THREAD_NAME_PREFIX) for t in threading.enumerate()):
        failures.append("a pin-memory thread outlived its iterator")
    say(f"pin stage: {STAGE_BATCHES} x {mb} MB pinned in {seconds * 1e3:.0f} ms")
    return failures


def run_steps(batches: Iterator[dict[str, torch.Tensor]], step: Callable[[], None]) -> list[float]:
    """Consume GPU batches, one fake training step each, never syncing; return each batch's mean."""
    means = []
    for batch in batches:
        step()
        means.append(batch["x"].mean())  # on the GPU: reads the whole copy, without a sync
    torch.cuda.synchronize()
    return [float(mean) for mean in means]


def check_prefetcher(pm: ModuleType, mb: int) -> list[str]:
    """Time a loop with and without DevicePrefetcher; return the failures found."""
    weights = torch.randn(MATMUL_SIZE, MATMUL_SIZE, device="cuda")
    product = torch.empty_like(weights)

    def step() -> None:
        torch.matmul(weights, weights, out=product)

    pinned = [pm.pin_batch(batch) for batch in make_batches(mb)]
    expected = [float(i) for i in range(STAGE_BATCHES)]
    failures = []
    rows = []
    loops: dict[str, Callable[[], Iterator[dict[str, torch.Tensor]]]] = {
        "to_device in loop": lambda: (
            device.to_device(b, "cuda", non_blocking=True) for b in pinned
        ),
        "DevicePrefetcher": lambda: iter(device.DevicePrefetcher(pinned, "cuda")),
    }
    for name, make in loops.items():
        torch.cuda.synchronize()
        start = time.perf_counter()
        means = run_steps(make(), step)
        rows.append((name, time.perf_counter() - start))
        if means != expected:
            failures.append(f"{name}: batches arrived wrong or out of order: {means}")
    say(f"{'loop':<20}{'ms':>10}")
    for name, seconds in rows:
        say(f"{name:<20}{seconds * 1e3:>10.1f}")
    return failures


def main() -> int:
    """Run every check; 0 when all pass or there is no GPU, 1 otherwise."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=256, help="batch size in MB (default 256)")
    parser.add_argument("--repeats", type=int, default=5, help="timed copies per row (default 5)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        say("No CUDA device here: nothing to check. Run this on a machine with a GPU.")
        return 0
    pm = import_pin_memory()
    say(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    say()
    bandwidth_table(args.mb, args.repeats)
    failures = check_pin_stage(pm, args.mb // 4)
    failures += check_prefetcher(pm, args.mb // 4)
    for failure in failures:
        say(f"FAIL: {failure}")
    say("all checks passed" if not failures else f"{len(failures)} check(s) failed")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
