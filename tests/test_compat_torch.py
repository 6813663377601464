"""The same scenarios through torch's DataLoader and ours give identical batches."""

from __future__ import annotations

from collections import namedtuple

import numpy as np
import pytest
import torch
import torch.utils.data as tud

import batchloader
from tests.helpers import RangeDataset, ShardedIterable, TensorPairs, batches_as_lists

pytestmark = pytest.mark.timeout(60)

Point = namedtuple("Point", "x y")


class Mixed:
    """Samples mixing dicts, namedtuples, NumPy arrays, floats and strings."""

    def __len__(self):
        return 11

    def __getitem__(self, i):
        return {"p": Point(np.float32(i), np.arange(2) + i), "name": f"s{i}", "w": i / 3}


def _both(dataset, seed=None, **kwargs):
    """Runs one epoch through torch's loader and ours, reseeding the same way."""
    out = []
    for cls in (tud.DataLoader, batchloader.DataLoader):
        if seed is not None:
            torch.manual_seed(seed)
        out.append(batches_as_lists(cls(dataset, **kwargs)))
    return out


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"batch_size": 4},
        {"batch_size": 4, "drop_last": True},
        {"batch_size": None},
        {"batch_size": 3, "shuffle": True},
        {"batch_size": 3, "num_workers": 2},
        {"batch_size": 3, "shuffle": True, "num_workers": 2},
    ],
    ids=lambda kw: ",".join(f"{k}={v}" for k, v in kw.items()) or "defaults",
)
def test_map_dataset_batches_match_torch(kwargs):
    """Sequential, shuffled (torch.manual_seed), dropped and worker batches equal torch's."""
    theirs, ours = _both(TensorPairs(10), seed=0, **kwargs)
    assert ours == theirs


def test_shuffle_with_explicit_generator_matches_torch():
    """With the same torch.Generator seed both loaders shuffle identically."""
    theirs = batches_as_lists(
        tud.DataLoader(
            RangeDataset(20), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(5)
        )
    )
    ours = batches_as_lists(
        batchloader.DataLoader(
            RangeDataset(20), batch_size=4, shuffle=True, generator=torch.Generator().manual_seed(5)
        )
    )
    assert ours == theirs


def test_nested_samples_collate_like_torch():
    """Dicts of namedtuples of arrays, strings and floats collate identically."""
    theirs, ours = _both(Mixed(), batch_size=4)
    assert ours == theirs


def test_custom_collate_fn_is_used_as_is():
    """A user collate_fn receives the list of samples, as in torch."""
    theirs, ours = _both(RangeDataset(7), batch_size=3, collate_fn=lambda xs: sum(xs))
    assert ours == theirs


def test_torch_samplers_work_in_our_loader():
    """torch's RandomSampler and BatchSampler plug into our loader unchanged."""
    sampler = tud.BatchSampler(tud.SequentialSampler(range(9)), 4, drop_last=False)
    theirs, ours = _both(RangeDataset(9), batch_sampler=sampler)
    assert ours == theirs


def test_our_samplers_work_in_torchs_loader():
    """Our BatchSampler and RandomSampler plug into torch's loader unchanged."""
    sampler = batchloader.BatchSampler(batchloader.SequentialSampler(9), 4, last_batch="discard")
    assert batches_as_lists(tud.DataLoader(RangeDataset(9), batch_sampler=sampler)) == [
        [0, 1, 2, 3],
        [4, 5, 6, 7],
    ]


def test_our_collate_functions_work_in_torchs_loader():
    """batchloader.Pad is a valid collate_fn for torch's loader."""
    data = [np.arange(n) for n in (1, 3, 2)]
    batch = next(iter(tud.DataLoader(data, batch_size=3, collate_fn=batchloader.Pad(pad_val=-1))))
    assert batch.tolist() == [[0, -1, -1], [0, 1, 2], [0, 1, -1]]


def test_iterable_dataset_with_workers_interleaves_like_torch():
    """Sharded iterable datasets give torch's round-robin order with 2 workers."""
    theirs, ours = _both(ShardedIterable(13), batch_size=2, num_workers=2)
    assert ours == theirs


def test_len_matches_torch_for_iterable_datasets():
    """len() of a loader over a sized IterableDataset follows torch's rule."""
    for drop_last in (False, True):
        theirs = len(tud.DataLoader(ShardedIterable(13), batch_size=4, drop_last=drop_last))
        ours = len(batchloader.DataLoader(ShardedIterable(13), batch_size=4, drop_last=drop_last))
        assert ours == theirs
