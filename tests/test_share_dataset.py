"""``DataLoader(share_dataset=True)``: workers read one shared copy of a dataset's large containers.

The size limits are lowered for these tests (``_sharing.MIN_ITEMS``), so that
a dataset of a few hundred annotations counts as large.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import warnings

import pytest
import torch

from batchloader import DataLoader, SharedList, _sharing
from tests.helpers import child_env, child_pids, shm_segments


class Annotations(torch.utils.data.Dataset):
    """A detection dataset's annotations: a list of small dicts, read per sample."""

    def __init__(self, n: int):
        self.items = [
            {"id": i, "box": [i * 0.5, i + 1.25, 2.0, 3.0], "category": i % 7, "name": f"im{i}"}
            for i in range(n)
        ]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int):
        item = self.items[i]
        return torch.tensor(item["box"]) + torch.rand(4), item["category"], item["name"]


class WhatWorkersHold(Annotations):
    def __getitem__(self, i: int):
        return type(self.items).__name__


@pytest.fixture(autouse=True)
def small_limits(monkeypatch):
    """100 items make a container large."""
    monkeypatch.setattr(_sharing, "MIN_ITEMS", 100)


def _epoch(loader):
    return [(b[0].tolist(), b[1].tolist(), b[2]) for b in loader]


@pytest.mark.parametrize("context", ["fork", "spawn", "forkserver"])
def test_batches_are_the_same_with_and_without_share_dataset(context):
    """Option on and off give bit-identical batches, random augmentation included."""
    dataset = Annotations(300)
    options = {
        "batch_size": 32,
        "shuffle": True,
        "num_workers": 2,
        "multiprocessing_context": context,
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the warning for the unshared run
        plain = _epoch(DataLoader(dataset, generator=torch.Generator().manual_seed(3), **options))
    shared = _epoch(
        DataLoader(
            dataset, generator=torch.Generator().manual_seed(3), share_dataset=True, **options
        )
    )
    assert shared == plain


def test_share_dataset_with_no_workers_changes_nothing():
    """num_workers=0 reads the user's own dataset: nothing to share, nothing converted."""
    dataset = Annotations(200)
    loader = DataLoader(dataset, batch_size=50, num_workers=0, share_dataset=True)
    torch.manual_seed(0)
    first = _epoch(loader)
    torch.manual_seed(0)
    assert _epoch(DataLoader(dataset, batch_size=50)) == first


def test_workers_read_the_shared_copy():
    """In the workers the dataset's list is a SharedList; the user's stays a list."""
    dataset = WhatWorkersHold(200)
    loader = DataLoader(dataset, batch_size=None, num_workers=2, share_dataset=True)
    assert set(loader) == {"SharedList"}
    assert type(dataset.items) is list


def test_the_dataset_is_converted_once_per_loader(monkeypatch):
    """Epochs after the first, persistent or not, reuse the same shared copy."""
    calls = []
    convert = _sharing.share_dataset

    def counting(*args, **kwargs):
        calls.append(1)
        return convert(*args, **kwargs)

    monkeypatch.setattr(_sharing, "share_dataset", counting)
    for persistent in (False, True):
        calls.clear()
        with DataLoader(
            Annotations(200), batch_size=50, num_workers=2, share_dataset=True,
            persistent_workers=persistent,
        ) as loader:  # fmt: skip
            for _ in range(3):
                assert len(list(loader)) == 4
        assert calls == [1]


def test_a_large_container_warns_once_per_loader():
    """Process workers about to receive a large list: one warning naming it and the fix."""
    loader = DataLoader(Annotations(200), batch_size=50, num_workers=2)
    with pytest.warns(
        UserWarning, match=r"list of 200 items at dataset\.items.*share_dataset=True"
    ):
        list(loader)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        list(loader)  # the second epoch is quiet


@pytest.mark.parametrize(
    "options",
    [
        {"num_workers": 2, "share_dataset": True},
        {"num_workers": 0},
        {"num_workers": 2, "thread_pool": True},
    ],
    ids=["shared", "no-workers", "threads"],
)
def test_no_warning_where_nothing_is_copied(options):
    """Shared, loaded in the main process, or by threads: no warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(list(DataLoader(Annotations(200), batch_size=50, **options))) == 4


def test_no_warning_for_small_containers():
    """Below the size limits a list is not worth a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert len(list(DataLoader(Annotations(50), batch_size=10, num_workers=2))) == 5


def test_share_dataset_must_be_a_bool():
    """share_dataset='yes' is refused, naming the argument."""
    with pytest.raises(TypeError, match="share_dataset should be True or False, got"):
        DataLoader(Annotations(4), share_dataset="yes")


_KILLED_SCRIPT = """
import sys, time
from batchloader import DataLoader, _sharing
from tests.test_share_dataset import Annotations

_sharing.MIN_ITEMS = 100
loader = DataLoader(Annotations(400), batch_size=4, num_workers=2, share_dataset=True,
                    persistent_workers=True)
epoch = iter(loader)
next(epoch)
print(" ".join(str(w.pid) for w in epoch._workers), flush=True)
time.sleep(60)
"""


def test_a_killed_trainer_leaves_nothing_behind():
    """SIGKILL of the main process: no worker and nothing in /dev/shm remains."""
    before_shm, before_children = shm_segments(), child_pids()
    process = subprocess.Popen(
        [sys.executable, "-c", _KILLED_SCRIPT],
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    worker_pids = [int(pid) for pid in process.stdout.readline().split()]
    assert len(worker_pids) == 2, process.stderr.read()
    os.kill(process.pid, signal.SIGKILL)
    process.wait(10)
    process.stdout.close()
    process.stderr.close()
    deadline = time.monotonic() + 10
    while any(_alive(pid) for pid in worker_pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(pid) for pid in worker_pids)
    assert shm_segments() - before_shm == set()
    assert child_pids() - before_children == set()


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_shared_list_is_what_share_dataset_puts_in_place():
    """The public function and the loader's option agree: lists become SharedLists."""
    dataset = Annotations(150)
    copy, replaced = _sharing.share_dataset(dataset, min_items=100)
    assert isinstance(copy.items, SharedList) and copy.items == dataset.items
    assert [(c.path, c.kind, c.items) for c in replaced] == [("dataset.items", "list", 150)]
