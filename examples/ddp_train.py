"""Trains a linear classifier with DistributedDataParallel on CPU, fed by batchloader.

Each rank reads its own share of the data through ``DistributedSampler`` and a
``batchloader.DataLoader`` with worker processes; gradients are averaged over
the ``gloo`` backend. Rank 0 prints the loss of every epoch, averaged over all
ranks. With batchloader installed (``pip install -e .``)::

    torchrun --nproc_per_node 2 examples/ddp_train.py --epochs 3
    python examples/ddp_train.py            # one process, the same code path

Every rank builds the same synthetic data from ``--seed``, so nothing is sent
between ranks but gradients.
"""

from __future__ import annotations

import argparse
import os
import socket
from collections.abc import Sequence
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel

import batchloader

_FEATURES = 8
_CLASSES = 2
_LEARNING_RATE = 0.5
_GROUP_TIMEOUT_S = 60  # a rank that never arrives fails the others within a minute


def make_dataset(samples: int, seed: int) -> batchloader.TensorDataset:
    """Points labelled by the side of a random hyperplane they fall on; the same on every rank."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(samples, _FEATURES, generator=generator)
    normal = torch.randn(_FEATURES, generator=generator)
    labels = (features @ normal > 0).long()
    return batchloader.TensorDataset(features, labels)


def train(
    *, epochs: int, samples: int, batch_size: int, num_workers: int, seed: int
) -> list[float]:
    """Trains in the current process group; returns the mean loss of each epoch (all ranks)."""
    dataset = make_dataset(samples, seed)
    sampler = batchloader.DistributedSampler(dataset, shuffle=True, seed=seed)
    torch.manual_seed(seed)
    model = DistributedDataParallel(nn.Linear(_FEATURES, _CLASSES))
    optimizer = torch.optim.SGD(model.parameters(), lr=_LEARNING_RATE)
    workers: dict[str, object] = {}
    if num_workers:
        # fork starts workers without re-importing torch; name it, as the default is changing.
        workers = {"multiprocessing_context": "fork", "persistent_workers": True}
    losses = []
    with batchloader.DataLoader(
        dataset, batch_size, sampler=sampler, num_workers=num_workers, **workers
    ) as loader:
        for epoch in range(epochs):
            sampler.set_epoch(epoch)  # a new order each epoch, the same on every rank
            totals = torch.zeros(2, dtype=torch.float64)  # summed loss, samples
            for features, labels in loader:
                optimizer.zero_grad()
                loss = F.cross_entropy(model(features), labels)
                loss.backward()
                optimizer.step()
                totals += torch.tensor([loss.item() * len(labels), len(labels)])
            dist.all_reduce(totals)
            losses.append(float(totals[0] / totals[1]))
            if dist.get_rank() == 0:
                print(
                    f"epoch {epoch}: loss {losses[-1]:.4f} "
                    f"({int(totals[1])} samples, world size {dist.get_world_size()})",
                    flush=True,
                )
    return losses


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _init_group() -> None:
    """Joins torchrun's group, or makes a one-process group when run with plain python."""
    if "WORLD_SIZE" not in os.environ:
        os.environ.update(
            MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()), RANK="0", WORLD_SIZE="1"
        )
    dist.init_process_group("gloo", timeout=timedelta(seconds=_GROUP_TIMEOUT_S))


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--samples", type=int, default=1024, help="dataset size (all ranks)")
    parser.add_argument("--batch-size", type=int, default=32, help="per rank")
    parser.add_argument("--num-workers", type=int, default=2, help="loader workers per rank")
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> list[float]:
    """Parses ``argv``, joins (or makes) a process group, trains, and leaves the group."""
    args = _parse(argv)
    owns_group = not dist.is_initialized()
    if owns_group:
        _init_group()
    try:
        return train(
            epochs=args.epochs,
            samples=args.samples,
            batch_size=args.batch_size,
            num_workers=args.num_workers,
            seed=args.seed,
        )
    finally:
        if owns_group:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
