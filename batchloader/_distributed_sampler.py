"""``DistributedSampler``: one shard of the indices per rank, torch's semantics."""

from __future__ import annotations

from collections.abc import Iterator, Sized

import torch
import torch.distributed as dist
import torch.utils.data
from torch.utils.data import DistributedSampler as _TorchDistributedSampler

from . import _seeding
from ._sampler_base import Sampler, _check_bool, _check_int, _check_source, _EpochState, _length

__all__ = ["DistributedSampler"]


class DistributedSampler(_EpochState, Sampler[int], _TorchDistributedSampler):
    """Yields this rank's share of the indices; the same indices as torch's ``DistributedSampler``.

    All ranks draw one permutation seeded with ``seed + epoch`` (torch's
    arithmetic), pad it by repeating its start until each rank gets
    ``ceil(n / num_replicas)`` (or trim to ``n // num_replicas`` each with
    ``drop_last``), and deal it out. Trap: call :meth:`set_epoch` before each
    epoch on every rank, or every epoch repeats one order::

        n=7, num_replicas=3, order p0..p6, padded with p0 p1
        rank 0: p0 p3 p6      rank 1: p1 p4 p0      rank 2: p2 p5 p1

    Args:
        dataset: a sized dataset, or its length as an int; read once.
        num_replicas: number of ranks; default the process group's world size.
        rank: this rank, ``0 .. num_replicas - 1``; default the group rank.
        shuffle: permute before dealing, else deal ``0 .. n-1`` in order.
        seed: the seed all ranks share.
        drop_last: trim instead of pad.

    Example::

        >>> [list(DistributedSampler(5, 2, rank, shuffle=False)) for rank in (0, 1)]
        [[0, 2, 4], [1, 3, 0]]
    """

    _repr_fields = ("dataset", "num_replicas", "rank", "shuffle", "seed", "drop_last", "epoch")

    # torch's attribute, widened: it also takes a length. mypy forbids widening an
    # inherited attribute, hence the ignore.
    dataset: int | Sized  # type: ignore[assignment]

    def __init__(
        self,
        dataset: int | Sized,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        self.dataset = _check_source("dataset", dataset)
        self.num_replicas = _check_int("num_replicas", _from_group("num_replicas", num_replicas), 1)
        self.rank = _check_int("rank", _from_group("rank", rank))
        if not 0 <= self.rank < self.num_replicas:
            raise ValueError(
                f"Invalid rank {self.rank}, rank should be in the interval "
                f"[0, {self.num_replicas - 1}] (num_replicas={self.num_replicas})"
            )
        self.shuffle = _check_bool("shuffle", shuffle)
        self.seed = _check_int("seed", seed)
        self.drop_last = _check_bool("drop_last", drop_last)
        self._n = _length(self.dataset)
        padded = self._n if drop_last else self._n + self.num_replicas - 1
        self.num_samples = padded // self.num_replicas
        self.total_size = self.num_samples * self.num_replicas

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(
                _seeding.distributed_sampler_seed(self.seed, self.epoch)
            )
            order = torch.randperm(self._n, generator=generator).tolist()
        else:
            order = list(range(self._n))
        # Position k of the padded order holds order[k % n]; a rank takes every
        # num_replicas-th position from its own.
        positions = range(self.rank, self.total_size, self.num_replicas)
        return iter([order[k % self._n] for k in positions])

    def __len__(self) -> int:
        return self.num_samples

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose permutation the next iteration yields.

        Any integer, negative included, as torch accepts: the shuffle is seeded
        with ``seed + epoch``.
        """
        self.epoch = _check_int("epoch", epoch)


def _from_group(name: str, value: int | None) -> object:
    if value is not None:
        return value
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            f"{name} is None and no torch.distributed process group is initialized: pass "
            "num_replicas= and rank=, or call torch.distributed.init_process_group() first"
        )
    return dist.get_world_size() if name == "num_replicas" else dist.get_rank()
