"""Where one benchmark cell's time goes, per batch, in the main process and in a worker.

Runs one measurement (``python -m batchloader._bench.measure``) under py-spy,
sampling every process, and sorts each sample into a step of the worker
protocol by the deepest batchloader (or dataset) frame on its stack:

    main:   dispatch (sending tasks), waiting (polling for results), receive
            (reading and unpickling a result), unpack (handles to tensors),
            reorder and hand-over (the iterator and the epoch's bookkeeping)
    worker: waiting for a task, reading it, reseeding, compute (the dataset's
            __getitem__), collate (stacking into the batch, in shared memory for
            large ones), pack (handles for shared memory), send (pickling and
            writing the result)

Usage (from the repository root, py-spy installed: the ``bench`` extra)::

    python benchmarks/breakdown.py tiny 2          # workload, num_workers
    python benchmarks/breakdown.py big 2 --batch-size 8 --seconds 20

It prints, for the main process and for the workers together, each step's
share of the sampled time and its microseconds per batch (the sampled
seconds spread over the batches the run delivered). py-spy samples wall time with idle stacks left
out (``--idle`` is not passed), so a process's total is roughly its busy time.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import subprocess
import sys
import tempfile

# (step, frame name fragments): the first step whose fragment is on the stack, deepest first.
_MAIN_STEPS = (
    ("dispatch", ("_fill", "submit", "send_task", "encode")),
    ("receive", ("_read", "recv_bytes", "_inline_from_bytes", "loads", "_settle")),
    ("waiting", ("WorkerPool.receive", "_receive", "StreamingIter._get")),
    ("unpack", ("unpack", "_unpack_leaf", "collect")),
    ("statistics and auto", ("EpochRecorder", "tune", "observe")),
    ("reorder and hand-over", ("_next_result", "_pop_ready", "_deliver", "Tracked", "__next__")),
)
_WORKER_STEPS = (
    ("reseed", ("reseed_for_batch",)),
    ("compute", ("__getitem__",)),
    ("collate", ("_collate", "_stack", "default_collate", "collate")),
    ("pack", ("pack", "_pack_tensor", "_pack_array")),
    ("send", ("send", "dumps")),
    ("waiting for a task", ("_serve", "receive", "recv")),
)


def _step(frames: list[str], steps: tuple[tuple[str, tuple[str, ...]], ...]) -> str:
    for frame in reversed(frames):
        name = frame.split(" (")[0]
        for step, fragments in steps:
            if any(fragment in name for fragment in fragments):
                return step
    return "other"


def _py_spy() -> str:
    """py-spy beside this interpreter (a venv's bin), else on PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return beside if os.path.exists(beside) else "py-spy"


def _is_worker(stack: str) -> bool:
    return "serve_process" in stack


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("workload")
    parser.add_argument("num_workers", type=int)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--size", default="full")
    parser.add_argument("--rate", type=int, default=400, help="py-spy samples per second")
    args = parser.parse_args()
    spec = {
        "workload": args.workload,
        "loader": "ours",
        "num_workers": args.num_workers,
        "size": args.size,
        "latency": False,
    }
    if args.batch_size is not None:
        spec["batch_size"] = args.batch_size
    env = {**os.environ, "OMP_WAIT_POLICY": "PASSIVE", "PYTHONPATH": os.getcwd()}
    with tempfile.TemporaryDirectory() as folder:
        raw = os.path.join(folder, "stacks.txt")
        command = [
            _py_spy(), "record", "--subprocesses", "-r", str(args.rate), "-f", "raw", "-o", raw,
            "--", sys.executable, "-m", "batchloader._bench.measure", json.dumps(spec),
        ]  # fmt: skip
        done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
        result = json.loads(next(x for x in reversed(done.stdout.splitlines()) if x[:1] == "{"))
        counts: dict[str, collections.Counter[str]] = {
            "main": collections.Counter(),
            "worker": collections.Counter(),
        }
        with open(raw) as stacks:
            for line in stacks:
                stack, _, n = line.rstrip().rpartition(" ")
                frames = stack.split(";")
                if _is_worker(stack):
                    counts["worker"][_step(frames, _WORKER_STEPS)] += int(n)
                elif "batchloader/_epoch.py" in stack:  # inside next() of the loader
                    counts["main"][_step(frames, _MAIN_STEPS)] += int(n)
                elif "batchloader/_bench/measure.py" in stack:
                    counts["main"]["the consumer (checks)"] += int(n)
    batches = max(1, result["batches"])
    print(
        f"{args.workload} w{args.num_workers}: {result['rate']:,.0f} samples/s, {batches} batches"
    )
    for kind, counter in counts.items():
        total = sum(counter.values())
        if not total:
            continue
        print(f"  {kind}{'s, together' if kind == 'worker' else ''}:")
        for step, n in counter.most_common():
            us = n / args.rate / batches * 1e6  # sampled seconds of this step, per batch
            print(f"    {step:<24} {100 * n / total:5.1f}%  {us:8.1f} us/batch")
    return 0


if __name__ == "__main__":
    sys.exit(main())
