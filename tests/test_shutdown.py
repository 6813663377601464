"""Shutdown from outside the loop: Ctrl-C, interpreter exit, file descriptors."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from batchloader import DataLoader
from tests.helpers import RangeDataset, shm_segments

pytestmark = pytest.mark.timeout(90)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

_SCRIPT_PRELUDE = """
import os, sys, time
sys.path.insert(0, {root!r})
from batchloader import DataLoader
from tests.helpers import SlowDataset, RangeDataset
"""


def _python(body: str) -> subprocess.Popen:
    code = _SCRIPT_PRELUDE.format(root=ROOT) + textwrap.dedent(body)
    return subprocess.Popen(
        [sys.executable, "-c", code],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _pids_of_session(sid: int) -> set[int]:
    import psutil

    found = set()
    for proc in psutil.process_iter(["pid"]):
        try:
            if os.getsid(proc.info["pid"]) == sid and proc.status() != psutil.STATUS_ZOMBIE:
                found.add(proc.info["pid"])
        except (ProcessLookupError, psutil.NoSuchProcess, PermissionError):
            pass
    return found


def test_ctrl_c_stops_cleanly_and_workers_print_nothing():
    """SIGINT raises KeyboardInterrupt in the main process only; no worker traceback."""
    before = shm_segments()
    proc = _python(
        """
        import signal
        # As run from a terminal: a shell's background job (`cmd &` without job control)
        # starts with SIGINT ignored, and Python then leaves Ctrl-C ignored too.
        signal.signal(signal.SIGINT, signal.default_int_handler)
        loader = DataLoader(SlowDataset(10_000, delay_s=0.01), batch_size=4, num_workers=2)
        print("started", flush=True)
        try:
            for batch in loader:
                pass
        except KeyboardInterrupt:
            print("interrupted", flush=True)
        """
    )
    assert proc.stdout.readline().strip() == "started"
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert "interrupted" in out
    assert "Traceback" not in err and "KeyboardInterrupt" not in err
    assert _pids_of_session(proc.pid) == set()
    assert shm_segments() - before == set()


def test_interpreter_exit_with_a_live_persistent_pool_leaves_nothing():
    """Exiting with an unclosed persistent loader still stops its workers."""
    before = shm_segments()
    proc = _python(
        """
        loader = DataLoader(RangeDataset(64), batch_size=4, num_workers=2, persistent_workers=True)
        it = iter(loader)
        next(it)
        print(os.getpid(), flush=True)
        """
    )
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    time.sleep(0.5)
    assert _pids_of_session(proc.pid) == set()
    assert shm_segments() - before == set()


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_epochs_do_not_leak_file_descriptors():
    """Ten epochs with fresh workers leave the fd count where it was."""
    loader = DataLoader(RangeDataset(32), batch_size=4, num_workers=2)
    list(loader)
    before = _open_fds()
    for _ in range(10):
        list(loader)
    assert _open_fds() <= before + 2
