"""Tests for batchloader.datasets: base classes, array datasets, generators, batch datasets."""

from __future__ import annotations

import collections
import itertools
import sys
import threading
import warnings
from typing import Any

import numpy as np
import pytest
import torch
import torch.utils.data
from hypothesis import given
from hypothesis import strategies as st

from batchloader import DataLoader, datasets
from batchloader._batch_dataset import (
    BatchDatasetOptions,
    batch_dataset_options,
    check_batch,
    is_batch_dataset,
)
from batchloader._generators import (
    ThreadSafeIterator,
    generator_with_processes_error,
    is_generator_like,
)
from batchloader.datasets import (
    ArrayDataset,
    BatchDataset,
    Dataset,
    GeneratorDataset,
    IterableDataset,
    PyDataset,
    Sequence,
    TensorDataset,
    threadsafe,
)

# --- helpers and strategies -------------------------------------------------------------------

_DTYPES = [np.float32, np.float64, np.int64, np.uint8, np.bool_]


@st.composite
def array_datasets(draw: st.DrawFn, min_length: int = 0) -> ArrayDataset:
    """An ArrayDataset of 1-3 NumPy arrays and tensors with random trailing shapes and dtypes."""
    length = draw(st.integers(min_length, 12))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    arrays = []
    for _ in range(draw(st.integers(1, 3))):
        trailing = tuple(draw(st.lists(st.integers(0, 3), max_size=2)))
        values = (rng.random((length, *trailing)) * 100).astype(draw(st.sampled_from(_DTYPES)))
        arrays.append(torch.from_numpy(values) if draw(st.booleans()) else values)
    return ArrayDataset(*arrays)


@st.composite
def datasets_and_indices(draw: st.DrawFn, min_indices: int = 0) -> tuple[ArrayDataset, list[int]]:
    """An ArrayDataset and an index list into it."""
    ds = draw(array_datasets(min_length=1 if min_indices else 0))
    n = len(ds)
    if n == 0:
        return ds, []
    return ds, draw(st.lists(st.integers(0, n - 1), min_size=min_indices, max_size=8))


def _fields(sample: Any, ds: ArrayDataset) -> tuple[Any, ...]:
    return (sample,) if len(ds.arrays) == 1 and not isinstance(ds, TensorDataset) else sample


def _stack(items: list[Any], like: Any) -> Any:
    if not items:
        return like[:0]
    return torch.stack(items) if isinstance(like, torch.Tensor) else np.stack(items)


def _assert_same_array(actual: Any, expected: Any) -> None:
    assert type(actual) is type(expected)
    assert actual.dtype == expected.dtype
    assert tuple(actual.shape) == tuple(expected.shape)
    if isinstance(expected, torch.Tensor):
        assert torch.equal(actual, expected)
    else:
        np.testing.assert_array_equal(actual, expected)


def _assert_same_sample(actual: Any, expected: Any) -> None:
    if isinstance(expected, tuple):
        assert isinstance(actual, tuple) and len(actual) == len(expected)
        for a, e in zip(actual, expected, strict=True):
            _assert_same_array(a, e)
    else:
        _assert_same_array(actual, expected)


class _PerSample(torch.utils.data.Dataset):
    """Hides __getitems__, so torch's loader takes the one-sample-at-a-time path."""

    def __init__(self, ds: ArrayDataset):
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int) -> Any:
        return self.ds[i]


class _Numbers(IterableDataset):
    """The IterableDataset docstring's example: shards with get_worker_info()."""

    def __init__(self, n: int):
        self.n = n

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        start, step = (0, 1) if info is None else (info.id, info.num_workers)
        return iter(range(start, self.n, step))


def _as_worker(monkeypatch: pytest.MonkeyPatch, worker_id: int, num_workers: int) -> None:
    info = collections.namedtuple("Info", "id num_workers")(worker_id, num_workers)
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: info)


# --- base classes -----------------------------------------------------------------------------


