"""Nothing outside the loader breaks it: threads, other processes' files, Ctrl-C, the GC."""

from __future__ import annotations

import gc
import os
import secrets
import sys
import threading

import pytest
import torch

from batchloader import DataLoader, _shm
from tests.helpers import RangeDataset, assert_no_leaks, child_pids, shm_segments


class Big(RangeDataset):
    """Samples large enough to travel through shared memory."""

    def __getitem__(self, i):
        return torch.full((64, 1024), float(i))


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def _shm_mappings() -> int:
    with open("/proc/self/maps") as maps:
        return sum("/dev/shm/" in line for line in maps)


def test_closing_releases_fds_and_mappings_without_the_garbage_collector():
    def cycle():
        loader = DataLoader(Big(16), batch_size=4, num_workers=2)
        for i, _ in enumerate(loader):
            if i == 1:
                break
        loader.close()

    cycle()  # one-time costs (imports, the first pool's threads) before counting
    gc.collect()
    gc.disable()
    try:
        fds, mappings = _fds(), _shm_mappings()
        for _ in range(30):
            cycle()
        assert (_fds(), _shm_mappings()) == (fds, mappings)
    finally:
        gc.enable()


def test_workers_outlive_the_thread_that_started_them():
    children, segments = child_pids(), shm_segments()
    with DataLoader(
        RangeDataset(8), batch_size=2, num_workers=2, persistent_workers=True
    ) as loader:
        first = []
        starter = threading.Thread(target=lambda: first.extend(b.tolist() for b in loader))
        starter.start()
        starter.join()
        assert [b.tolist() for b in loader] == first == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert_no_leaks(children, segments)


def test_an_iterator_made_in_one_thread_is_consumed_in_another():
    made = []
    maker = threading.Thread(
        target=lambda: made.append(iter(DataLoader(RangeDataset(6), num_workers=2)))
    )
    maker.start()
    maker.join()
    assert [int(b) for b in made[0]] == list(range(6))


def test_a_squatted_segment_name_is_drawn_again(monkeypatch):
    drawn = iter(["squatted", "squatted", "free"] + [secrets.token_hex(8) for _ in range(100)])
    prefix = _shm.new_prefix()
    squatter = os.path.join("/dev/shm", f"{prefix}-squatted")
    open(squatter, "wb").close()
    ctx = __import__("multiprocessing").get_context("fork")
    names = _shm.Names(ctx, 1)
    try:
        monkeypatch.setattr(_shm.secrets, "token_hex", lambda _nbytes: next(drawn))
        _shm.enable_worker_allocation(prefix, _shm.new_leases(ctx, 1), 0, names)
        handle = _shm.pack(_shm.empty((64, 1024), torch.float32))
        assert handle.name == f"{prefix}-free"
    finally:
        _shm._arena = None
        names.unlink_all()
        os.unlink(squatter) if os.path.exists(squatter) else None


@pytest.mark.skipif(os.geteuid() != 0, reason="planting another user's file needs root")
def test_another_users_file_with_the_loaders_prefix_is_left_alone(monkeypatch):
    planted = []
    real_new_prefix = _shm.new_prefix

    def new_prefix():
        prefix = real_new_prefix()
        path = os.path.join("/dev/shm", f"{prefix}-planted")
        open(path, "wb").close()
        os.chown(path, 65534, 65534)
        planted.append(path)
        return prefix

    monkeypatch.setattr(_shm, "new_prefix", new_prefix)
    try:
        for _ in range(2):  # every epoch ends without an error
            assert len(list(DataLoader(Big(8), batch_size=4, num_workers=2))) == 2
        assert all(os.path.exists(path) for path in planted)
    finally:
        for path in planted:
            os.unlink(path)


def test_freeing_a_batch_runs_no_python_code():
    """So a Ctrl-C can never arrive inside a finalizer and be swallowed there."""
    loader = DataLoader(Big(4), batch_size=2, num_workers=1)
    it = iter(loader)
    batch = next(it)
    assert batch.untyped_storage().nbytes() >= 64 * 1024
    called = []

    def tracer(frame, event, arg):
        if event == "call":
            called.append(frame.f_code.co_name)

    sys.settrace(tracer)
    del batch
    sys.settrace(None)
    assert called == []
    it.close()
