"""Lightning 2.6 with batchloader's loader, side by side with torch's."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import pytest
import torch

import batchloader
from tests.helpers import child_env, free_ports, run_in_own_session

HERE = Path(__file__).resolve().parent
_DDP_TIMEOUT_S = 150


def _ddp_fit(kind: str, tmp_path: Path, *extra: str) -> dict[int, dict]:
    out = tmp_path / kind
    out.mkdir()
    env = child_env(
        lambda name: name.startswith(("PL_", "LOCAL_RANK", "NODE_RANK")),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(free_ports(1)[0]),
        GLOO_SOCKET_IFNAME="lo",
    )
    command = [sys.executable, str(HERE / "_lightning_ddp.py"), kind, str(out), *extra]
    done = run_in_own_session(command, env, _DDP_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-4000:]
    return {rank: json.loads((out / f"rank{rank}.json").read_text()) for rank in (0, 1)}


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    """One 2-rank fit with torch's loader and one with batchloader's (shared: they are slow)."""
    tmp = tmp_path_factory.mktemp("lightning")
    return {kind: _ddp_fit(kind, tmp) for kind in ("torch", "batchloader")}


@pytest.mark.timeout(2 * _DDP_TIMEOUT_S + 30)
def test_ddp_gives_each_rank_a_disjoint_half_like_torch(ddp_runs):
    for kind, ranks in ddp_runs.items():
        seen = [ranks[0]["seen"], ranks[1]["seen"]]
        assert len(seen[0]) == len(seen[1]) == 8, kind
        assert sorted(seen[0] + seen[1]) == list(range(16)), kind
        assert ranks[0]["steps"] == 4, kind
    # Lightning's DistributedSampler gives the very same shards to both loaders.
    assert [sorted(ddp_runs["batchloader"][r]["seen"]) for r in (0, 1)] == [
        sorted(ddp_runs["torch"][r]["seen"]) for r in (0, 1)
    ]


@pytest.mark.timeout(2 * _DDP_TIMEOUT_S + 30)
def test_ddp_rebuilds_the_loader_as_batchloaders_with_its_engine(ddp_runs):
    for rank in (0, 1):
        record = ddp_runs["batchloader"][rank]
        assert record["loader"] == "batchloader.DataLoader"
        assert record["engines"] == ["batchloader"]
    assert ddp_runs["torch"][0]["engines"] == ["torch"]


@pytest.mark.timeout(_DDP_TIMEOUT_S + 30)
def test_ddp_keeps_a_rollover_last_batch(tmp_path):
    ranks = _ddp_fit("batchloader", tmp_path, "rollover")
    # 8 indices per rank, batches of 3: two batches, and two indices carried to the next epoch.
    assert [len(ranks[r]["seen"]) for r in (0, 1)] == [6, 6]
    assert not set(ranks[0]["seen"]) & set(ranks[1]["seen"])


# -- in one process ---------------------------------------------------------------------------


class _InitialSeed(torch.utils.data.Dataset):
    def __len__(self):
        return 8

    def __getitem__(self, i):
        return torch.tensor([float(i)]), torch.initial_seed()


class _SeedRecorder(L.LightningModule):
    def __init__(self, loader_cls):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.loader_cls, self.seeds = loader_cls, set()

    def train_dataloader(self):
        return self.loader_cls(_InitialSeed(), batch_size=2, num_workers=2)

    def training_step(self, batch, batch_idx):
        x, seeds = batch
        self.seeds |= set(seeds.tolist())
        return self.layer(x).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def predict_dataloader(self):
        return self.loader_cls(_InitialSeed(), batch_size=3)

    def predict_step(self, batch, batch_idx):
        return batch[0]


def _trainer() -> L.Trainer:
    return L.Trainer(
        max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu", devices=1,
    )  # fmt: skip


def _fit_seeds(loader_cls) -> set[int]:
    L.seed_everything(7, workers=True)
    module = _SeedRecorder(loader_cls)
    _trainer().fit(module)
    return module.seeds


@pytest.mark.filterwarnings("ignore::UserWarning:lightning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_seed_everything_workers_runs_lightnings_worker_init_fn():
    torch_seeds = _fit_seeds(torch.utils.data.DataLoader)
    ours = _fit_seeds(batchloader.DataLoader)
    # Lightning's worker_init_fn seeds each worker from (base seed, worker id, rank); ours
    # draws the base seed as torch does, so each of our workers' seeds is one torch's had.
    assert ours and ours <= torch_seeds


@pytest.mark.filterwarnings("ignore::UserWarning:lightning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.filterwarnings("ignore::FutureWarning")
def test_predict_fills_batch_indices_like_torch():
    from lightning.pytorch.callbacks import BasePredictionWriter

    class Writer(BasePredictionWriter):
        def __init__(self):
            super().__init__(write_interval="batch")
            self.indices = []

        def write_on_batch_end(self, trainer, module, prediction, batch_indices, *rest):
            self.indices.append(batch_indices)

    indices = {}
    for loader_cls in (torch.utils.data.DataLoader, batchloader.DataLoader):
        writer = Writer()
        trainer = _trainer()
        trainer.callbacks.append(writer)
        trainer.predict(_SeedRecorder(loader_cls), return_predictions=False)
        indices[loader_cls.__module__] = writer.indices
    assert indices["batchloader"] == indices["torch.utils.data.dataloader"]
    assert indices["batchloader"] == [[0, 1, 2], [3, 4, 5], [6, 7]]


@pytest.mark.timeout(3 * _DDP_TIMEOUT_S)
def test_a_fit_interrupted_mid_epoch_resumes_with_the_exact_remaining_batches(tmp_path):
    env = child_env()
    for mode in ("whole", "first", "rest"):  # each in a new process, as after a preemption
        command = [sys.executable, str(HERE / "_lightning_resume.py"), mode, str(tmp_path)]
        done = run_in_own_session(command, env, _DDP_TIMEOUT_S)
        assert done.returncode == 0, done.stderr[-4000:]
    whole, first, rest = (
        json.loads((tmp_path / f"{m}.json").read_text()) for m in ("whole", "first", "rest")
    )
    assert len(first) == 5 and first + rest == whole
