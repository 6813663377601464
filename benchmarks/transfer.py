"""Main-process cost of moving batches from workers, ours against torch's.

Prints, for batches of 1 to 80 MB, the main process's CPU time per batch (all
its threads: the pool's result thread that receives batches counts), and the
per-batch round trip of the pool for a trivial batch. Each cell runs in a fresh
process, loaders alternating, and the median of --repeats runs is shown.

    python benchmarks/transfer.py --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

SIZES_MB = (1, 5, 20, 80)
BATCHES = 40


class Big:
    """Samples of ``floats`` float32 values; a batch is 8 samples."""

    def __init__(self, floats: int):
        self.floats = floats

    def __len__(self) -> int:
        return BATCHES * 8

    def __getitem__(self, i: int):
        import torch

        return torch.full((self.floats,), float(i))


class Tiny:
    def __len__(self) -> int:
        return 4000

    def __getitem__(self, i: int) -> int:
        return i


def _loader(which: str, dataset, batch_size: int):
    if which == "ours":
        from batchloader import DataLoader
    else:
        from torch.utils.data import DataLoader
    return DataLoader(dataset, batch_size=batch_size, num_workers=2, multiprocessing_context="fork")


def measure(which: str, case: str) -> dict:
    """One measurement, run inside a fresh process."""
    import torch

    torch.set_num_threads(1)
    if case == "tiny":
        loader = _loader(which, Tiny(), 1)
        it = iter(loader)
        next(it)
        start = time.perf_counter()
        n = sum(1 for _ in it)
        return {"us_per_batch": (time.perf_counter() - start) / n * 1e6}
    mb = int(case)
    loader = _loader(which, Big(mb * 2**20 // 4 // 8), 8)
    it = iter(loader)
    next(it)
    cpu, wall = time.process_time(), time.perf_counter()
    n = 0
    for batch in it:
        n += 1
        del batch
    return {
        "main_cpu_ms_per_batch": (time.process_time() - cpu) / n * 1e3,
        "wall_ms_per_batch": (time.perf_counter() - wall) / n * 1e3,
    }


def _run(which: str, case: str) -> dict:
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE", OMP_NUM_THREADS="1")
    here = os.path.dirname(os.path.abspath(__file__))
    root = os.path.dirname(here)
    code = (
        f"import sys, json; sys.path[:0] = [{root!r}, {here!r}]; import transfer; "
        f"print(json.dumps(transfer.measure({which!r}, {case!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    opts = parser.parse_args()
    cases = ["tiny", *map(str, SIZES_MB)]
    results: dict[tuple[str, str], list[dict]] = {}
    for _ in range(opts.repeats):
        for case in cases:
            for which in ("ours", "torch"):
                results.setdefault((which, case), []).append(_run(which, case))
    print(f"{'case':>8} {'metric':>22} {'ours':>10} {'torch':>10} {'ours/torch':>10}")
    for case in cases:
        for metric in results[("ours", case)][0]:
            ours = statistics.median(r[metric] for r in results[("ours", case)])
            theirs = statistics.median(r[metric] for r in results[("torch", case)])
            label = "round trip" if case == "tiny" else f"{case} MB"
            print(f"{label:>8} {metric:>22} {ours:10.3f} {theirs:10.3f} {ours / theirs:10.2f}")


if __name__ == "__main__":
    main()
