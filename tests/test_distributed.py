"""Tests for distributed loading: DistributedSampler and the sharding helper on real ranks.

Three spawned rank processes form one ``gloo`` process group per world size
(3 ranks, then 2, on 127.0.0.1) and run every scenario once in each, in
``tests/_ddp_ranks.py``; each test below asserts one behaviour on what the
ranks saw. The helper's own rules are tested in this process, without a group.
"""

from __future__ import annotations

import ast
import dataclasses
import itertools
import multiprocessing
import multiprocessing.connection
import pathlib
import pickle
import re
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch.distributed as dist
import torch.utils.data as tud

import batchloader
from batchloader import distributed
from batchloader.distributed import (
    ShardedIterableDataset,
    ShardInfo,
    shard_info,
    split_by_rank_and_worker,
)
from tests import _ddp_ranks as ranks
from tests.helpers import child_env, free_ports, run_in_own_session

pytestmark = pytest.mark.timeout(120)

WORLD_SIZES = (2, 3)
REPO = Path(__file__).resolve().parents[1]
_GROUP_DEADLINE_S = 90  # spawn to exit, all groups: ~15 s alone, more on a busy machine
_JOIN_TIMEOUT_S = 5  # per process, after terminate() and again after kill()
_LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
_TORCHRUN_TIMEOUT_S = 90  # ~15 s alone; importing DDP pulls in torch._dynamo


# --- running a process group ----------------------------------------------------------


def _wait(processes: list[Any], deadline: float) -> None:
    """Returns when all have exited, one has failed, or the deadline has passed."""
    while (left := deadline - time.monotonic()) > 0:
        running = [process.sentinel for process in processes if process.exitcode is None]
        if not running or any(process.exitcode for process in processes):
            return
        multiprocessing.connection.wait(running, timeout=left)


def _stop(processes: list[Any]) -> None:
    for process in processes:
        for end in (process.terminate, process.kill):
            if process.exitcode is None:
                end()
                process.join(_JOIN_TIMEOUT_S)


def launch(world_sizes: tuple[int, ...], out_dir: Path) -> dict[int, list[dict[str, Any]]]:
    """Runs every scenario once per world size; returns what each rank saw, by world size."""
    context = multiprocessing.get_context("spawn")
    groups = dict(zip(world_sizes, free_ports(len(world_sizes)), strict=True))
    processes = [
        context.Process(
            target=ranks.run_rank, args=(rank, groups, str(out_dir)), name=f"rank{rank}"
        )
        for rank in range(max(world_sizes))
    ]
    for process in processes:
        process.start()
    try:
        _wait(processes, time.monotonic() + _GROUP_DEADLINE_S)
    finally:
        _stop(processes)
    errors = [path.read_text() for path in sorted(out_dir.glob("rank*.error"))]
    codes = [process.exitcode for process in processes]
    for process in processes:
        process.close()
    if errors or any(codes):
        pytest.fail(
            f"ranks exited with {codes} (deadline {_GROUP_DEADLINE_S} s)\n" + "\n".join(errors)
        )
    return pickle.loads((out_dir / ranks.RESULTS_FILE).read_bytes())


@pytest.fixture(scope="module")
def seen_by_world_size(tmp_path_factory) -> dict[int, list[dict[str, Any]]]:
    """One spawn of ranks for the module; one process group per world size."""
    return launch(WORLD_SIZES, tmp_path_factory.mktemp("ranks"))


@pytest.fixture(params=WORLD_SIZES, ids=lambda size: f"{size}ranks")
def seen(request, seen_by_world_size) -> list[dict[str, Any]]:
    """What each rank saw in every scenario, for one world size."""
    return seen_by_world_size[request.param]


def flat(batches: list[list[int]]) -> list[int]:
    return list(itertools.chain.from_iterable(batches))


def epoch_indices(seen: list[dict[str, Any]], scenario: str, epoch: int) -> list[int]:
    """Every index all ranks saw in one epoch of ``scenario``, rank after rank."""
    return flat(flat(rank[scenario]["epochs"][epoch] for rank in seen))


def torch_share(world_size: int, rank: int, epoch: int, drop_last: bool = False) -> list[int]:
    sampler = tud.DistributedSampler(
        range(ranks.SIZE), world_size, rank, seed=ranks.SEED, drop_last=drop_last
    )
    sampler.set_epoch(epoch)
    return list(sampler)


