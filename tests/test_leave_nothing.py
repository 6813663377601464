"""A killed trainer leaves nothing: no /dev/shm file, no worker process."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time

import psutil
import pytest

from tests.helpers import child_env, shm_segments

# A trainer holding big batches in flight, which prints its worker pids and then waits to be killed.
_TRAINER = textwrap.dedent(
    """
    import os, sys, time
    import psutil, torch
    from batchloader import DataLoader

    class Big:
        def __len__(self):
            return 10_000

        def __getitem__(self, i):
            return torch.full((256, 1024), float(i))  # 1 MiB a sample

    loader = DataLoader(Big(), batch_size=8, num_workers=2, prefetch_factor=4)
    it = iter(loader)
    next(it)
    time.sleep(0.5)  # every worker has batches in flight now
    print(" ".join(str(p.pid) for p in psutil.Process().children()), flush=True)
    time.sleep(60)
    """
)


def _start_trainer() -> tuple[subprocess.Popen[str], list[int]]:
    env = child_env()
    trainer = subprocess.Popen(
        [sys.executable, "-c", _TRAINER], stdout=subprocess.PIPE, text=True, env=env
    )
    line = trainer.stdout.readline()
    assert line, "the trainer printed no worker pids"
    return trainer, [int(pid) for pid in line.split()]


def _wait_until_gone(workers: list[int], before: set[str], deadline_s: float = 5.0) -> tuple:
    deadline = time.monotonic() + deadline_s
    while True:
        alive = [
            pid
            for pid in workers
            if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        ]
        left = shm_segments() - before
        if (not alive and not left) or time.monotonic() > deadline:
            return alive, left
        time.sleep(0.1)


@pytest.mark.parametrize("how", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_killed_trainer_leaves_no_shared_memory_and_no_workers(how):
    before = shm_segments()
    trainer, workers = _start_trainer()
    try:
        assert len(workers) == 2
        assert shm_segments() - before, "the trainer should have batches in /dev/shm while it runs"
        trainer.send_signal(how)
        trainer.wait(10)
        alive, left = _wait_until_gone(workers, before)
    finally:
        trainer.kill()
        trainer.wait()
        trainer.stdout.close()
    assert alive == [] and left == set()
