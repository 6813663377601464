"""``python -m batchloader``: a short demo, and the benchmark against torch's DataLoader.

Examples::

    python -m batchloader                      # the demo (same as `demo`)
    python -m batchloader bench --quick        # about a minute
    python -m batchloader bench                # the full suite
    python -m batchloader bench --workloads big --repeats 3 --json big.json
    python -m batchloader bench --workloads memory --json memory.json
    python -m batchloader bench --auto --quick # num_workers="auto" against fixed settings
    python -m batchloader bench --quick --check   # exit status 1 on a target missed beyond noise
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["main"]

_DEMO_SAMPLES = 9_600
_DEMO_BATCH = 32
_QUICK_REPEATS = 1
_EXAMPLES = """examples:
  python -m batchloader                                   the demo
  python -m batchloader bench --quick                     about a minute
  python -m batchloader bench --workloads big --repeats 3 one workload, for working on it
  python -m batchloader bench --json run.json --plot run.png
  python -m batchloader bench --workloads memory          memory per worker (10-15 min; --quick ~2)
  python -m batchloader bench --auto --quick              num_workers="auto" against fixed counts
  python -m batchloader bench --quick --check             exit status 1 if a target FAILs
  python -m batchloader bench --from-json run.json        report a saved run again"""


def _demo(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from batchloader import DataLoader
    from batchloader._bench.workloads import CpuDataset

    dataset = CpuDataset(args.samples)
    print(
        f"Loading {len(dataset):,} synthetic samples (~0.5 ms of NumPy each), batch {_DEMO_BATCH}"
    )
    loader: DataLoader[Any]
    for workers in (0, 2):
        context = "fork" if workers else None
        with DataLoader(
            dataset, batch_size=_DEMO_BATCH, num_workers=workers, multiprocessing_context=context
        ) as loader:
            start = time.perf_counter()
            for _ in tqdm(loader, desc=f"num_workers={workers}", unit="batch", leave=False):
                pass
            elapsed = time.perf_counter() - start
        print(f"num_workers={workers}: {len(loader) / elapsed:,.1f} batches/s ({elapsed:.1f} s)")
    print("Next: python -m batchloader bench --quick   (our loader against torch's)")
    return 0


def _csv(kind: type, text: str) -> tuple:
    try:
        return tuple(kind(part) for part in text.split(",") if part)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"expected a comma-separated list; got {text!r}") from e


def _bench(args: argparse.Namespace) -> int:
    from batchloader._bench import report, runner, workloads

    size = "smoke" if args.smoke else "quick" if args.quick else "full"
    if args.workloads and "memory" in args.workloads:
        return _bench_memory(args, size)
    quick = args.quick or args.smoke
    repeats = args.repeats or (_QUICK_REPEATS if quick else 3)
    try:
        options = runner.BenchOptions(
            workloads=args.workloads or (workloads.AUTO_SUITE if args.auto else workloads.SUITE),
            workers=args.workers or runner.default_workers(auto=args.auto, quick=quick),
            repeats=repeats,
            quick=quick,
            size=size,
            threads=args.threads,
            cache_dir=args.cache_dir or workloads.default_cache_dir(),
            exec_each=args.exec_each,
            progress=not args.no_progress,
            auto=args.auto,
        )
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.from_json:
        result = report.from_json(json.loads(Path(args.from_json).read_text()))
    else:
        # Smoke sizes (tests) measure nothing worth a second round.
        result = runner.run_bench(options, None if args.smoke else report.remeasure)
    print(report.format_report(result))
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_json(result), indent=1) + "\n")
        print(f"\nwrote {args.json}")
    if args.plot:
        report.plot(result, args.plot)
        print(f"wrote {args.plot}")
    failed = [t.name for t in report.targets(result) if t.status == "FAIL"]
    if args.check and failed:
        print(f"\n--check: {len(failed)} target(s) FAILED beyond noise", file=sys.stderr)
    return 0 if result.ok and not (args.check and failed) else 1


def _bench_memory(args: argparse.Namespace, size: str) -> int:
    """`bench --workloads memory`: a separate workload, measured in its own processes."""
    from batchloader._bench import memory_report

    try:
        text, ok = memory_report.command(
            args.workloads, size=size, workers=args.workers, repeats=args.repeats,
            progress=not args.no_progress, from_json_path=args.from_json, json_path=args.json,
        )  # fmt: skip
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(text)
    return 0 if ok else 1


_BENCH_OPTIONS: list[tuple[str, dict[str, Any]]] = [
    ("--quick", {"action": "store_true", "help": "smaller datasets, one round (more for targets too close to call), only the cells the targets need (~1-3 min)"}),
    ("--auto", {"action": "store_true", "help": 'num_workers="auto" (processes and threads) against fixed counts of both loaders, per workload (default workloads tiny,cpu,big,io,jpeg,train; fixed 0,1,2,4,8 processes and 4,8,16 threads, --quick 0,1,2,8 and 16)'}),
    ("--check", {"action": "store_true", "help": "exit status 1 also when a target FAILs (misses beyond its measured noise)"}),
    ("--workloads", {"metavar": "LIST", "type": lambda s: _csv(str, s), "help": "comma-separated subset of: tiny,cpu,big,io,jpeg,pad,train (default: all but train; --auto: all but pad); or memory alone (docs/memory.md)"}),
    ("--repeats", {"metavar": "N", "type": int, "help": "rounds of alternating runs; medians over them (default 3, or 1 with --quick)"}),
    ("--workers", {"metavar": "LIST", "type": lambda s: _csv(int, s), "help": "process worker counts to compare, comma-separated (default 2; --auto: the fixed counts besides 0; memory: 2,4)"}),
    ("--threads", {"metavar": "N", "type": int, "default": 8, "help": "thread workers in the io thread-pool cell (default 8)"}),
    ("--json", {"metavar": "PATH", "help": "write every run, the medians and targets as JSON"}),
    ("--plot", {"metavar": "PATH", "help": "draw one panel per workload (PNG, matplotlib)"}),
    ("--cache-dir", {"metavar": "DIR", "type": Path, "help": "where generated JPEGs are kept (default ~/.cache/batchloader-bench)"}),
    ("--exec-each", {"action": "store_true", "help": "a new interpreter per measurement instead of forking one that imported torch once (slower; main-process memory then includes torch's own pages)"}),
    ("--from-json", {"metavar": "PATH", "help": "measure nothing: report (and --plot) a run saved earlier with --json"}),
    ("--no-progress", {"action": "store_true", "help": "no progress bar"}),
    # Hidden: the smallest sizes, so tests run end to end in seconds.
    ("--smoke", {"action": "store_true", "help": argparse.SUPPRESS}),
]  # fmt: skip


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m batchloader",
        description="A demo of batchloader, and a benchmark of it against torch.utils.data.DataLoader.",
        epilog=_EXAMPLES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="{demo,bench}")
    demo = commands.add_parser(
        "demo", help="load a synthetic dataset with 0 and 2 workers (default)"
    )
    demo.add_argument(
        "--samples", type=int, default=_DEMO_SAMPLES, help="samples to load (default %(default)s)"
    )
    demo.set_defaults(run=_demo)
    bench = commands.add_parser(
        "bench",
        help="measure our loader against torch's, alternating runs in fresh processes",
        description="Runs each workload with our loader and torch's in alternating fresh processes "
        "and prints medians, the ratio ours/torch, the plain-loop reference and the targets, "
        "each pass, within noise or FAIL. Exit status 1 means a loader delivered wrong data "
        "(or, with --check, a target FAILed).",
    )
    for flag, kwargs in _BENCH_OPTIONS:
        bench.add_argument(flag, **kwargs)
    bench.set_defaults(run=_bench)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the command line; returns the exit status."""
    parser = _parser()
    args = parser.parse_args(argv)
    if args.command is None:
        args = parser.parse_args(["demo"])
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