# --- DistributedSampler on real ranks ----------------------------------------------------


def test_sampler_covers_every_index_each_epoch(seen):
    """Together the ranks see every index of the dataset in every epoch."""
    for epoch in ranks.EPOCHS:
        assert set(epoch_indices(seen, "padded", epoch)) == set(range(ranks.SIZE))


def test_sampler_duplicates_only_the_padding(seen):
    """Beyond one of each index, the ranks see exactly the padding, each padded index once."""
    padded_size = -(-ranks.SIZE // len(seen)) * len(seen)
    for epoch in ranks.EPOCHS:
        extra = Counter(epoch_indices(seen, "padded", epoch)) - Counter(range(ranks.SIZE))
        assert sum(extra.values()) == padded_size - ranks.SIZE
        assert set(extra.values()) <= {1}


def test_sampler_drop_last_trims_without_duplicates(seen):
    """With ``drop_last=True`` no index repeats and only the remainder is left out."""
    for epoch in ranks.EPOCHS:
        indices = epoch_indices(seen, "trimmed", epoch)
        assert len(indices) == len(set(indices)) == ranks.SIZE // len(seen) * len(seen)


def test_each_rank_sees_torchs_distributed_order(seen):
    """Each rank's batches hold the indices torch's DistributedSampler gives that rank."""
    for rank, saw in enumerate(seen):
        for epoch in ranks.EPOCHS:
            assert flat(saw["padded"]["epochs"][epoch]) == torch_share(len(seen), rank, epoch)
            trimmed = flat(saw["trimmed"]["epochs"][epoch])
            assert trimmed == torch_share(len(seen), rank, epoch, drop_last=True)


@pytest.mark.parametrize("scenario", ["padded", "trimmed", "rollover"])
def test_every_rank_gets_the_same_number_of_batches(seen, scenario):
    """All ranks get equally many batches each epoch, so DDP's collectives never wait forever."""
    for epoch in ranks.EPOCHS:
        assert len({len(rank[scenario]["epochs"][epoch]) for rank in seen}) == 1


@pytest.mark.parametrize("scenario", ["padded", "trimmed", "rollover"])
def test_loader_len_matches_batches_on_every_rank(seen, scenario):
    """``len(loader)`` before each epoch equals the batches that epoch yields, on every rank."""
    for rank in seen:
        assert rank[scenario]["lengths"] == [len(batches) for batches in rank[scenario]["epochs"]]


def test_set_epoch_changes_the_order(seen):
    """After ``set_epoch(1)`` every rank sees a different order than in epoch 0."""
    for rank in seen:
        first, second = (flat(batches) for batches in rank["padded"]["epochs"])
        assert first != second


def test_same_seed_gives_the_same_batches(seen):
    """A fresh sampler and loader with the same seed yield the same batches on every rank."""
    assert [rank["rerun"] for rank in seen] == [rank["padded"] for rank in seen]


def test_sampler_reads_rank_and_world_size_from_the_group(seen):
    """``DistributedSampler(dataset)`` takes ``num_replicas`` and ``rank`` from the group."""
    assert [rank["defaults"]["sampler"] for rank in seen] == [
        (len(seen), r) for r in range(len(seen))
    ]


# --- last_batch='rollover' per rank -----------------------------------------------------


def test_rollover_loses_nothing_over_two_epochs(seen):
    """Per rank, the batches of two epochs then the carry are that rank's two shares, in order."""
    for rank in seen:
        rollover = rank["rollover"]
        yielded = flat(flat(rollover["epochs"])) + rollover["carried"]
        assert yielded == flat(rollover["shares"])
        assert 0 < len(rollover["carried"]) < ranks.ROLLOVER_BATCH_SIZE


def test_rollover_batches_are_full(seen):
    """Rollover never yields a short batch."""
    for rank in seen:
        sizes = {len(batch) for batch in flat(rank["rollover"]["epochs"])}
        assert sizes == {ranks.ROLLOVER_BATCH_SIZE}


# --- the iterable-dataset helper across ranks and workers --------------------------------


def test_sharded_stream_yields_every_item_once(seen):
    """Across all ranks and workers, ``ShardedIterableDataset`` yields each item exactly once."""
    items = flat(flat(rank["stream"] for rank in seen))
    assert sorted(items) == list(range(ranks.STREAM_SIZE))


def test_sharded_stream_drop_last_evens_the_ranks(seen):
    """With ``drop_last=True`` every rank gets equally many batches and no item repeats."""
    count = len(seen) * ranks.NUM_WORKERS
    items = flat(flat(rank["stream_even"] for rank in seen))
    assert len(items) == len(set(items)) == ranks.STREAM_SIZE // count * count
    assert len({len(rank["stream_even"]) for rank in seen}) == 1


def test_shard_info_in_a_worker_combines_rank_and_worker(seen):
    """Inside worker ``w`` of rank ``r`` the shard is ``r * num_workers + w`` of ``world * num_workers``."""
    world, workers = len(seen), ranks.NUM_WORKERS
    for r, rank in enumerate(seen):
        expected = [
            [r * workers + w, world * workers, r, world, w, workers] for w in range(workers)
        ]
        assert rank["workers"] == expected


def test_shard_info_in_a_rank_main_process_is_worker_zero_of_one(seen):
    """Outside a worker, the shard is the rank itself, of ``world_size``."""
    world = len(seen)
    assert [rank["defaults"]["main_process"] for rank in seen] == [
        (r, world, r, world, 0, 1) for r in range(world)
    ]


# --- the helper without a process group -----------------------------------------------------


@pytest.fixture
def no_rank_env(monkeypatch):
    """No ``RANK``/``WORLD_SIZE`` in the environment, whatever launched the tests."""
    monkeypatch.delenv("RANK", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)


def test_shard_info_alone_is_zero_of_one(no_rank_env):
    """With no group, no environment and no worker, the caller is shard 0 of 1."""
    assert shard_info() == ShardInfo(
        index=0, count=1, rank=0, world_size=1, worker_id=0, num_workers=1
    )


def test_shard_info_reads_the_environment(monkeypatch):
    """Without a group, ``RANK`` and ``WORLD_SIZE`` (set by torchrun) give the rank."""
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    info = shard_info()
    assert (info.index, info.count) == (2, 3)


def test_shard_info_prefers_the_process_group_to_the_environment(monkeypatch, tmp_path):
    """An initialized group gives the rank even when ``RANK``/``WORLD_SIZE`` say otherwise."""
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("GLOO_SOCKET_IFNAME", "lo")
    store = f"file://{tmp_path / 'store'}"
    dist.init_process_group("gloo", init_method=store, rank=0, world_size=1)
    try:
        info = shard_info()
    finally:
        dist.destroy_process_group()
    assert (info.rank, info.world_size) == (0, 1)


def test_shard_info_explicit_rank_wins(monkeypatch):
    """``rank=`` and ``world_size=`` override the environment."""
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    info = shard_info(rank=1, world_size=4)
    assert (info.index, info.count) == (1, 4)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"rank": 1}, ValueError, r"give rank and world_size together.*world_size=None"),
        ({"rank": 2, "world_size": 2}, ValueError, r"rank should be in \[0, 1\].*got 2"),
        (
            {"rank": 0, "world_size": 0},
            ValueError,
            r"world_size should be a positive integer, got 0",
        ),
        ({"rank": 0.0, "world_size": 1}, TypeError, r"rank should be an int, got 0.0 \(float\)"),
        ({"rank": True, "world_size": 2}, TypeError, r"rank should be an int, got True"),
    ],
)
def test_shard_info_rejects_bad_ranks(options, error, message):
    """A bad ``rank``/``world_size`` names the argument, the value and what is allowed."""
    with pytest.raises(error, match=message):
        shard_info(**options)


