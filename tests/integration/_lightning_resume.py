"""A Lightning fit that a test interrupts and resumes: ``python _lightning_resume.py MODE DIR``.

MODE ``whole`` trains 2 epochs; ``first`` stops after 5 steps with a checkpoint
saved during training; ``rest`` resumes from it with ``ckpt_path``. Each run
writes the index batches it trained on to ``DIR/MODE.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

import batchloader


class Indices(torch.utils.data.Dataset):
    def __len__(self):
        return 40

    def __getitem__(self, i):
        return torch.tensor([float(i)]), i


class Recorder(L.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)
        self.seen = []

    def train_dataloader(self):
        return batchloader.DataLoader(
            Indices(), batch_size=4, shuffle=True, num_workers=2,
            generator=torch.Generator().manual_seed(3),
        )  # fmt: skip

    def training_step(self, batch, batch_idx):
        x, indices = batch
        self.seen.append(indices.tolist())
        return self.layer(x).sum()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.01)


def main() -> None:
    mode, out = sys.argv[1], Path(sys.argv[2])
    options = {
        "accelerator": "cpu", "devices": 1, "logger": False, "enable_progress_bar": False,
        "enable_model_summary": False, "max_epochs": 2,
    }  # fmt: skip
    module = Recorder()
    if mode == "first":
        every_5 = ModelCheckpoint(dirpath=out, filename="step5", every_n_train_steps=5)
        L.Trainer(max_steps=5, callbacks=[every_5], **options).fit(module)
    elif mode == "rest":
        L.Trainer(enable_checkpointing=False, **options).fit(module, ckpt_path=out / "step5.ckpt")
    else:
        L.Trainer(enable_checkpointing=False, **options).fit(module)
    (out / f"{mode}.json").write_text(json.dumps(module.seen))


if __name__ == "__main__":
    main()
