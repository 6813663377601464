"""Tests for batchloader.collate: parity with torch, batchify functions, shared memory.

The collate strategies live here rather than in ``tests/strategies.py`` while
that file's sampler section is being written; they move there as one section.
"""

from __future__ import annotations

import collections
import functools
import multiprocessing
import pickle
import types
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch.utils.data import DataLoader as TorchDataLoader
from torch.utils.data import default_collate as torch_collate
from torch.utils.data import default_convert as torch_convert

from batchloader import _shm, collate
from batchloader.collate import (
    Dict,
    List,
    Pad,
    Stack,
    Tuple,
    default_collate,
    default_convert,
    numpy_collate,
)

DOCS = Path(__file__).resolve().parent.parent / "docs" / "collate.md"
Point = collections.namedtuple("Point", ["x", "y"])

# --- strategies ---------------------------------------------------------------------------------

DTYPES = ("float32", "float64", "int64", "int32", "uint8", "bool")


def _elements(dtype: str) -> st.SearchStrategy[Any]:
    if dtype == "bool":
        return st.booleans()
    if dtype.startswith("float"):
        return st.floats(-1e3, 1e3, width=int(dtype[-2:]))
    return st.integers(0, 100)


shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=3)
leaf_schemas = st.one_of(
    st.tuples(st.sampled_from(["tensor", "array"]), shapes, st.sampled_from(DTYPES)),
    st.tuples(st.just("npscalar"), st.sampled_from(DTYPES)),
    st.sampled_from([("float",), ("int",), ("bool",), ("str",), ("bytes",)]),
)
schemas = st.recursive(
    leaf_schemas,
    lambda kids: st.one_of(
        st.tuples(
            st.sampled_from([dict, collections.OrderedDict]),
            st.dictionaries(st.text("abc", min_size=1, max_size=2), kids, min_size=1, max_size=3),
        ),
        st.tuples(
            st.sampled_from(["tuple", "list", "namedtuple"]), st.lists(kids, min_size=1, max_size=3)
        ),
    ),
    max_leaves=6,
)


@functools.cache
def _namedtuple(arity: int) -> type:
    return collections.namedtuple(f"Record{arity}", [f"f{i}" for i in range(arity)])


def _leaf_samples(schema: tuple[Any, ...]) -> st.SearchStrategy[Any]:
    match schema:
        case ("tensor", shape, dtype):
            return hnp.arrays(dtype, shape, elements=_elements(dtype)).map(torch.from_numpy)
        case ("array", shape, dtype):
            return hnp.arrays(dtype, shape, elements=_elements(dtype))
        case ("npscalar", dtype):
            return _elements(dtype).map(np.dtype(dtype).type)
    return {
        ("float",): st.floats(allow_nan=False),
        ("int",): st.integers(-(2**40), 2**40),
        ("bool",): st.booleans(),
        ("str",): st.text(max_size=3),
        ("bytes",): st.binary(max_size=3),
    }[schema]


def samples(schema: tuple[Any, ...]) -> st.SearchStrategy[Any]:
    """One sample of the structure ``schema`` describes."""
    match schema:
        case (type() as mapping_type, fields):
            parts = {key: samples(sub) for key, sub in fields.items()}
            return st.fixed_dictionaries(parts).map(mapping_type)
        case ("tuple" | "list" | "namedtuple" as kind, fields):
            parts = st.tuples(*(samples(sub) for sub in fields))
            build = {"tuple": tuple, "list": list, "namedtuple": lambda t: _namedtuple(len(t))(*t)}
            return parts.map(build[kind])
    return _leaf_samples(schema)


batches = schemas.flatmap(lambda schema: st.lists(samples(schema), min_size=1, max_size=4))

# --- helpers ------------------------------------------------------------------------------------


def assert_same(ours: Any, theirs: Any, path: str = "batch") -> None:
    """Equal values, dtypes and container types, all the way down."""
    assert type(ours) is type(theirs), f"{path}: {type(ours)} != {type(theirs)}"
    if isinstance(theirs, torch.Tensor | np.ndarray):
        assert ours.dtype == theirs.dtype, f"{path}: {ours.dtype} != {theirs.dtype}"
        assert ours.shape == theirs.shape, f"{path}: {ours.shape} != {theirs.shape}"
        np.testing.assert_array_equal(np.asarray(ours), np.asarray(theirs), err_msg=path)
    elif isinstance(theirs, Mapping):
        assert list(ours) == list(theirs), path
        for key in theirs:
            assert_same(ours[key], theirs[key], f"{path}[{key!r}]")
    elif isinstance(theirs, list | tuple):
        assert len(ours) == len(theirs), path
        for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
            assert_same(a, b, f"{path}[{i}]")
    else:
        assert ours == theirs, path