def test_shard_info_rejects_a_bad_environment(monkeypatch):
    """A non-integer ``RANK`` is named with its value."""
    monkeypatch.setenv("RANK", "zero")
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(
        ValueError, match="environment variable RANK should be an integer, got 'zero'"
    ):
        shard_info()


def test_split_takes_every_count_th_item_from_the_index(no_rank_env):
    """Shard ``index`` of ``count`` yields items ``index, index + count, ...``."""
    assert list(split_by_rank_and_worker(range(10), rank=1, world_size=4)) == [1, 5, 9]


def test_split_drop_last_gives_every_shard_one_length(no_rank_env):
    """``drop_last=True`` trims each shard to ``len // count`` items."""
    shards = [
        list(split_by_rank_and_worker(range(10), rank=r, world_size=4, drop_last=True))
        for r in range(4)
    ]
    assert shards == [[0, 4], [1, 5], [2, 6], [3, 7]]


def test_split_drop_last_needs_len():
    """``drop_last=True`` on an unsized iterable says what to pass instead."""
    with pytest.raises(
        TypeError, match=r"drop_last=True needs len\(iterable\).*generator has no __len__"
    ):
        split_by_rank_and_worker((i for i in range(3)), drop_last=True)


def test_sharded_dataset_rejects_a_one_shot_iterator():
    """A generator would serve one epoch only, so the dataset refuses it and says why."""
    with pytest.raises(TypeError, match=r"source should be re-iterable.*got generator"):
        ShardedIterableDataset(i for i in range(3))


