"""Soak: does a loader leave fds, /dev/shm bytes, processes or memory behind, without the GC?

Runs, for batchloader and for torch, each in a fresh process with the cyclic
garbage collector disabled:

* ``cycles``: N times create a loader with 2 workers, take a few batches,
  break, and close it (torch's has no close(): the iterator is dropped);
* ``persistent``: N epochs of one persistent loader, each broken off early;

and prints, after each phase, the open fds, the bytes this process's
loaders hold in /dev/shm, the live child processes and the RSS.

    python benchmarks/soak.py --cycles 200
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys

_PHASES = ("cycles", "persistent")


class Big:
    """1 MiB samples: batches travel through shared memory."""

    def __len__(self) -> int:
        return 64

    def __getitem__(self, i: int):
        import torch

        return torch.full((256, 1024), float(i))


def _state(shm_before: set[str]) -> dict[str, int]:
    import psutil

    me = psutil.Process()
    new = set(os.listdir("/dev/shm")) - shm_before
    return {
        "fds": len(os.listdir("/proc/self/fd")),
        "shm_bytes": sum(_size(name) for name in new),
        "children": len(me.children(recursive=True)),
        "rss_mb": me.memory_info().rss >> 20,
    }


def _size(name: str) -> int:
    try:
        return os.path.getsize(os.path.join("/dev/shm", name))
    except OSError:
        return 0


def _loader_class(which: str):
    if which == "torch":
        from torch.utils.data import DataLoader
    else:
        from batchloader import DataLoader
    return DataLoader


def _measure(which: str, n: int) -> dict[str, dict[str, int]]:
    loader_cls = _loader_class(which)
    shm_before = set(os.listdir("/dev/shm"))
    gc.collect()
    gc.disable()
    report = {"start": _state(shm_before)}
    for _ in range(n):
        loader = loader_cls(Big(), batch_size=8, num_workers=2)
        for i, _batch in enumerate(loader):
            if i == 2:
                break
        getattr(loader, "close", lambda: None)()
        del loader, _batch
    report["cycles"] = _state(shm_before)
    loader = loader_cls(Big(), batch_size=8, num_workers=2, persistent_workers=True)
    for _ in range(n):
        for i, _batch in enumerate(loader):
            if i == 2:
                break
        del _batch
    report["persistent"] = _state(shm_before)
    getattr(loader, "close", lambda: None)()
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=200, help="cycles and epochs per phase")
    parser.add_argument("--child", choices=("batchloader", "torch"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(_measure(args.child, args.cycles)))
        return
    env = dict(os.environ, OMP_WAIT_POLICY="PASSIVE")
    print(
        f"{'loader':<12} {'after':<11} {'fds':>5} {'/dev/shm MB':>12} {'children':>9} {'RSS MB':>7}"
    )
    for which in ("batchloader", "torch"):
        out = subprocess.run(
            [sys.executable, __file__, "--child", which, "--cycles", str(args.cycles)],
            capture_output=True, text=True, env=env, check=True,
        ).stdout  # fmt: skip
        report = json.loads(out.strip().splitlines()[-1])
        for phase in ("start", *_PHASES):
            s = report[phase]
            print(
                f"{which:<12} {phase:<11} {s['fds']:>5} {s['shm_bytes'] / 2**20:>12.1f} "
                f"{s['children']:>9} {s['rss_mb']:>7}"
            )


if __name__ == "__main__":
    main()