def test_dataset_is_a_torch_dataset():
    """Dataset and IterableDataset subclass torch's, so torch's loader accepts them."""
    assert issubclass(Dataset, torch.utils.data.Dataset)
    assert issubclass(IterableDataset, torch.utils.data.IterableDataset)
    assert issubclass(ArrayDataset, Dataset) and issubclass(BatchDataset, Dataset)


def test_unsharded_iterable_dataset_repeats_per_worker(monkeypatch):
    """The documented pitfall: ignoring get_worker_info() yields every sample once per worker."""

    class Unsharded(IterableDataset):
        def __iter__(self):
            return iter(range(6))

    items = []
    for worker_id in range(3):
        _as_worker(monkeypatch, worker_id, 3)
        items += list(Unsharded())
    assert sorted(items) == sorted(list(range(6)) * 3)


def test_iterable_dataset_docstring_fix_shards_between_workers(monkeypatch):
    """The two-line fix from the IterableDataset docstring yields each sample once over all workers."""
    items = []
    for worker_id in range(3):
        _as_worker(monkeypatch, worker_id, 3)
        items += list(_Numbers(10))
    assert sorted(items) == list(range(10))


# --- ArrayDataset -----------------------------------------------------------------------------


def test_array_dataset_item_is_tuple_of_rows():
    """ds[i] is the tuple of row i of every array, each keeping its type."""
    x, y = np.arange(12).reshape(6, 2), torch.arange(6)
    sample = ArrayDataset(x, y)[4]
    assert isinstance(sample, tuple)
    np.testing.assert_array_equal(sample[0], [8, 9])
    assert torch.equal(sample[1], torch.tensor(4))


def test_array_dataset_with_one_array_returns_the_item():
    """With one array, ds[i] is the row itself, not a 1-tuple (MXNet's behaviour)."""
    np.testing.assert_array_equal(ArrayDataset(np.arange(6).reshape(3, 2))[1], [2, 3])


def test_array_dataset_len_is_first_dimension():
    """len(ds) is the arrays' common first dimension."""
    assert len(ArrayDataset(np.zeros((7, 3)), torch.zeros(7))) == 7


def test_array_dataset_negative_index_counts_from_end():
    """ds[-1] is the last row, as for NumPy and torch."""
    assert ArrayDataset(np.arange(5))[-1] == 4


def test_array_dataset_length_mismatch_names_lengths():
    """Arrays of different lengths are a ValueError that lists the lengths."""
    with pytest.raises(ValueError, match=r"same length.*\[10, 9\]"):
        ArrayDataset(np.zeros(10), torch.zeros(9))


def test_array_dataset_needs_an_array():
    """ArrayDataset() with no arrays is a ValueError."""
    with pytest.raises(ValueError, match="at least one array"):
        ArrayDataset()


def test_array_dataset_rejects_non_arrays_by_position():
    """A list argument is a TypeError naming its position and type."""
    with pytest.raises(TypeError, match=r"argument 1 is a list.*numpy\.asarray"):
        ArrayDataset(np.zeros(3), [1, 2, 3])


def test_array_dataset_rejects_zero_dimensional_arrays():
    """A 0-d array has no rows, so it is a ValueError."""
    with pytest.raises(ValueError, match="argument 0 is 0-d"):
        ArrayDataset(np.array(1.0))


def test_array_dataset_repr_lists_arrays():
    """repr shows each array's kind, shape and dtype."""
    ds = ArrayDataset(np.zeros((4, 2), np.float32), torch.zeros(4, dtype=torch.int64))
    assert repr(ds) == (
        "ArrayDataset(ndarray(shape=(4, 2), dtype=float32), Tensor(shape=(4,), dtype=torch.int64))"
    )


@given(datasets_and_indices())
def test_get_batch_equals_stacked_samples(case):
    """get_batch(idx) equals stacking ds[i] field by field, for NumPy and torch arrays."""
    ds, indices = case
    batch = _fields(ds.get_batch(indices), ds)
    samples = [_fields(ds[i], ds) for i in indices]
    for position, array in enumerate(ds.arrays):
        expected = _stack([s[position] for s in samples], array)
        _assert_same_array(batch[position], expected)


