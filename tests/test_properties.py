"""Properties: any worker count and kind yields the single-process loader's batches."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from batchloader import DataLoader
from tests.helpers import RangeDataset, ShardedIterable, batches_as_lists
from tests.strategies import loader_configs

pytestmark = pytest.mark.timeout(120)


def _epochs(config: dict, num_workers: int, thread_pool: bool, epochs: int = 2) -> list:
    loader = DataLoader(
        RangeDataset(config["size"]),
        batch_size=config["batch_size"],
        shuffle=config["shuffle"],
        last_batch=config["last_batch"],
        generator=torch.Generator().manual_seed(config["seed"]),
        num_workers=num_workers,
        thread_pool=thread_pool,
        in_order=True,
    )
    return [batches_as_lists(loader) for _ in range(epochs)]


@given(config=loader_configs(), num_workers=st.integers(1, 3), thread_pool=st.booleans())
def test_workers_yield_the_single_process_batches(config, num_workers, thread_pool):
    """For any size, batch size, last-batch mode and seed, workers change nothing."""
    expected = _epochs(config, 0, False)
    assert _epochs(config, num_workers, thread_pool) == expected


@settings(max_examples=15)
@given(config=loader_configs(), num_workers=st.integers(1, 3), thread_pool=st.booleans())
def test_out_of_order_workers_yield_the_same_multiset(config, num_workers, thread_pool):
    """in_order=False changes only the order in which batches arrive."""
    loader = DataLoader(
        RangeDataset(config["size"]),
        batch_size=config["batch_size"],
        last_batch=config["last_batch"] if config["last_batch"] != "rollover" else "keep",
        num_workers=num_workers,
        thread_pool=thread_pool,
        in_order=False,
    )
    got = sorted(map(tuple, batches_as_lists(loader)))
    expected = sorted(
        map(
            tuple,
            batches_as_lists(
                DataLoader(
                    RangeDataset(config["size"]),
                    batch_size=config["batch_size"],
                    last_batch=loader.last_batch,
                )
            ),
        )
    )
    assert got == expected


@settings(max_examples=15)
@given(
    size=st.integers(0, 60),
    batch_size=st.integers(1, 7),
    num_workers=st.integers(1, 3),
    thread_pool=st.booleans(),
)
def test_sharded_iterable_dataset_yields_each_sample_once(
    size, batch_size, num_workers, thread_pool
):
    """A properly sharded iterable dataset yields the single-process multiset."""
    dataset = ShardedIterable(size, use_torch_info=not thread_pool)
    loader = DataLoader(
        dataset, batch_size=batch_size, num_workers=num_workers, thread_pool=thread_pool
    )
    assert sorted(i for batch in loader for i in batch.tolist()) == list(range(size))
