"""Accelerate ``prepare`` on 2 CPU processes (torchrun), with torch's loader or batchloader's.

Run by test_accelerate.py under ``torchrun --nproc_per_node 2``; each process
writes ``OUT_DIR/rank<N>.json`` with one record per loader kind.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from accelerate import Accelerator

import batchloader


class Indices(torch.utils.data.Dataset):
    """Sample i is (i as a float input, i, whether batchloader's engine made it)."""

    def __len__(self):
        return 20

    def __getitem__(self, i):
        return torch.tensor([float(i)]), i, batchloader.get_worker_info() is not None


def one_epoch(kind: str) -> dict:
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=3)
    model = torch.nn.Linear(1, 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    loader_cls = torch.utils.data.DataLoader if kind == "torch" else batchloader.DataLoader
    loader = loader_cls(Indices(), batch_size=2, shuffle=True, num_workers=2)
    model, optimizer, prepared = accelerator.prepare(model, optimizer, loader)
    if kind == "batchloader-engine":
        prepared = batchloader.with_batchloader_engine(prepared, loader)
    seen, engines, syncs, gathered = [], set(), 0, 0
    for x, indices, by_batchloader in prepared:
        with accelerator.accumulate(model):
            seen += indices.tolist()
            engines |= {"batchloader" if flag else "torch" for flag in by_batchloader.tolist()}
            accelerator.backward(model(x).sum())
            optimizer.step()
            optimizer.zero_grad()
            syncs += int(accelerator.sync_gradients)
            gathered += len(accelerator.gather_for_metrics(indices))
    skipped = accelerator.skip_first_batches(prepared, 2)
    if kind == "batchloader-engine":
        skipped = batchloader.with_batchloader_engine(skipped, loader)
    after_skip = [indices.tolist() for _, indices, _ in skipped]
    return {
        "kind": kind,
        "rank": accelerator.process_index,
        "skip_first_2": after_skip,
        "seen": seen,
        "engines": sorted(engines),
        "syncs": syncs,
        "gathered": gathered,
    }


def main() -> None:
    records = [one_epoch(kind) for kind in ("torch", "batchloader", "batchloader-engine")]
    rank = records[0]["rank"]
    Path(sys.argv[1], f"rank{rank}.json").write_text(json.dumps(records))


if __name__ == "__main__":
    main()