@given(datasets_and_indices())
def test_getitems_equals_per_sample_items(case):
    """__getitems__(idx) is the list [ds[i] for i in idx], item for item."""
    ds, indices = case
    batch = ds.__getitems__(indices)
    assert isinstance(batch, list) and len(batch) == len(indices)
    for actual, i in zip(batch, indices, strict=True):
        _assert_same_sample(actual, ds[i])


@given(datasets_and_indices(min_indices=1))
def test_converted_get_batch_equals_default_collate(case):
    """Each get_batch field as a tensor equals torch's default_collate of the samples (the loader's fast path)."""
    ds, indices = case
    expected = torch.utils.data.default_collate(ds.__getitems__(indices))
    fields = _fields(ds.get_batch(indices), ds)
    converted = [torch.as_tensor(field) for field in fields]
    if len(ds.arrays) == 1 and not isinstance(ds, TensorDataset):
        expected = [expected]
    for actual, wanted in zip(converted, expected, strict=True):
        _assert_same_array(actual, wanted)


@pytest.mark.parametrize("batch_size", [1, 3, 4])
def test_torch_dataloader_uses_getitems_and_matches_per_sample_path(batch_size, monkeypatch):
    """torch's DataLoader calls our __getitems__ and yields the batches its per-sample path yields."""
    ds = ArrayDataset(np.arange(20, dtype=np.float32).reshape(10, 2), torch.arange(10))
    calls = []
    original = ArrayDataset.__getitems__
    monkeypatch.setattr(
        ArrayDataset, "__getitems__", lambda self, idx: calls.append(idx) or original(self, idx)
    )
    fast = list(torch.utils.data.DataLoader(ds, batch_size=batch_size))
    slow = list(torch.utils.data.DataLoader(_PerSample(ds), batch_size=batch_size))
    assert len(calls) == len(fast) == len(slow)
    for fast_batch, slow_batch in zip(fast, slow, strict=True):
        assert type(fast_batch) is type(slow_batch)
        for a, b in zip(fast_batch, slow_batch, strict=True):
            _assert_same_array(a, b)


def test_get_batch_with_one_array_returns_the_array():
    """With one array, get_batch returns the gathered array, not a 1-tuple."""
    batch = ArrayDataset(torch.arange(5) * 10).get_batch([4, 0])
    assert torch.equal(batch, torch.tensor([40, 0]))


def test_get_batch_accepts_array_and_tensor_indices():
    """Indices may be a NumPy array, a tensor or a range, not only a list."""
    ds = ArrayDataset(np.arange(5))
    for indices in (np.array([3, 1]), torch.tensor([3, 1]), range(3, 0, -2)):
        np.testing.assert_array_equal(ds.get_batch(indices), [3, 1])


def test_get_batch_out_of_range_names_index_and_length():
    """An index outside [-len, len) is an IndexError naming it and the length."""
    with pytest.raises(IndexError, match="index 5 is out of range for ArrayDataset of length 5"):
        ArrayDataset(torch.zeros(5)).get_batch([0, 5])
    with pytest.raises(IndexError, match="index -6 is out of range"):
        ArrayDataset(np.zeros(5)).get_batch([-6])


def test_get_batch_rejects_non_integer_indices():
    """Float indices are a TypeError naming the dtype."""
    with pytest.raises(TypeError, match="indices must be integers; got dtype float64"):
        ArrayDataset(np.zeros(5)).get_batch([1.0])


def test_get_batch_rejects_nested_indices():
    """A 2-d index list is a ValueError naming its shape."""
    with pytest.raises(ValueError, match=r"one-dimensional; got shape \(1, 2\)"):
        ArrayDataset(np.zeros(5)).get_batch([[1, 2]])


def test_get_batch_writes_into_out():
    """get_batch(idx, out=...) gathers straight into the given arrays and returns them."""
    ds = ArrayDataset(np.arange(10.0).reshape(5, 2), torch.arange(5))
    out = (np.empty((2, 2)), torch.empty(2, dtype=torch.int64))
    result = ds.get_batch([4, 0], out=out)
    assert result[0] is out[0] and result[1] is out[1]
    np.testing.assert_array_equal(out[0], [[8.0, 9.0], [0.0, 1.0]])
    assert torch.equal(out[1], torch.tensor([4, 0]))