def as_numpy(obj: Any) -> Any:
    """``obj`` with every tensor replaced by its array, containers kept."""
    if isinstance(obj, torch.Tensor):
        return obj.numpy()
    if isinstance(obj, Mapping):
        return type(obj)((key, as_numpy(value)) for key, value in obj.items())
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*map(as_numpy, obj))
    if isinstance(obj, list | tuple):
        return type(obj)(map(as_numpy, obj))
    return obj


def raised(fn: Any, *args: Any) -> BaseException:
    with pytest.raises(Exception) as info:
        fn(*args)
    return info.value


# --- default_collate / default_convert / numpy_collate parity -----------------------------------


@given(batches)
def test_default_collate_matches_torch(batch: list[Any]) -> None:
    """default_collate equals torch's default_collate on nested batches."""
    assert_same(default_collate(batch), torch_collate(batch))


@given(batches)
def test_default_convert_matches_torch(batch: list[Any]) -> None:
    """default_convert equals torch's default_convert on each sample and on the list."""
    assert_same(default_convert(batch), torch_convert(batch))
    for sample in batch:
        assert_same(default_convert(sample), torch_convert(sample))


@given(batches)
def test_numpy_collate_is_default_collate_as_arrays(batch: list[Any]) -> None:
    """numpy_collate gives default_collate's batch with arrays in place of tensors."""
    assert_same(numpy_collate(batch), as_numpy(default_collate(batch)))


def test_default_collate_promotes_mixed_dtypes_like_torch() -> None:
    """Tensors of different dtypes stack to torch's promoted dtype."""
    batch = [torch.tensor([1]), torch.tensor([1.5]), torch.tensor([True])]
    assert_same(default_collate(batch), torch_collate(batch))


def test_default_collate_keeps_mapping_types_like_torch() -> None:
    """OrderedDict, defaultdict (with its factory) and mappingproxy come back as torch's do."""
    factory_dict = collections.defaultdict(list, a=1)
    for sample in (collections.OrderedDict(a=1), factory_dict, types.MappingProxyType({"a": 1})):
        assert_same(default_collate([sample, sample]), torch_collate([sample, sample]))
    assert default_collate([factory_dict])["missing"] == []


