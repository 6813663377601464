"""DataLoader behaviour: batching modes, lengths, epochs and data-source kinds."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest
import torch

from batchloader import ArrayDataset, BatchDataset, DataLoader, threadsafe
from tests.helpers import EndlessBatches, RangeDataset, ShardedIterable, batches_as_lists

pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("keep", [[0, 1, 2], [3, 4, 5], [6]]), ("discard", [[0, 1, 2], [3, 4, 5]])],
)
def test_last_batch_keep_and_discard(mode, expected):
    """'keep' yields the short tail, 'discard' drops it; len agrees."""
    loader = DataLoader(RangeDataset(7), batch_size=3, last_batch=mode)
    assert batches_as_lists(loader) == expected
    assert len(loader) == len(expected)


def test_last_batch_rollover_carries_the_tail_into_the_next_epoch():
    """The 7th sample of epoch 1 opens epoch 2's first batch."""
    loader = DataLoader(RangeDataset(7), batch_size=3, last_batch="rollover")
    assert batches_as_lists(loader) == [[0, 1, 2], [3, 4, 5]]
    assert len(loader) == 2  # 1 carried + 7 new = 8 -> 2 full batches
    assert batches_as_lists(loader) == [[6, 0, 1], [2, 3, 4]]


def test_rollover_with_workers_matches_single_process():
    """Rollover works the same with a worker pool across epochs."""
    single = DataLoader(RangeDataset(7), batch_size=3, last_batch="rollover")
    multi = DataLoader(RangeDataset(7), batch_size=3, last_batch="rollover", num_workers=2)
    for _ in range(3):
        assert batches_as_lists(multi) == batches_as_lists(single)


def test_drop_last_is_discard():
    """torch's drop_last=True drops the incomplete batch."""
    loader = DataLoader(RangeDataset(7), batch_size=3, drop_last=True)
    assert loader.last_batch == "discard"
    assert len(list(loader)) == 2


def test_each_epoch_reshuffles():
    """Iterating twice gives two different permutations of the same data."""
    loader = DataLoader(
        RangeDataset(50), batch_size=50, shuffle=True, generator=torch.Generator().manual_seed(1)
    )
    first, second = (next(iter(loader)).tolist() for _ in range(2))
    assert first != second and sorted(first) == sorted(second) == list(range(50))


def test_batch_size_none_converts_each_sample():
    """batch_size=None applies default_convert: NumPy samples become tensors."""
    loader = DataLoader([np.arange(3), np.arange(3) + 1], batch_size=None)
    out = list(loader)
    assert all(isinstance(x, torch.Tensor) for x in out)
    assert len(loader) == 2


def test_dataset_getitems_fetches_whole_index_lists():
    """A dataset's __getitems__ is called once per batch instead of __getitem__."""
    calls = []

    class Batched(RangeDataset):
        def __getitems__(self, indices):
            calls.append(list(indices))
            return list(indices)

    assert batches_as_lists(DataLoader(Batched(5), batch_size=2)) == [[0, 1], [2, 3], [4]]
    assert calls == [[0, 1], [2, 3], [4]]


@pytest.mark.parametrize("num_workers", [0, 2])
def test_array_dataset_fast_path_equals_per_sample_collation(num_workers):
    """ArrayDataset batches gathered with one take equal per-sample collation."""
    x = np.arange(60, dtype=np.float32).reshape(20, 3)
    y = np.arange(20)
    fast = DataLoader(ArrayDataset(x, y), batch_size=6, num_workers=num_workers)
    slow = DataLoader(list(zip(x, y, strict=True)), batch_size=6)
    assert batches_as_lists(fast) == batches_as_lists(slow)


def test_iterable_dataset_batches_and_drop_last():
    """An iterable dataset is batched in order; drop_last drops the short tail."""
    assert batches_as_lists(DataLoader(ShardedIterable(7), batch_size=3)) == [
        [0, 1, 2],
        [3, 4, 5],
        [6],
    ]
    assert len(DataLoader(ShardedIterable(7), batch_size=3, drop_last=True)) == 2
    assert batches_as_lists(DataLoader(ShardedIterable(7), batch_size=3, drop_last=True)) == [
        [0, 1, 2],
        [3, 4, 5],
    ]