def test_get_batch_rejects_out_of_wrong_shape():
    """An out array of the wrong shape is a ValueError naming both shapes."""
    ds = ArrayDataset(np.zeros((5, 2)))
    with pytest.raises(ValueError, match=r"out\[0\] has shape \(3, 2\).*expected shape \(2, 2\)"):
        ds.get_batch([0, 1], out=np.empty((3, 2)))


def test_get_batch_rejects_out_of_wrong_kind():
    """A NumPy out for a tensor field is a TypeError naming the field."""
    ds = ArrayDataset(np.zeros(5), torch.zeros(5))
    with pytest.raises(TypeError, match=r"out\[1\] is a ndarray"):
        ds.get_batch([0], out=(np.empty(1), np.empty(1)))


def test_tensor_dataset_matches_torch_tensor_dataset():
    """TensorDataset's samples are tuples equal to torch's, even with one tensor."""
    tensors = (torch.arange(6).reshape(3, 2), torch.arange(3))
    for args in (tensors, tensors[:1]):
        ours, theirs = TensorDataset(*args), torch.utils.data.TensorDataset(*args)
        assert len(ours) == len(theirs)
        for i in range(len(ours)):
            _assert_same_sample(ours[i], theirs[i])


def test_tensor_dataset_get_batch_is_a_tuple_with_one_tensor():
    """TensorDataset.get_batch keeps the 1-tuple, as its samples do."""
    (batch,) = TensorDataset(torch.arange(4)).get_batch([1, 2])
    assert torch.equal(batch, torch.tensor([1, 2]))


def test_tensor_dataset_tensors_attribute():
    """ds.tensors holds the tensors, as torch's TensorDataset does."""
    x = torch.zeros(3)
    assert TensorDataset(x).tensors == (x,)


# --- generators -------------------------------------------------------------------------------


def _consume_in_threads(iterator: Any, threads: int = 4) -> list[list[int]]:
    seen: list[list[int]] = [[] for _ in range(threads)]
    start = threading.Barrier(threads)

    def consume(out: list[int]) -> None:
        start.wait()
        out.extend(iterator)

    workers = [threading.Thread(target=consume, args=(out,)) for out in seen]
    # A tiny switch interval makes threads interleave inside next(); without the
    # lock, a shared generator then fails ("generator already executing") nearly always.
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=30)
    finally:
        sys.setswitchinterval(interval)
    return seen


def test_threadsafe_generator_gives_each_item_to_one_of_four_threads():
    """Four threads draining one threadsafe generator of 10_000 items see each item exactly once."""
    seen = _consume_in_threads(threadsafe(i for i in range(10_000)))
    assert sorted(itertools.chain.from_iterable(seen)) == list(range(10_000))


def test_threadsafe_decorator_makes_fresh_safe_iterators():
    """@threadsafe on a generator function returns a new ThreadSafeIterator on every call."""

    @threadsafe
    def count(n):
        yield from range(n)

    first, second = count(10_000), count(3)
    assert isinstance(first, ThreadSafeIterator) and first is not second
    assert sorted(itertools.chain.from_iterable(_consume_in_threads(first))) == list(range(10_000))
    assert list(second) == [0, 1, 2]
    assert count.__name__ == "count"


def test_threadsafe_wraps_an_iterable():
    """threadsafe(list) iterates the list once."""
    assert list(threadsafe([1, 2, 3])) == [1, 2, 3]


def test_threadsafe_rejects_non_iterables():
    """An object that is neither iterable nor callable is a TypeError naming its type."""
    with pytest.raises(TypeError, match="got a int"):
        threadsafe(3)


def test_threadsafe_iterator_close_runs_generator_cleanup():
    """close() closes the wrapped generator, running its finally block."""
    closed = []

    def gen():
        try:
            yield 1
            yield 2
        finally:
            closed.append(True)

    shared = threadsafe(gen())
    assert next(shared) == 1
    shared.close()
    assert closed == [True]


