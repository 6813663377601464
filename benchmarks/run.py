"""Runs the benchmark suite from a clone: the same runner as ``python -m batchloader bench``.

    python benchmarks/run.py --quick
    python benchmarks/run.py --workloads big --repeats 3 --json big.json

Takes the options of ``python -m batchloader bench`` (see ``--help``) and
keeps results under ``benchmarks/results/`` (ignored by git) unless told
otherwise: ``latest.json`` and ``latest.png``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(ROOT))  # the checkout's batchloader, installed or not
    from batchloader.__main__ import main as batchloader_main

    if "-h" not in argv and "--help" not in argv:
        RESULTS.mkdir(exist_ok=True)
        if "--json" not in argv:
            argv = [*argv, "--json", str(RESULTS / "latest.json")]
        if "--plot" not in argv:
            argv = [*argv, "--plot", str(RESULTS / "latest.png")]
    return batchloader_main(["bench", *argv])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