def test_iterable_dataset_ignoring_worker_info_repeats_its_data():
    """The documented pitfall: without sharding, each worker yields every sample."""

    class Unsharded(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(range(5))

    seen = sorted(
        i for b in DataLoader(Unsharded(), batch_size=None, num_workers=2) for i in [int(b)]
    )
    assert seen == sorted(list(range(5)) * 2)


@pytest.mark.parametrize("num_workers", [0, 4])
def test_generator_source_yields_each_item_once_with_threads(num_workers):
    """A plain generator is consumed under a lock: every item exactly once."""
    loader = DataLoader(
        (i for i in range(1000)), batch_size=7, num_workers=num_workers, thread_pool=True
    )
    seen = sorted(i for batch in loader for i in batch.tolist())
    assert seen == list(range(1000))


def test_generator_source_with_process_workers_is_refused():
    """Process workers would each copy the generator: a TypeError explains why."""
    with pytest.raises(TypeError, match="IterableDataset"):
        DataLoader((i for i in range(10)), batch_size=2, num_workers=2)


def test_threadsafe_wrapper_is_accepted_as_a_source():
    """A threadsafe-wrapped iterator works like a generator source."""
    loader = DataLoader(threadsafe(iter(range(9))), batch_size=3, num_workers=2, thread_pool=True)
    assert sorted(i for b in loader for i in b.tolist()) == list(range(9))


class Squares(BatchDataset):
    """Batch i is (x, y) with x = [i, i, i] and y = x**2; records its epoch hooks."""

    def __init__(self, n=5, **kwargs):
        super().__init__(**kwargs)
        self.n = n
        self.events = []

    def __len__(self):
        return self.n

    def __getitem__(self, i):
        if i >= self.n:
            raise IndexError(i)
        x = np.full(3, i)
        return x, x**2

    def on_epoch_begin(self):
        self.events.append("begin")

    def on_epoch_end(self):
        self.events.append("end")


@pytest.mark.parametrize(
    ("num_workers", "thread_pool"),
    [(0, False), (2, True), (2, False)],
    ids=["main", "threads", "processes"],
)
def test_batch_dataset_yields_every_batch_in_order(num_workers, thread_pool):
    """A Keras-style batch dataset is iterated batch by batch, uncollated."""
    ds = Squares()
    loader = DataLoader(ds, batch_size=None, num_workers=num_workers, thread_pool=thread_pool)
    out = list(loader)
    assert [int(x[0]) for x, _ in out] == [0, 1, 2, 3, 4]
    assert len(loader) == 5


@pytest.mark.parametrize("thread_pool", [False, True], ids=["processes", "threads"])
def test_batch_dataset_epoch_hooks_run_once_per_epoch_in_the_main_process(thread_pool):
    """on_epoch_begin before and on_epoch_end after each epoch, in this process."""
    ds = Squares()
    loader = DataLoader(ds, num_workers=2, thread_pool=thread_pool)
    for _ in range(2):
        for _batch in loader:
            assert ds.events[-1] == "begin"
    assert ds.events == ["begin", "end", "begin", "end"]


def test_batch_dataset_worker_options_choose_the_pool():
    """workers/use_multiprocessing/max_queue_size configure the pool when num_workers=0."""
    loader = DataLoader(Squares(workers=3, use_multiprocessing=False, max_queue_size=6))
    assert loader.num_workers == 3 and loader.thread_pool is True and loader.prefetch_factor == 2
    assert len(list(loader)) == 5


def test_batch_dataset_shuffle_visits_each_batch_once():
    """shuffle=True permutes batch indices per epoch."""
    loader = DataLoader(Squares(20), shuffle=True, generator=torch.Generator().manual_seed(0))
    order = [int(x[0]) for x, _ in loader]
    assert sorted(order) == list(range(20)) and order != list(range(20))


class Endless(BatchDataset):
    @property
    def num_batches(self):
        return None

    def __getitem__(self, i):
        return (np.array([i]),)


@pytest.mark.parametrize("thread_pool", [False, True], ids=["processes", "threads"])
def test_infinite_batch_dataset_streams_until_stopped(thread_pool):
    """num_batches=None streams batches 0, 1, 2, ... until the user stops."""
    loader = DataLoader(Endless(), num_workers=2, thread_pool=thread_pool)
    iterator = iter(loader)
    got = [int(b[0][0]) for b in itertools.islice(iterator, 50)]
    iterator.close()
    assert got == list(range(50))
    with pytest.raises(TypeError):
        len(loader)


def test_batch_dataset_returning_a_string_is_a_clear_error():
    """__getitem__ must return a tuple, dict or array; a str is named in the error."""

    class Bad(Squares):
        def __getitem__(self, i):
            return "oops"

    with pytest.raises((TypeError, ValueError), match="str"):
        list(DataLoader(Bad()))


def test_batch_dataset_rejects_a_batch_size():
    """A dataset that yields whole batches takes no batch_size."""
    with pytest.raises(ValueError, match="batch_size must be None"):
        DataLoader(Squares(), batch_size=8)


def test_pin_memory_without_an_accelerator_warns_and_passes_batches_through():
    """pin_memory=True on a CPU-only machine warns once and yields the same batches."""
    from batchloader import _pin_memory as pm

    pm._warned.clear()
    with pytest.warns(UserWarning, match="no accelerator"):
        loader = DataLoader(RangeDataset(6), batch_size=2, pin_memory=True, num_workers=2)
        got = batches_as_lists(loader)
    assert got == [[0, 1], [2, 3], [4, 5]]


def test_pin_memory_stage_pins_every_batch_in_order(monkeypatch):
    """With a (fake) accelerator, every batch passes the pin thread, in order."""
    from batchloader import loader as loader_module

    pinned = []

    def fake_pin(batch):
        pinned.append(batch.tolist())
        return batch

    monkeypatch.setattr(loader_module, "make_pin_fn", lambda *_a, **_k: fake_pin)
    loader = DataLoader(RangeDataset(9), batch_size=2, pin_memory=True, num_workers=2)
    assert batches_as_lists(loader) == pinned == [[0, 1], [2, 3], [4, 5], [6, 7], [8]]


def test_worker_error_passes_through_the_pin_stage(monkeypatch):
    """A worker's exception reaches the user through the pin thread, same type."""
    from batchloader import loader as loader_module
    from tests.helpers import FailingDataset

    monkeypatch.setattr(loader_module, "make_pin_fn", lambda *_a, **_k: lambda b: b)
    loader = DataLoader(FailingDataset(9, bad=4), batch_size=2, pin_memory=True, num_workers=2)
    with pytest.raises(KeyError, match="sample 4 is corrupt"):
        list(loader)


def _yielding(n):
    """A generator that lets other threads run between items, as I/O does."""
    for i in range(n):
        time.sleep(0)
        yield i


@pytest.mark.parametrize("last_batch", ["keep", "discard"])
def test_thread_workers_take_consecutive_batches_from_a_shared_generator(last_batch):
    batches = [
        b.tolist()
        for b in DataLoader(
            _yielding(1003), batch_size=10, last_batch=last_batch, num_workers=4, thread_pool=True
        )
    ]
    assert [x for b in batches for x in b] == list(range(1000 if last_batch == "discard" else 1003))
    assert all(b == list(range(b[0], b[0] + len(b))) for b in batches)


def test_only_the_last_batch_from_a_shared_generator_is_short():
    loader = DataLoader(_yielding(1003), batch_size=10, num_workers=4, thread_pool=True)
    assert [len(b) for b in loader] == [10] * 100 + [3]


def test_out_of_order_thread_workers_wait_for_results_instead_of_polling(monkeypatch):
    def no_sleeping(seconds):
        raise AssertionError(f"the iterator slept {seconds} s instead of waiting on a result")

    items = list(range(300))
    monkeypatch.setattr(time, "sleep", no_sleeping)
    got = DataLoader(iter(items), batch_size=None, num_workers=4, thread_pool=True, in_order=False)
    assert sorted(int(x) for x in got) == items


def test_rollover_after_an_abandoned_epoch_starts_afresh_like_gluon():
    loader = DataLoader(ArrayDataset(np.arange(42)), batch_size=4, last_batch="rollover")
    assert len(list(loader)) == 10  # carries 40, 41
    abandoned = iter(loader)
    assert next(abandoned).tolist() == [40, 41, 0, 1]
    del abandoned
    batches = [b.tolist() for b in loader]
    assert batches[0] == [0, 1, 2, 3] and len(batches) == 10


@pytest.mark.parametrize("workers", [1, 2])
def test_an_endless_batch_dataset_goes_on_where_the_last_epoch_stopped(workers):
    dataset = EndlessBatches(workers=workers)
    loader = DataLoader(dataset, batch_size=None)
    epochs = []
    for _ in range(3):
        epochs.append([int(x[0]) for _, (x,) in zip(range(3), loader, strict=False)])
    loader.close()
    assert epochs == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]
    assert dataset.calls == ["begin", "end"] * 3


def test_an_epoch_left_early_ends_when_its_iterator_is_closed():
    dataset = EndlessBatches()
    it = iter(DataLoader(dataset, batch_size=None))
    next(it)
    assert dataset.calls == ["begin"]
    it.close()
    assert dataset.calls == ["begin", "end"]