def test_threadsafe_iterator_repr_shows_wrapped():
    """repr names the wrapped iterator."""
    assert repr(threadsafe(iter([]))).startswith("ThreadSafeIterator(<list_iterator object")


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param((i for i in range(3)), True, id="generator"),
        pytest.param(iter([1, 2]), True, id="list-iterator"),
        pytest.param(map(str, [1]), True, id="map"),
        pytest.param(threadsafe([1]), True, id="threadsafe"),
        pytest.param([1, 2], False, id="list"),
        pytest.param(range, False, id="generator-function"),
        pytest.param(ArrayDataset(np.zeros(2)), False, id="array-dataset"),
        pytest.param(_Numbers(3), False, id="iterable-dataset"),
    ],
)
def test_is_generator_like(source, expected):
    """Single-use iterators are generator-like; datasets, containers and functions are not."""
    assert is_generator_like(source) is expected


def test_generator_with_processes_error_explains_repeats_and_fixes():
    """The process-worker error says data would repeat and names the alternatives."""
    error = generator_with_processes_error((i for i in range(3)), num_workers=4)
    assert isinstance(error, TypeError)
    message = str(error)
    assert "is a generator" in message and "num_workers=4" in message
    assert "same items again" in message
    for fix in ("thread_pool=True", "GeneratorDataset", "IterableDataset", "BatchDataset"):
        assert fix in message


def test_generator_dataset_is_reiterable():
    """GeneratorDataset calls the generator function afresh on every iteration."""
    ds = GeneratorDataset(range, args=(3,))
    assert list(ds) == list(ds) == [0, 1, 2]


def test_generator_dataset_shards_items_between_workers(monkeypatch):
    """In worker k of n, GeneratorDataset yields items k, k+n, ...; together exactly once."""
    ds = GeneratorDataset(range, args=(10,))
    shards = []
    for worker_id in range(3):
        _as_worker(monkeypatch, worker_id, 3)
        shards.append(list(ds))
    assert shards == [[0, 3, 6, 9], [1, 4, 7], [2, 5, 8]]


def test_generator_dataset_without_sharding_repeats_per_worker(monkeypatch):
    """shard=False lets every worker yield every item."""
    _as_worker(monkeypatch, 1, 2)
    assert list(GeneratorDataset(range, args=(3,), shard=False)) == [0, 1, 2]


def test_generator_dataset_in_torch_workers_yields_each_item_once():
    """With torch's DataLoader and two forked workers, each item arrives exactly once."""
    ds = GeneratorDataset(range, args=(20,))
    loader = torch.utils.data.DataLoader(
        ds, batch_size=None, num_workers=2, multiprocessing_context="fork"
    )
    assert sorted(int(x) for x in loader) == list(range(20))


def test_generator_dataset_rejects_a_generator_object():
    """Passing gen() instead of gen is a TypeError that shows the fix."""
    with pytest.raises(TypeError, match=r"not its result \(make_items\(\)\)"):
        GeneratorDataset(i for i in range(3))


def test_generator_dataset_repr():
    """repr shows the function, its arguments and the shard flag."""
    ds = GeneratorDataset(range, args=(5,), kwargs={}, shard=False)
    assert repr(ds) == "GeneratorDataset(range, args=(5,), kwargs={}, shard=False)"


# --- BatchDataset -----------------------------------------------------------------------------


class _Batches(BatchDataset):
    def __init__(self, n: int = 3, **kwargs: Any):
        super().__init__(**kwargs)
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        return np.full((2, 1), i), np.full(2, i)


class _NoSuper(BatchDataset):
    def __init__(self):
        self.n = 2

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Any:
        return (np.zeros(1),)


class _Endless(BatchDataset):
    @property
    def num_batches(self) -> int | None:
        return None

    def __getitem__(self, i: int) -> Any:
        return (np.full(1, i),)


def test_batch_dataset_aliases_are_keras_names():
    """PyDataset and Sequence are BatchDataset, Keras's names for it."""
    assert PyDataset is BatchDataset and Sequence is BatchDataset


