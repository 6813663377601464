"""Accelerate 1.15 ``prepare`` under torchrun (2 CPU processes), batchloader beside torch."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.helpers import child_env, free_ports, run_in_own_session

HERE = Path(__file__).resolve().parent
_TIMEOUT_S = 150


@pytest.fixture(scope="module")
def records(tmp_path_factory):
    """Each rank's epoch with torch's loader, batchloader's, and batchloader's with its engine."""
    out = tmp_path_factory.mktemp("accelerate")
    env = child_env(
        lambda name: name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"), GLOO_SOCKET_IFNAME="lo"
    )
    command = [
        str(Path(sys.executable).with_name("torchrun")), "--nproc_per_node", "2",
        "--master_addr", "127.0.0.1", "--master_port", str(free_ports(1)[0]),
        str(HERE / "_accelerate_ddp.py"), str(out),
    ]  # fmt: skip
    done = run_in_own_session(command, env, _TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-4000:]
    by_rank = [json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)]
    return {r0["kind"]: (r0, r1) for r0, r1 in zip(*by_rank, strict=True)}


pytestmark = pytest.mark.timeout(_TIMEOUT_S + 30)


@pytest.mark.parametrize("kind", ["torch", "batchloader", "batchloader-engine"])
def test_prepare_shards_the_loader_into_disjoint_halves(records, kind):
    rank0, rank1 = records[kind]
    assert len(rank0["seen"]) == len(rank1["seen"]) == 10
    assert sorted(rank0["seen"] + rank1["seen"]) == list(range(20))


@pytest.mark.parametrize("kind", ["torch", "batchloader", "batchloader-engine"])
def test_gather_for_metrics_counts_the_dataset_once(records, kind):
    assert [r["gathered"] for r in records[kind]] == [20, 20]


@pytest.mark.parametrize("kind", ["torch", "batchloader", "batchloader-engine"])
def test_gradient_accumulation_syncs_at_the_end_of_the_epoch(records, kind):
    # 5 batches per rank, accumulating 3: a sync after batch 3 and one at the loader's end.
    assert [r["syncs"] for r in records[kind]] == [2, 2]


def test_prepare_loads_with_torchs_engine_unless_given_batchloaders(records):
    assert [r["engines"] for r in records["batchloader"]] == [["torch"], ["torch"]]
    assert [r["engines"] for r in records["batchloader-engine"]] == [["batchloader"]] * 2


@pytest.mark.parametrize("kind", ["torch", "batchloader", "batchloader-engine"])
def test_skip_first_batches_leaves_out_two_batches_of_each_shard(records, kind):
    for record in records[kind]:
        assert len(record["skip_first_2"]) == 3  # 5 batches per rank, 2 skipped
        assert all(len(batch) == 2 for batch in record["skip_first_2"])
