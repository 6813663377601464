"""One Lightning ``ddp`` fit on 2 CPU ranks, with torch's loader or batchloader's.

Run by test_lightning.py as ``python _lightning_ddp.py {torch,batchloader} OUT_DIR
[last_batch]``; Lightning starts rank 1 by running this script again. Each rank
writes what it trained on to ``OUT_DIR/rank<N>.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch

import batchloader


class Indices(torch.utils.data.Dataset):
    """Sample i is (i as a float input, i, whether batchloader's engine made it)."""

    def __len__(self):
        return 16

    def __getitem__(self, i):
        return torch.tensor([float(i)]), i, batchloader.get_worker_info() is not None


class Recorder(L.LightningModule):
    def __init__(self, loader_cls, loader_kwargs):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.loader_cls, self.loader_kwargs = loader_cls, loader_kwargs
        self.seen, self.engines = [], set()

    def train_dataloader(self):
        return self.loader_cls(Indices(), shuffle=True, num_workers=2, **self.loader_kwargs)

    def training_step(self, batch, batch_idx):
        x, indices, by_batchloader = batch
        self.seen += indices.tolist()
        self.engines |= {"batchloader" if flag else "torch" for flag in by_batchloader.tolist()}
        return self.layer(x).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def on_train_end(self):
        loader = self.trainer.train_dataloader
        record = {
            "rank": self.global_rank,
            "seen": self.seen,
            "engines": sorted(self.engines),
            "loader": f"{type(loader).__module__}.{type(loader).__qualname__}",
            "steps": self.trainer.global_step,
        }
        Path(sys.argv[2], f"rank{self.global_rank}.json").write_text(json.dumps(record))


def main() -> None:
    kind, last_batch = sys.argv[1], (sys.argv[3] if len(sys.argv) > 3 else None)
    loader_cls = batchloader.DataLoader if kind == "batchloader" else torch.utils.data.DataLoader
    kwargs = (
        {"batch_size": 2} if last_batch is None else {"batch_size": 3, "last_batch": last_batch}
    )
    L.seed_everything(0)
    trainer = L.Trainer(
        strategy="ddp", devices=2, accelerator="cpu", max_epochs=1, logger=False,
        enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(Recorder(loader_cls, kwargs))


if __name__ == "__main__":
    main()