def test_batch_dataset_options_read_from_init():
    """batch_dataset_options returns what __init__ was given, and len() as num_batches."""
    ds = _Batches(5, workers=3, use_multiprocessing=True, max_queue_size=4)
    assert batch_dataset_options(ds) == BatchDatasetOptions(
        workers=3, use_multiprocessing=True, max_queue_size=4, num_batches=5
    )


def test_batch_dataset_defaults_are_keras_defaults():
    """Without arguments the options are Keras's: 1 worker, threads, 10 queued."""
    assert (_Batches().workers, _Batches().use_multiprocessing, _Batches().max_queue_size) == (
        1,
        False,
        10,
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"workers": -2}, ValueError, "workers=-2 must be at least 0"),
        ({"max_queue_size": -1}, ValueError, "max_queue_size=-1 must be at least 1"),
        ({"workers": 1.5}, TypeError, "workers=1.5 must be an int"),
        ({"workers": True}, TypeError, "workers=True must be an int, not a bool"),
        (
            {"use_multiprocessing": "yes"},
            TypeError,
            "use_multiprocessing='yes' must be True or False",
        ),
    ],
)
def test_batch_dataset_rejects_bad_options_naming_them(kwargs, error, message):
    """A bad option is an error naming the argument and its value."""
    with pytest.raises(error, match=message):
        _Batches(**kwargs)


def test_options_accept_numpy_ints():
    """NumPy integers are accepted as counts and stored as int."""
    options = BatchDatasetOptions(workers=np.int64(2), num_batches=np.int32(4))
    assert (type(options.workers), type(options.num_batches)) == (int, int)


def test_options_reject_negative_num_batches():
    """num_batches=-1 is a ValueError naming it."""
    with pytest.raises(ValueError, match="num_batches=-1 must be at least 0"):
        BatchDatasetOptions(num_batches=-1)


def test_options_error_names_the_dataset():
    """An invalid option read from a dataset says which dataset it came from."""

    class Duck:
        workers = -1

        def __getitem__(self, i):
            return (i,)

        def __len__(self):
            return 1

    with pytest.raises(ValueError, match="workers=-1") as info:
        batch_dataset_options(Duck())
    assert "(read from the batch dataset " in "".join(info.value.__notes__)


def test_missing_super_init_warns_and_uses_defaults():
    """A subclass whose __init__ skips super().__init__ warns and gets Keras's defaults."""
    with pytest.warns(UserWarning, match=r"_NoSuper.__init__ did not call super\(\).__init__"):
        options = batch_dataset_options(_NoSuper())
    assert options == BatchDatasetOptions(num_batches=2)


def test_missing_super_warning_points_at_the_caller():
    """The warning's location is the line that asked for the options, not our module."""
    with pytest.warns(UserWarning) as record:
        batch_dataset_options(_NoSuper())
    assert record[0].filename == __file__


def test_missing_super_warns_once_per_object():
    """The defaults are stored on the object, so the warning comes once."""
    ds = _NoSuper()
    with pytest.warns(UserWarning):
        assert ds.workers == 1
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert batch_dataset_options(ds).max_queue_size == 10


def test_option_property_warning_points_at_the_caller():
    """Reading ds.workers on a subclass without super().__init__ warns at the reading line."""
    with pytest.warns(UserWarning, match="did not call super") as record:
        assert _NoSuper().max_queue_size == 10
    assert record[0].filename == __file__