def test_sharded_dataset_checks_ranks_when_built():
    """A bad explicit rank fails at construction, not later inside a worker."""
    with pytest.raises(ValueError, match=r"rank should be in \[0, 1\]"):
        ShardedIterableDataset(range(4), rank=5, world_size=2)


def test_sharded_dataset_repr():
    """The repr shows the source by type and length, and every option."""
    dataset = ShardedIterableDataset(range(8), rank=1, world_size=2, drop_last=True)
    assert repr(dataset) == (
        "ShardedIterableDataset(source=<range of length 8>, rank=1, world_size=2, drop_last=True)"
    )


def test_sharded_dataset_over_thread_workers_yields_every_item_once():
    """Two ranks (given explicitly) of two thread workers each cover the items exactly once."""
    items = []
    for rank in range(2):
        dataset = ShardedIterableDataset(range(21), rank=rank, world_size=2)
        loader = batchloader.DataLoader(dataset, batch_size=4, num_workers=2, thread_pool=True)
        items += flat(batch.tolist() for batch in loader)
    assert sorted(items) == list(range(21))


def test_sharded_dataset_in_torchs_loader_uses_torchs_worker_info(no_rank_env):
    """In torch's own DataLoader the helper shards by torch's worker information."""
    dataset = ShardedIterableDataset(range(11))
    loader = tud.DataLoader(dataset, batch_size=3, num_workers=2, multiprocessing_context="fork")
    assert sorted(flat(batch.tolist() for batch in loader)) == list(range(11))


def test_all_is_sorted_and_complete():
    """``__all__`` is sorted and names exactly the module's public objects."""
    tree = ast.parse(pathlib.Path(distributed.__file__).read_text())
    defined_here = {
        node.name
        for node in tree.body
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and not node.name.startswith("_")
    }
    assert distributed.__all__ == sorted(distributed.__all__)
    assert set(distributed.__all__) == defined_here


def test_a_loader_without_a_distributed_sampler_warns_once_per_rank(seen_by_world_size):
    """Under a group of several ranks, a loader that every rank would read whole warns once."""
    for seen in seen_by_world_size.values():
        for rank_seen in seen:
            unsharded, sharded = rank_seen["unsharded_warnings"]
            assert len(unsharded) == 1 and "DistributedSampler" in unsharded[0]
            assert sharded == []


def test_shard_info_is_a_frozen_value():
    """``ShardInfo`` cannot be changed after it is made."""
    with pytest.raises(dataclasses.FrozenInstanceError):
        shard_info().index = 3


# --- the DDP example under torchrun --------------------------------------------------------


def test_ddp_example_trains_under_torchrun():
    """``torchrun --nproc_per_node 2 examples/ddp_train.py`` trains; rank 0 alone prints each epoch."""
    command = [
        str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_ports(1)[0]),
        str(REPO / "examples" / "ddp_train.py"), "--epochs", "2", "--samples", "256",
    ]  # fmt: skip
    env = child_env(lambda name: name in _LAUNCHER_VARIABLES, GLOO_SOCKET_IFNAME="lo")
    done = run_in_own_session(command, env, _TORCHRUN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-4000:]
    epochs = re.findall(
        r"^epoch (\d+): loss ([\d.]+) \(256 samples, world size 2\)$", done.stdout, re.M
    )
    assert [epoch for epoch, _ in epochs] == ["0", "1"], done.stdout
    assert float(epochs[1][1]) < float(epochs[0][1])