class _FrozenMapping(Mapping):
    def __init__(self, *, items: dict[str, Any]) -> None:
        self._items = items

    def __getitem__(self, key: str) -> Any:
        return self._items[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


def test_default_collate_falls_back_to_dict_for_unbuildable_mappings() -> None:
    """A mapping type whose constructor refuses a dict collates to a plain dict."""
    sample = _FrozenMapping(items={"a": 1})
    assert_same(default_collate([sample, sample]), {"a": torch.tensor([1, 1])})


def test_default_collate_rebuilds_sequence_types_like_torch() -> None:
    """A list subclass keeps its type; an immutable sequence falls back to a list."""

    class Row(list):
        pass

    for sample in (Row([1, 2]), range(2), (1, "a"), Point(1.0, "a")):
        assert_same(default_collate([sample, sample]), torch_collate([sample, sample]))


def test_default_collate_keeps_autograd_history() -> None:
    """Stacking tensors that require grad gives a result with a grad_fn, as torch's does."""
    batch = [torch.ones(2, requires_grad=True), torch.zeros(2, requires_grad=True)]
    assert default_collate(batch).grad_fn is not None


def test_default_collate_accepts_reversed_and_byte_swapped_arrays() -> None:
    """Arrays torch cannot view (negative strides, big-endian) are copied, not refused."""
    batch = [np.arange(3.0)[::-1], np.arange(3, dtype=">f8")]
    expected = torch.tensor([[2.0, 1.0, 0.0], [0.0, 1.0, 2.0]], dtype=torch.float64)
    assert_same(default_collate(batch), expected)


def test_default_collate_allocates_stacks_with_shm_empty(monkeypatch: pytest.MonkeyPatch) -> None:
    """The stacked tensor's buffer comes from _shm.empty with the batch's shape and dtype."""
    calls = []
    real_empty = _shm.empty

    def spy(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        calls.append((tuple(shape), dtype))
        return real_empty(shape, dtype)

    monkeypatch.setattr(_shm, "empty", spy)
    default_collate([np.zeros((64, 128), np.float32)] * 4)  # 128 KiB: worth shared memory
    Pad()([[1, 2], [3]])
    assert calls == [((4, 64, 128), torch.float32), ((2, 2), torch.int64)]


def test_small_array_batches_are_stacked_in_one_copy_and_keep_torchs_dtype() -> None:
    """Below 64 KiB (sent inline anyway) arrays stack in one NumPy call, as torch.stack would."""
    same = [np.arange(3, dtype=np.int16)] * 4
    mixed = [np.zeros(3, np.float32), np.zeros(3, np.int64)]
    for batch in (same, mixed, [np.zeros(3, np.float64), np.zeros(3, np.float32)]):
        ours, theirs = default_collate(batch), torch_collate(batch)
        assert ours.dtype == theirs.dtype and torch.equal(ours, theirs)


def test_default_collate_error_for_unsupported_type_matches_torch() -> None:
    """An unsupported sample type raises torch's TypeError with torch's message."""
    batch = [object(), object()]
    ours, theirs = raised(default_collate, batch), raised(torch_collate, batch)
    assert type(ours) is TypeError
    assert str(ours) == str(theirs)


@pytest.mark.parametrize("dtype", ["U3", "S3", "O"])
def test_default_collate_rejects_string_and_object_arrays(dtype: str) -> None:
    """String and object arrays raise torch's TypeError naming the dtype."""
    batch = [np.array(["a"], dtype=dtype)] * 2
    ours, theirs = raised(default_collate, batch), raised(torch_collate, batch)
    assert type(ours) is TypeError
    assert str(ours) == str(theirs)


def test_default_collate_ragged_lists_raise_runtime_error() -> None:
    """Samples of different lengths raise torch's RuntimeError, with the lengths."""
    with pytest.raises(RuntimeError, match=r"should be of equal size; got lengths \[2, 3\]"):
        default_collate([[1, 2], [1, 2, 3]])


def test_default_collate_shape_mismatch_lists_shapes_and_chains() -> None:
    """Unequal tensor shapes raise a RuntimeError listing shapes and dtypes, caused by torch's."""
    error = raised(default_collate, [torch.zeros(2), torch.zeros(3, dtype=torch.int64)])
    assert type(error) is RuntimeError
    assert "[0] (2,) torch.float32, [1] (3,) torch.int64" in str(error)
    assert "batchloader.Pad" in str(error)
    assert isinstance(error.__cause__, RuntimeError)


def test_stack_error_lists_only_the_first_few_samples() -> None:
    """A failing batch of 40 names five samples and how many more there are."""
    error = raised(default_collate, [torch.zeros(i + 1) for i in range(40)])
    assert "[4] (5,)" in str(error)
    assert "[5]" not in str(error)
    assert "(35 more)" in str(error)


@pytest.mark.parametrize("kind", ["sparse", "nested"])
def test_default_collate_refuses_sparse_and_nested_tensors(kind: str) -> None:
    """Sparse and nested tensors raise a RuntimeError that asks for a collate_fn."""
    if kind == "sparse":
        tensor = torch.zeros(2).to_sparse()
    else:
        with warnings.catch_warnings():  # "nested tensors are a prototype"
            warnings.simplefilter("ignore", UserWarning)
            tensor = torch.nested.nested_tensor([torch.zeros(2)])
    with pytest.raises(RuntimeError, match=r"(sparse|nested).*collate_fn"):
        default_collate([tensor, tensor])


def test_numpy_collate_of_floats_and_ints_uses_64_bit_dtypes() -> None:
    """Python floats become float64 arrays and ints int64 arrays."""
    assert_same(numpy_collate([(1.0, 1), (2.0, 2)]), [np.array([1.0, 2.0]), np.array([1, 2])])


# --- Stack --------------------------------------------------------------------------------------


def test_stack_stacks_tensors_arrays_and_numbers() -> None:
    """Stack puts samples of any array kind along a new axis 0."""
    mixed = [torch.ones(2), np.zeros(2, np.float32)]
    assert_same(Stack()(mixed), torch.tensor([[1.0, 1.0], [0.0, 0.0]]))
    assert_same(Stack()([1.5, 2.5]), torch.tensor([1.5, 2.5], dtype=torch.float64))
    assert_same(Stack()([1, 2]), torch.tensor([1, 2]))
    assert_same(Stack()([True, False]), torch.tensor([True, False]))


def test_stack_numpy_output_returns_arrays() -> None:
    """Stack(output='numpy') returns a numpy array, from tensors too."""
    assert_same(Stack(output="numpy")([torch.ones(2), np.zeros(2)]), np.array([[1.0, 1], [0, 0]]))


@pytest.mark.parametrize("output", ["torch", "numpy"])
def test_stack_shape_mismatch_is_value_error_naming_shapes(output: str) -> None:
    """Stack raises a ValueError listing the shapes, chained from the low-level error."""
    error = raised(Stack(output=output), [np.zeros(2), np.zeros(3)])
    assert type(error) is ValueError
    assert "(2,)" in str(error)
    assert "(3,)" in str(error)
    assert error.__cause__ is not None


def test_stack_rejects_string_samples() -> None:
    """Stack names the unsupported dtype and points at List."""
    with pytest.raises(TypeError, match=r"dtype <U1.*List"):
        Stack()(["a", "b"])


@pytest.mark.parametrize("fn", [Stack(), Pad()])
def test_batchify_rejects_an_empty_batch(fn: Any) -> None:
    """Stack and Pad refuse an empty batch with a ValueError."""
    with pytest.raises(ValueError, match="empty batch"):
        fn([])


# --- Pad ----------------------------------------------------------------------------------------


@st.composite
def pad_cases(draw: st.DrawFn) -> tuple[list[np.ndarray], int, Any, str]:
    """Samples of one rank that differ along ``axis`` only, and a pad value for their dtype."""
    dtype = draw(st.sampled_from(DTYPES))
    ndim = draw(st.integers(1, 3))
    axis = draw(st.integers(-ndim, ndim - 1))
    fixed = draw(hnp.array_shapes(min_dims=ndim, max_dims=ndim, min_side=1, max_side=3))
    lengths = draw(st.lists(st.integers(0, 5), min_size=1, max_size=4))
    arrays = []
    for n in lengths:
        shape = list(fixed)
        shape[axis] = n
        arrays.append(draw(hnp.arrays(dtype, tuple(shape), elements=_elements(dtype))))
    return (
        arrays,
        axis,
        draw(_elements(dtype).filter(bool)),
        draw(st.sampled_from(["torch", "numpy"])),
    )


@given(pad_cases())
def test_pad_keeps_samples_and_fills_the_rest(case: tuple[list[np.ndarray], int, Any, str]) -> None:
    """Each row holds its sample, then pad_val; the returned lengths are the input lengths."""
    arrays, axis, pad_val, output = case
    padded, lengths = Pad(axis, pad_val, ret_length=True, output=output)(arrays)
    padded, lengths = np.asarray(padded), np.asarray(lengths)
    assert padded.dtype == arrays[0].dtype
    assert lengths.dtype == np.int64
    assert lengths.tolist() == [a.shape[axis] for a in arrays]
    assert padded.shape[1:][axis] == max(lengths)
    for row, array, n in zip(padded, arrays, lengths, strict=True):
        np.testing.assert_array_equal(np.take(row, range(n), axis=axis), array)
        tail = np.take(row, range(n, row.shape[axis]), axis=axis)
        assert (tail == pad_val).all()


def test_pad_ret_length_types_follow_output() -> None:
    """Lengths are an int64 tensor for torch output and an int64 array for numpy output."""
    _, lengths = Pad(ret_length=True)([[1], [1, 2]])
    _, np_lengths = Pad(ret_length=True, output="numpy")([[1], [1, 2]])
    assert_same(lengths, torch.tensor([1, 2]))
    assert_same(np_lengths, np.array([1, 2]))


@pytest.mark.parametrize(
    ("dtype", "expected"),
    [
        (np.float16, torch.float16),
        (torch.int32, torch.int32),
        ("float", torch.float64),
        ("bfloat16", torch.bfloat16),
    ],
)
def test_pad_dtype_accepts_numpy_torch_and_names(dtype: Any, expected: torch.dtype) -> None:
    """dtype may be a numpy dtype, a torch dtype, a numpy name or a torch-only name."""
    assert Pad(dtype=dtype)([[1, 2], [3]]).dtype == expected


def test_pad_numpy_output_converts_torch_dtype() -> None:
    """With output='numpy' a torch dtype becomes the matching numpy dtype."""
    assert Pad(dtype=torch.int16, output="numpy")([[1, 2], [3]]).dtype == np.int16


def test_pad_round_to_pads_to_a_multiple() -> None:
    """round_to=4 pads a longest length of 5 to 8."""
    assert Pad(round_to=4)([list(range(5)), [1]]).shape == (2, 8)


def test_pad_other_axis_mismatch_is_value_error_naming_shapes() -> None:
    """Samples that differ on an axis other than ``axis`` raise a ValueError with shapes."""
    with pytest.raises(ValueError, match=r"every axis but axis 0.*\(2, 3\).*\(3, 4\)"):
        Pad()([np.zeros((2, 3)), np.zeros((3, 4))])


def test_pad_axis_out_of_range_is_value_error() -> None:
    """An axis the samples lack raises a ValueError naming axis and shape."""
    with pytest.raises(ValueError, match=r"axis=2 is out of range for samples of shape \(3,\)"):
        Pad(axis=2)([np.zeros(3)])


# --- Tuple, Dict, List --------------------------------------------------------------------------


def test_tuple_applies_one_function_per_field() -> None:
    """Tuple gives field i to function i and returns a tuple."""
    tokens, label, name = Tuple(Pad(), Stack(), List())([([1, 2], 0, "a"), ([3], 1, "b")])
    assert_same(tokens, torch.tensor([[1, 2], [3, 0]]))
    assert_same(label, torch.tensor([0, 1]))
    assert name == ["a", "b"]


def test_tuple_accepts_one_list_of_functions() -> None:
    """Tuple([f, g]) behaves like Tuple(f, g)."""
    data = [(1, 2), (3, 4)]
    assert_same(Tuple([Stack(), List()])(data), Tuple(Stack(), List())(data))


def test_tuple_wrong_arity_names_fields_and_functions() -> None:
    """A sample with the wrong number of fields raises a ValueError naming both counts."""
    with pytest.raises(ValueError, match=r"sample 1 has 3 fields .* Tuple has 2 functions"):
        Tuple(Stack(), Stack())([(1, 2), (1, 2, 3)])


def test_dict_applies_one_function_per_key() -> None:
    """Dict collates each key with its function and drops keys without one."""
    data = [{"x": [1, 2], "y": 0, "extra": "a"}, {"x": [3], "y": 1, "extra": "b"}]
    assert_same(
        Dict({"x": Pad(), "y": Stack()})(data),
        {"x": torch.tensor([[1, 2], [3, 0]]), "y": torch.tensor([0, 1])},
    )


def test_dict_missing_key_is_key_error_naming_it() -> None:
    """A sample without a key raises a KeyError naming the key and the sample."""
    with pytest.raises(KeyError, match=r"sample 1 has no key 'y'"):
        Dict({"y": Stack()})([{"y": 1}, {"x": 2}])


def test_list_returns_samples_unchanged() -> None:
    """List returns the samples themselves, in a list."""
    samples = [object(), "a", [1, 2]]
    result = List()(tuple(samples))
    assert type(result) is list
    assert all(a is b for a, b in zip(result, samples, strict=True))


def test_batchify_functions_compose_and_pickle() -> None:
    """Nested batchify functions survive pickling (for spawned workers) and still work."""
    batchify = Tuple(Dict({"x": Pad(axis=-1, pad_val=-1)}), Stack(output="numpy"))
    clone = pickle.loads(pickle.dumps(batchify))
    data = [({"x": [[1, 2]]}, 1.0), ({"x": [[3]]}, 2.0)]
    assert_same(clone(data), batchify(data))
    assert_same(clone(data)[0]["x"], torch.tensor([[[1, 2]], [[3, -1]]]))


def test_batchify_works_as_torch_collate_fn() -> None:
    """torch's own DataLoader accepts a batchify function as collate_fn."""
    data = [([1] * (i + 1), i) for i in range(4)]
    loader = TorchDataLoader(data, batch_size=2, collate_fn=Tuple(Pad(ret_length=True), Stack()))
    (tokens, lengths), labels = next(iter(loader))
    assert tokens.shape == (2, 2)
    assert_same(lengths, torch.tensor([1, 2]))
    assert_same(labels, torch.tensor([0, 1]))


# --- constructor validation and repr ------------------------------------------------------------


@pytest.mark.parametrize(
    ("build", "error", "words"),
    [
        (lambda: Stack(output="jax"), ValueError, "output must be 'torch' or 'numpy'; got 'jax'"),
        (lambda: Pad(axis=1.5), TypeError, "axis must be an int; got 1.5"),
        (lambda: Pad(pad_val="x"), TypeError, "pad_val must be a number; got 'x'"),
        (lambda: Pad(ret_length=1), TypeError, "ret_length must be a bool; got 1"),
        (lambda: Pad(round_to=0), ValueError, "round_to must be None or a positive int; got 0"),
        (lambda: Pad(dtype="nope"), TypeError, "dtype must be .* got 'nope'"),
        (lambda: Pad(dtype=torch.bfloat16, output="numpy"), TypeError, "numpy output"),
        (lambda: Pad(output="tf"), ValueError, "output must be"),
        (lambda: Tuple(), ValueError, "Tuple needs at least one function"),
        (lambda: Tuple(Stack(), 3), TypeError, "function for 1 must be callable; got 3"),
        (lambda: Dict([("a", Stack())]), TypeError, "Dict takes a mapping"),
        (lambda: Dict({"a": None}), TypeError, "function for 'a' must be callable; got None"),
        (lambda: Dict({}), ValueError, "Dict needs at least one function"),
    ],
)
def test_constructors_validate_arguments(build: Any, error: type, words: str) -> None:
    """Bad constructor arguments raise the exact error type naming the argument and value."""
    with pytest.raises(error, match=words):
        build()


def test_reprs_show_every_option() -> None:
    """reprs name the class, its non-default options and nested functions by name."""
    assert repr(Stack()) == "Stack()"
    assert repr(Stack(output="numpy")) == "Stack(output='numpy')"
    assert repr(Pad(axis=1, pad_val=-1, dtype="int32", round_to=8)) == (
        "Pad(axis=1, pad_val=-1, ret_length=False, dtype='int32', round_to=8, output='torch')"
    )
    assert (
        repr(Tuple(Stack(), default_collate, List())) == "Tuple(Stack(), default_collate, List())"
    )
    assert repr(Dict({"x": Pad(), "y": Stack()})).startswith("Dict({'x': Pad(axis=0")


def test_all_is_sorted_complete_and_documented() -> None:
    """__all__ is sorted, names real objects, and each name appears in docs/collate.md."""
    assert collate.__all__ == sorted(collate.__all__)
    docs = DOCS.read_text()
    for name in collate.__all__:
        assert callable(getattr(collate, name))
        assert f"`{name}" in docs, name


# --- shared memory inside a worker --------------------------------------------------------------


def _collate_in_worker(prefix: str, names: Any, which: str, conn: Any) -> None:
    """Child-process body: collate with worker allocation on, send back the packed batch."""
    try:
        _shm.enable_worker_allocation(prefix, names=names)
        builders = {
            "tensors": lambda: default_collate([torch.full((128, 128), 1.0)] * 4),
            "arrays": lambda: default_collate([np.full((128, 128), 1.0, np.float32)] * 4),
            "pad": lambda: Pad(pad_val=1.0)([torch.ones(128, 128), torch.ones(100, 128)]),
            "stack": lambda: Stack()([np.ones((128, 128), np.float32)] * 4),
        }
        conn.send(_shm.pack(builders[which]()))
    except BaseException as e:
        conn.send(e)
    finally:
        _shm._arena = None
        conn.close()


@pytest.mark.parametrize("which", ["tensors", "arrays", "pad", "stack"])
def test_worker_collates_large_batches_into_shared_memory(which: str) -> None:
    """In a worker, a large stacked or padded batch is a shared segment, not a pickled copy."""
    prefix = _shm.new_prefix()
    ctx = multiprocessing.get_context("fork")
    names = _shm.Names(ctx, 1)
    parent, child = ctx.Pipe(duplex=False)
    process = ctx.Process(target=_collate_in_worker, args=(prefix, names, which, child))
    try:
        process.start()
        child.close()
        assert parent.poll(10), "the child sent nothing"
        packed = parent.recv()
        assert isinstance(packed, _shm._ShmArray), packed
        batch = _shm.Receiver(None).unpack(packed)
        assert bool((batch == 1).all())
        assert batch.shape[1:] == (128, 128)
    finally:
        process.join(10)
        parent.close()
        leaked = names.unlink_all()
    assert leaked == 0, "a segment was left in /dev/shm"
    assert _shm._arena is None