def test_repr_of_subclass_without_super_shows_unset_without_warning():
    """repr neither warns nor fills in defaults when the options were never set."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        text = repr(_NoSuper())
    assert text == "_NoSuper(workers=<unset>, use_multiprocessing=<unset>, max_queue_size=<unset>)"


def test_batch_dataset_options_rejects_objects_without_getitem():
    """An object without __getitem__ is a TypeError naming its type."""
    with pytest.raises(TypeError, match="list_iterator is not a batch dataset"):
        batch_dataset_options(iter([]))


def test_keras_style_base_without_super_warns():
    """A duck-typed Keras PyDataset subclass that skipped super().__init__ warns like ours."""
    namespace = {"__module__": "keras.src.trainers.data_adapters.py_dataset_adapter"}
    for name in ("workers", "use_multiprocessing", "max_queue_size"):

        def getter(self, _name=name):
            return getattr(self, "_" + _name)

        getter.__module__ = namespace["__module__"]
        namespace[name] = property(getter)
    keras_base = type("PyDataset", (), namespace)

    class KerasStyle(keras_base):
        def __init__(self):
            pass

        def __getitem__(self, i):
            return (i,)

        def __len__(self):
            return 4

    assert is_batch_dataset(KerasStyle())
    with pytest.warns(UserWarning, match=r"KerasStyle.__init__ did not call super"):
        assert batch_dataset_options(KerasStyle()) == BatchDatasetOptions(num_batches=4)


def test_duck_typed_options_are_read_without_warning():
    """A plain object's workers/_max_queue_size attributes are read; absent ones default silently."""

    class Duck:
        workers = 4
        _max_queue_size = 2
        num_batches = 7

        def __getitem__(self, i):
            return (i,)

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        options = batch_dataset_options(Duck())
    assert options == BatchDatasetOptions(workers=4, max_queue_size=2, num_batches=7)


def test_endless_batch_dataset_has_no_num_batches():
    """num_batches=None (an endless dataset) passes through as None."""
    assert batch_dataset_options(_Endless()).num_batches is None


def test_num_batches_defaults_to_len():
    """Without a num_batches override, num_batches is len(ds), as in Keras."""
    assert _Batches(6).num_batches == 6


def test_missing_len_and_num_batches_is_an_error():
    """A batch dataset that cannot count its batches is a TypeError saying what to define."""

    class Uncounted(BatchDataset):
        def __getitem__(self, i):
            return (i,)

    with pytest.raises(NotImplementedError, match="must define __len__ or the num_batches"):
        Uncounted().num_batches  # noqa: B018 - the property access is the test
    with pytest.raises(TypeError, match="defines neither __len__ nor num_batches"):
        batch_dataset_options(Uncounted())


def test_batch_dataset_getitem_must_be_defined():
    """The base __getitem__ raises NotImplementedError naming the class."""
    with pytest.raises(NotImplementedError, match="BatchDataset must define __getitem__"):
        BatchDataset()[0]


def test_epoch_hooks_are_no_ops():
    """on_epoch_begin and on_epoch_end do nothing by default."""
    ds = _Batches()
    assert ds.on_epoch_begin() is None and ds.on_epoch_end() is None


def test_batch_dataset_repr_lists_options():
    """repr shows the class and its three options."""
    assert repr(_Batches(workers=2)) == (
        "_Batches(workers=2, use_multiprocessing=False, max_queue_size=10)"
    )


@pytest.mark.parametrize(
    ("options", "num_workers", "thread_pool", "prefetch_factor"),
    [
        (BatchDatasetOptions(), 0, True, None),
        (BatchDatasetOptions(workers=4, max_queue_size=10), 4, True, 2),
        (BatchDatasetOptions(workers=1, use_multiprocessing=True), 1, False, 10),
        (BatchDatasetOptions(workers=8, max_queue_size=2), 8, True, 1),
    ],
)
def test_options_translate_to_loader_arguments(options, num_workers, thread_pool, prefetch_factor):
    """num_workers/thread_pool/prefetch_factor follow Keras: one thread-worker means the main process."""
    assert (options.num_workers, options.thread_pool, options.prefetch_factor) == (
        num_workers,
        thread_pool,
        prefetch_factor,
    )


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        pytest.param(_Batches(), True, id="batch-dataset"),
        pytest.param(_Endless(), True, id="endless"),
        pytest.param(ArrayDataset(np.zeros(2)), False, id="map-style"),
        pytest.param(_Numbers(2), False, id="iterable"),
        pytest.param(_Batches, False, id="class-not-instance"),
        pytest.param([1, 2], False, id="list"),
    ],
)
def test_is_batch_dataset(source, expected):
    """Batch datasets are recognised; map-style datasets and classes are not."""
    assert is_batch_dataset(source) is expected


