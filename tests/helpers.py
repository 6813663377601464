"""Datasets and contract checks shared by the loader tests.

Datasets live at module level so that spawn and forkserver workers can
unpickle them.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

import batchloader
from batchloader import _shm


class RangeDataset:
    """``ds[i] == i`` (as an int), ``n`` items."""

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        if not 0 <= i < self.n:
            raise IndexError(i)
        return i


class TensorPairs:
    """``(float tensor filled with i, i)``; ``size`` floats per sample."""

    def __init__(self, n: int, size: int = 4):
        self.n, self.size = n, size

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.full((self.size,), float(i)), i


class FailingDataset(RangeDataset):
    """Raises ``KeyError`` on index ``bad``."""

    def __init__(self, n: int, bad: int):
        super().__init__(n)
        self.bad = bad

    def __getitem__(self, i: int) -> int:
        if i == self.bad:
            raise KeyError(f"sample {i} is corrupt")
        return i


class ExitingDataset(RangeDataset):
    """Ends its worker process on index ``bad``: ``os._exit(code)`` or a signal."""

    def __init__(self, n: int, bad: int, *, code: int = 0, signal: int = 0):
        super().__init__(n)
        self.bad, self.code, self.signal = bad, code, signal

    def __getitem__(self, i: int) -> int:
        if i == self.bad and batchloader.get_worker_info() is not None:
            if self.signal:
                os.kill(os.getpid(), self.signal)
                time.sleep(10)
            os._exit(self.code)
        return i


class SlowDataset(RangeDataset):
    """Sleeps ``delay_s`` in every ``__getitem__``."""

    def __init__(self, n: int, delay_s: float):
        super().__init__(n)
        self.delay_s = delay_s

    def __getitem__(self, i: int) -> int:
        time.sleep(self.delay_s)
        return i


class WorkerInfoDataset(RangeDataset):
    """Returns what our and torch's ``get_worker_info`` say inside the worker.

    Each item takes ``delay_s``, so that every worker gets a share of the work.
    """

    def __init__(self, n: int, delay_s: float = 0.02):
        super().__init__(n)
        self.delay_s = delay_s

    def __getitem__(self, i: int) -> dict[str, Any]:
        time.sleep(self.delay_s)
        ours = batchloader.get_worker_info()
        theirs = torch.utils.data.get_worker_info()
        return {
            "index": i,
            "id": -1 if ours is None else ours.id,
            "num_workers": -1 if ours is None else ours.num_workers,
            "seed": -1 if ours is None else ours.seed % 2**62,
            "same": ours is theirs,
            "pid": os.getpid(),
            "torch_rand": torch.randint(0, 2**62, ()).item(),
            "numpy_rand": int(np.random.randint(0, 2**62)),
        }


class ShardedIterable(torch.utils.data.IterableDataset):
    """Yields ``range(n)``, split between workers by ``get_worker_info``."""

    def __init__(self, n: int, use_torch_info: bool = True):
        self.n = n
        self.use_torch_info = use_torch_info

    def __iter__(self):
        info = (
            torch.utils.data.get_worker_info()
            if self.use_torch_info
            else batchloader.get_worker_info()
        )
        if info is None:
            return iter(range(self.n))
        return iter(range(info.id, self.n, info.num_workers))

    def __len__(self) -> int:
        return self.n


class EndlessBatches(batchloader.BatchDataset):
    """An endless batch dataset that records its epoch hooks."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.calls = []

    @property
    def num_batches(self):
        return None

    def __getitem__(self, i):
        return (np.array([i]),)

    def on_epoch_begin(self):
        self.calls.append("begin")

    def on_epoch_end(self):
        self.calls.append("end")


def shm_segments() -> set[str]:
    """Names of batchloader segments in /dev/shm."""
    return {n for n in os.listdir("/dev/shm") if n.startswith("batchloader-")}


def child_pids() -> set[int]:
    """Live (non-zombie) child processes of this process."""
    alive = set()
    for child in psutil.Process().children(recursive=True):
        try:
            if child.status() != psutil.STATUS_ZOMBIE:
                alive.add(child.pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def worker_threads() -> list[threading.Thread]:
    """Threads the loader started (pool threads, pin-memory threads)."""
    return [
        t
        for t in threading.enumerate()
        if t is not threading.main_thread() and not t.name.startswith(("pytest_timeout", "Dummy"))
    ]


def assert_no_leaks(
    before_children: set[int], before_shm: set[str], *, wait_s: float = 3.0
) -> None:
    """No new child process, shared-memory segment or thread remains.

    A test that caught a loader's exception holds, through its traceback, the
    frames that hold the iterator, in a reference cycle (as any ``except ... as
    error`` does): collect it first, as the end of the caller's scope would.
    """
    gc.collect()
    deadline = time.monotonic() + wait_s
    while True:
        children = child_pids() - before_children
        segments = shm_segments() - before_shm
        threads = [t for t in worker_threads() if t.is_alive()]
        if not children and not segments and not threads:
            return
        if time.monotonic() > deadline:
            raise AssertionError(
                f"leaked: children={children}, segments={segments}, "
                f"threads={[t.name for t in threads]}"
            )
        time.sleep(0.05)


def free_ports(count: int) -> list[int]:
    """Distinct free ports on 127.0.0.1 (held open together, so never the same one twice)."""
    probes = [socket.socket() for _ in range(count)]
    try:
        for probe in probes:
            probe.bind(("127.0.0.1", 0))
        return [probe.getsockname()[1] for probe in probes]
    finally:
        for probe in probes:
            probe.close()


REPO = Path(__file__).resolve().parents[1]


def child_env(drop: Callable[[str], bool] | None = None, **extra: str) -> dict[str, str]:
    """This process's environment for a child Python that imports this checkout.

    ``drop`` removes variables (a launcher's, say) and ``extra`` adds some.
    """
    env = {name: value for name, value in os.environ.items() if drop is None or not drop(name)}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env.update(extra)
    return env


def run_in_own_session(
    command: list[str], env: dict[str, str], timeout_s: float
) -> subprocess.CompletedProcess[str]:
    """Runs ``command``; on timeout kills its whole process group, so no rank is left behind."""
    with subprocess.Popen(
        command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,
    ) as process:  # fmt: skip
        try:
            stdout, stderr = process.communicate(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            stdout, stderr = process.communicate()
            raise AssertionError(
                f"timed out after {timeout_s} s\n{stdout}\n{stderr[-4000:]}"
            ) from None
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


def batches_as_lists(loader: Any) -> list[Any]:
    """Every batch of one epoch, converted to plain Python lists for comparison."""
    return [to_python(batch) for batch in loader]


def to_python(batch: Any) -> Any:
    if isinstance(batch, torch.Tensor):
        return batch.tolist()
    if isinstance(batch, np.ndarray):
        return batch.tolist()
    if isinstance(batch, dict):
        return {k: to_python(v) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return [to_python(v) for v in batch]
    return batch


__all__ = [
    "EndlessBatches",
    "ExitingDataset",
    "FailingDataset",
    "RangeDataset",
    "ShardedIterable",
    "SlowDataset",
    "TensorPairs",
    "WorkerInfoDataset",
    "assert_no_leaks",
    "batches_as_lists",
    "child_env",
    "child_pids",
    "free_ports",
    "run_in_own_session",
    "shm_segments",
    "to_python",
    "worker_threads",
]
_ = _shm