# --- check_batch ------------------------------------------------------------------------------

_X = np.zeros((2, 3))


@pytest.mark.parametrize(
    "batch",
    [
        pytest.param((_X,), id="x"),
        pytest.param((_X, _X), id="x-y"),
        pytest.param((_X, _X, _X), id="x-y-weights"),
        pytest.param({"x": _X}, id="dict"),
        pytest.param(_X, id="ndarray"),
        pytest.param(torch.zeros(2), id="tensor"),
    ],
)
def test_check_batch_returns_valid_batches_unchanged(batch):
    """Tuples of 1-3 items, dicts and bare arrays are returned as they are."""
    assert check_batch(batch, 0) is batch


def test_check_batch_turns_a_list_into_a_tuple():
    """A list of 1-3 items becomes a tuple, as Keras does."""
    assert check_batch([_X, _X], 0) == (_X, _X)


@pytest.mark.parametrize(
    ("batch", "error", "message"),
    [
        pytest.param((), ValueError, "returned a tuple of length 0", id="empty-tuple"),
        pytest.param((1, 2, 3, 4), ValueError, "returned a tuple of length 4", id="long-tuple"),
        pytest.param([], ValueError, "returned a list of length 0", id="empty-list"),
        pytest.param(None, TypeError, r"returned a NoneType \(None\)", id="none"),
        pytest.param("abc", TypeError, r"returned a str \('abc'\)", id="str"),
        pytest.param(3, TypeError, r"returned a int \(3\)", id="int"),
    ],
)
def test_check_batch_rejects_with_type_length_and_index(batch, error, message):
    """Anything else is an error naming the batch index, what came back, and the allowed forms."""
    with pytest.raises(error, match=rf"batch 7: __getitem__\(7\) {message}.*\(x, y\)"):
        check_batch(batch, 7)


# --- the module's public surface --------------------------------------------------------------


def test_all_is_sorted_and_complete():
    """__all__ is sorted, and every name in it exists."""
    assert datasets.__all__ == sorted(datasets.__all__)
    for name in datasets.__all__:
        assert hasattr(datasets, name), name


def test_keras_option_values_keras_accepts_are_accepted():
    """As in Keras: workers=0 loads in the main process, and use_multiprocessing is tested for truth."""
    opts = BatchDatasetOptions(workers=0, use_multiprocessing=1)
    assert (opts.num_workers, opts.use_multiprocessing) == (0, True)
    assert BatchDatasetOptions(workers=2, use_multiprocessing=0).thread_pool


def test_iterating_a_batch_dataset_yields_its_batches_and_stops():
    class Three(BatchDataset):
        def __len__(self):
            return 3

        def __getitem__(self, i):
            return (np.arange(2 * i, min(2 * i + 2, 5)),)

    batches = list(itertools.islice(iter(Three()), 6))
    assert [b[0].tolist() for b in batches] == [[0, 1], [2, 3], [4]]


def test_an_object_following_keras_protocol_is_taken_as_a_batch_dataset():
    """No base class and no num_batches, but Keras's options and hooks: a batch dataset."""

    class Duck:
        workers, use_multiprocessing, max_queue_size = 2, False, 4

        def __init__(self):
            self.calls = []

        def __len__(self):
            return 2

        def __getitem__(self, i):
            return (np.full(3, i),)

        def on_epoch_begin(self):
            self.calls.append("begin")

        def on_epoch_end(self):
            self.calls.append("end")

    duck = Duck()
    loader = DataLoader(duck, batch_size=None)
    assert (loader.num_workers, loader.thread_pool) == (2, True)
    assert [x.tolist() for (x,) in loader] == [[0, 0, 0], [1, 1, 1]]
    assert duck.calls == ["begin", "end"]


def test_a_negative_index_in_a_batch_is_refused_not_wrapped():
    """From a sampler, -1 is a bug: loading the last sample instead would hide it."""
    with pytest.raises(IndexError, match=r"index -1 is out of range.*\[0, 5\)"):
        ArrayDataset(np.arange(5)).get_batch([0, -1])
