"""A list of samples to one batch: torch's default collation and Gluon-style batchify functions.

:func:`default_collate` and :func:`default_convert` have torch's semantics;
:func:`numpy_collate` is the same walk producing arrays. :class:`Stack`, :class:`Pad`,
:class:`Tuple`, :class:`Dict` and :class:`List` compose into a ``collate_fn``. Every
stacked or padded tensor comes from :func:`batchloader._shm.empty`: a plain tensor in
the main process, a shared-memory segment in a worker, so the batch is not copied again.
"""

from __future__ import annotations

import copy
import functools
import numbers
import types
from collections.abc import Callable, Mapping, MutableMapping, MutableSequence, Sequence, Sized
from typing import Any, Literal

import numpy as np
import torch

from batchloader import _shm
from batchloader._typing import CollateFn

__all__ = [
    "Dict",
    "List",
    "Pad",
    "Stack",
    "Tuple",
    "default_collate",
    "default_convert",
    "numpy_collate",
]

_Output = Literal["torch", "numpy"]
_OUTPUTS: tuple[str, ...] = ("torch", "numpy")
# Error messages list this many samples: a batch of 256 shapes would bury the fact.
_MAX_LISTED = 5
# dtype kinds torch cannot hold (bytes, str, object), as torch's collate rejects them.
_STR_OBJ_KINDS = frozenset("SUO")
_UNSUPPORTED = (
    "{name}: batch must contain tensors, numpy arrays, numbers, dicts or lists; found {found}"
)

_Leaf = Callable[[Sequence[Any]], Any]
_Leaves = tuple[tuple[type | tuple[type, ...], _Leaf], ...]


def _summary(x: Any) -> str:
    if hasattr(x, "shape") and hasattr(x, "dtype"):
        return f"{tuple(x.shape)} {x.dtype}"
    return type(x).__name__ + (f" of length {len(x)}" if isinstance(x, Sized) else "")


def _describe(samples: Sequence[Any]) -> str:
    """``[0] (2, 3) float32, [1] (4, 3) float32, ... (30 more)`` for an error message."""
    shown = [f"[{i}] {_summary(x)}" for i, x in enumerate(samples[:_MAX_LISTED])]
    if len(samples) > _MAX_LISTED:
        shown.append(f"... ({len(samples) - _MAX_LISTED} more)")
    return ", ".join(shown)


def _stack_failure(samples: Sequence[Any], cause: BaseException) -> str:
    return (
        f"cannot stack {len(samples)} samples into one batch ({cause}); "
        f"their shapes and dtypes: {_describe(samples)}. Make the samples the same shape, "
        "pad them (batchloader.Pad), or pass a collate_fn that handles them"
    )


def _fn_name(fn: Callable[..., Any]) -> str:
    """A stable name for a repr: functions by name, objects by their own repr."""
    if isinstance(fn, types.FunctionType | types.BuiltinFunctionType):
        return fn.__qualname__
    return repr(fn)


def _from_numpy(array: np.ndarray) -> torch.Tensor:
    """A tensor viewing ``array``; a native-order contiguous copy where torch cannot view it."""
    try:
        return torch.from_numpy(array)
    except ValueError:  # negative strides or a non-native byte order
        native = array.dtype.newbyteorder("=")
        return torch.from_numpy(np.ascontiguousarray(array, dtype=native))


def _checked_array(value: Any) -> np.ndarray:
    array = np.asarray(value)
    if array.dtype.kind in _STR_OBJ_KINDS:
        raise TypeError(
            f"cannot batch a sample of type {type(value).__name__} with dtype {array.dtype}; "
            "Stack and Pad take tensors, numeric arrays and numbers (use List for other samples)"
        )
    return array


def _to_tensor(value: Any) -> torch.Tensor:
    return value if isinstance(value, torch.Tensor) else _from_numpy(_checked_array(value))


def _to_array(value: Any) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return _checked_array(value)


def _stack_out(tensors: Sequence[Any]) -> torch.Tensor | None:
    """The stacked batch's buffer, or None where ``torch.stack`` must allocate (or refuse) it."""
    first = tensors[0]
    for t in tensors:
        if not isinstance(t, torch.Tensor) or t.shape != first.shape or t.device.type != "cpu":
            return None  # torch.stack raises the error that names the mismatch
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return None  # out= does not support autograd
    dtype = functools.reduce(torch.promote_types, (t.dtype for t in tensors))
    return _shm.empty((len(tensors), *first.shape), dtype)


def _stack_tensors(
    tensors: Sequence[torch.Tensor], error: type[Exception] = RuntimeError
) -> torch.Tensor:
    """Stacks tensors along a new axis 0; inside a worker, into shared memory."""
    try:
        return torch.stack(tensors, out=_stack_out(tensors))
    except RuntimeError as e:
        raise error(_stack_failure(tensors, e)) from e


def _stack_arrays(arrays: Sequence[np.ndarray]) -> np.ndarray:
    try:
        return np.stack(arrays)
    except ValueError as e:
        raise ValueError(_stack_failure(arrays, e)) from e


def _reject_str_obj(dtype: np.dtype, name: str) -> None:
    if dtype.kind in _STR_OBJ_KINDS:
        raise TypeError(_UNSUPPORTED.format(name=name, found=dtype))


def _collate_tensors(batch: Sequence[torch.Tensor]) -> torch.Tensor:
    elem = batch[0]
    if elem.is_nested or elem.layout != torch.strided:
        kind = "nested" if elem.is_nested else f"sparse ({elem.layout})"
        raise RuntimeError(
            f"Batches of {kind} tensors are not supported by default_collate; "
            "pass a collate_fn that handles them"
        )
    return _stack_tensors(batch)


def _collate_arrays(batch: Sequence[np.ndarray]) -> torch.Tensor:
    _reject_str_obj(batch[0].dtype, "default_collate")
    tensors = [_from_numpy(a) if isinstance(a, np.ndarray) else torch.as_tensor(a) for a in batch]
    return _stack_tensors(tensors)


def _collate_arrays_np(batch: Sequence[np.ndarray | torch.Tensor]) -> np.ndarray:
    if isinstance(batch[0], np.ndarray):
        _reject_str_obj(batch[0].dtype, "numpy_collate")
    return _stack_arrays([_to_array(x) for x in batch])


def _unchanged(batch: Sequence[Any]) -> Sequence[Any]:
    return batch


_NUMPY_SCALARS = (np.bool_, np.number, np.object_)

# Checked in order with isinstance: np.float64 is a float and bool is an int.
_TORCH_LEAVES: _Leaves = (
    (torch.Tensor, _collate_tensors),
    (np.ndarray, _collate_arrays),
    (_NUMPY_SCALARS, torch.as_tensor),
    (float, functools.partial(torch.tensor, dtype=torch.float64)),
    (int, torch.tensor),
    ((str, bytes), _unchanged),
)
_NUMPY_LEAVES: _Leaves = (
    ((torch.Tensor, np.ndarray), _collate_arrays_np),
    (_NUMPY_SCALARS, np.asarray),
    (float, functools.partial(np.asarray, dtype=np.float64)),
    (int, np.asarray),
    ((str, bytes), _unchanged),
)


def _rebuild_mapping(like: Mapping[Any, Any], values: dict[Any, Any]) -> Mapping[Any, Any]:
    """``values`` in the mapping type of ``like`` where it can be built, else a dict."""
    try:
        if isinstance(like, MutableMapping):
            clone = copy.copy(like)  # keeps extra state, e.g. a defaultdict's factory
            clone.update(values)
            return clone
        return type(like)(values)
    except TypeError:
        return values


def _rebuild_sequence(like: Sequence[Any], values: list[Any]) -> Sequence[Any]:
    """``values`` in the sequence type of ``like``; a plain tuple becomes a list, as in torch."""
    if isinstance(like, tuple):
        return values
    try:
        if isinstance(like, MutableSequence):
            clone = copy.copy(like)
            for i, value in enumerate(values):
                clone[i] = value
            return clone
        return type(like)(values)
    except TypeError:
        return values


def _is_namedtuple(value: Any) -> bool:
    return isinstance(value, tuple) and hasattr(value, "_fields")


def _transpose(batch: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
    lengths = [len(sample) for sample in batch]
    if any(n != lengths[0] for n in lengths):
        raise RuntimeError(
            "each element in list of batch should be of equal size; "
            f"got lengths {lengths[:_MAX_LISTED]}{' ...' if len(lengths) > _MAX_LISTED else ''}"
        )
    return list(zip(*batch, strict=True))


def _collate(batch: Sequence[Any], leaves: _Leaves, name: str) -> Any:
    elem = batch[0]
    for kinds, leaf in leaves:
        if isinstance(elem, kinds):
            return leaf(batch)
    if isinstance(elem, Mapping):
        values = {key: _collate([d[key] for d in batch], leaves, name) for key in elem}
        return _rebuild_mapping(elem, values)
    if _is_namedtuple(elem):
        return type(elem)(*(_collate(f, leaves, name) for f in zip(*batch, strict=False)))
    if isinstance(elem, Sequence):
        columns = [_collate(c, leaves, name) for c in _transpose(batch)]
        return _rebuild_sequence(elem, columns)
    raise TypeError(_UNSUPPORTED.format(name=name, found=type(elem)))


def default_collate(batch: Sequence[Any]) -> Any:
    """Puts a list of samples into one batch, as ``torch.utils.data.default_collate`` does.

    Tensors, NumPy arrays and NumPy scalars are stacked into tensors along a new
    axis 0; Python floats become a float64 tensor, ints an int64 tensor, bools a
    bool tensor; strings and bytes stay a sequence; mappings, namedtuples and
    other sequences are collated field by field. Inside a worker the stacked
    tensors are allocated in shared memory.

    Args:
        batch: the samples, all of the same structure.

    Example:
        >>> default_collate([{"x": 1.0, "y": "a"}, {"x": 2.0, "y": "b"}])
        {'x': tensor([1., 2.], dtype=torch.float64), 'y': ['a', 'b']}
    """
    return _collate(batch, _TORCH_LEAVES, "default_collate")


def numpy_collate(batch: Sequence[Any]) -> Any:
    """:func:`default_collate` producing NumPy arrays instead of tensors.

    Example:
        >>> numpy_collate([(np.zeros(2), 1), (np.ones(2), 2)])
        [array([[0., 0.],
               [1., 1.]]), array([1, 2])]
    """
    return _collate(batch, _NUMPY_LEAVES, "numpy_collate")


def default_convert(data: Any) -> Any:
    """Converts NumPy arrays and scalars inside ``data`` to tensors, as torch's function does.

    Used where the loader does not batch (``batch_size=None``). String and
    object arrays, and everything that is neither NumPy nor a container, are
    returned unchanged; a plain tuple becomes a list, as in torch.

    Example:
        >>> default_convert({"x": np.array([1, 2]), "n": 3})
        {'x': tensor([1, 2]), 'n': 3}
    """
    if isinstance(data, torch.Tensor | np.str_ | np.bytes_):
        return data
    if isinstance(data, np.ndarray | np.generic):
        return data if data.dtype.kind in _STR_OBJ_KINDS else torch.as_tensor(data)
    if isinstance(data, Mapping):
        return _rebuild_mapping(data, {key: default_convert(data[key]) for key in data})
    if _is_namedtuple(data):
        return type(data)(*(default_convert(d) for d in data))
    if isinstance(data, Sequence) and not isinstance(data, str | bytes):
        return _rebuild_sequence(data, [default_convert(d) for d in data])
    return data


def _validate_output(owner: str, output: Any) -> _Output:
    if output not in _OUTPUTS:
        raise ValueError(f"{owner}: output must be 'torch' or 'numpy'; got {output!r}")
    return output


def _require_samples(owner: str, data: Sequence[Any]) -> None:
    if len(data) == 0:
        raise ValueError(f"{owner} got an empty batch; it needs at least one sample")


class Stack:
    """Stacks samples (tensors, arrays or numbers) along a new axis 0.

    Python floats become float64, ints int64, as in :func:`default_collate`.

    Args:
        output: ``'torch'`` for a tensor (in shared memory inside a worker) or
            ``'numpy'`` for an array.

    Example:
        >>> Stack()([np.array([1, 2]), np.array([3, 4])])
        tensor([[1, 2],
                [3, 4]])
    """

    __slots__ = ("output",)

    def __init__(self, *, output: _Output = "torch") -> None:
        self.output = _validate_output("Stack", output)

    def __call__(self, data: Sequence[Any]) -> torch.Tensor | np.ndarray:
        _require_samples("Stack", data)
        if self.output == "numpy":
            return _stack_arrays([_to_array(x) for x in data])
        if not any(isinstance(x, torch.Tensor | np.ndarray) for x in data):
            try:  # numbers (or nested lists): one small array, not one tensor each
                return _from_numpy(_checked_array(data))
            except ValueError as e:
                raise ValueError(_stack_failure(data, e)) from e
        return _stack_tensors([_to_tensor(x) for x in data], error=ValueError)

    def __repr__(self) -> str:
        return "Stack()" if self.output == "torch" else f"Stack(output={self.output!r})"


def _resolve_dtype(dtype: Any, output: _Output) -> torch.dtype | np.dtype:
    """``dtype`` as the torch or numpy dtype that ``output`` needs."""
    try:
        if isinstance(dtype, torch.dtype):
            return dtype if output == "torch" else torch.empty(0, dtype=dtype).numpy().dtype
        # numpy reads names first: "float" is float64 there but float32 in torch
        as_numpy = np.dtype(dtype)
        return as_numpy if output == "numpy" else torch.from_numpy(np.empty(0, as_numpy)).dtype
    except TypeError as e:
        by_name = getattr(torch, dtype, None) if isinstance(dtype, str) else None
        if output == "torch" and isinstance(by_name, torch.dtype):
            return by_name  # names numpy lacks, e.g. "bfloat16"
        raise TypeError(
            f"Pad: dtype must be a numpy dtype, torch dtype or dtype name that {output} "
            f"output can hold; got {dtype!r}"
        ) from e


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _validate_pad_args(axis: Any, pad_val: Any, ret_length: Any, round_to: Any) -> None:
    if not _is_int(axis):
        raise TypeError(f"Pad: axis must be an int; got {axis!r}")
    if not isinstance(pad_val, numbers.Number):
        raise TypeError(f"Pad: pad_val must be a number; got {pad_val!r}")
    if not isinstance(ret_length, bool):
        raise TypeError(f"Pad: ret_length must be a bool; got {ret_length!r}")
    if round_to is not None and not (_is_int(round_to) and round_to >= 1):
        raise ValueError(f"Pad: round_to must be None or a positive int; got {round_to!r}")


class Pad:
    """Pads variable-length samples along ``axis`` to the longest in the batch, then stacks.

    Args:
        axis: the axis of each sample that varies in length (negative counts from the end).
        pad_val: the value written past each sample's end.
        ret_length: also return the samples' lengths, as an int64 tensor or array.
        dtype: the batch's dtype (numpy dtype, torch dtype or name); by default the
            samples' common dtype.
        round_to: pad to a multiple of this length (fewer distinct shapes, e.g. for kernels).
        output: ``'torch'`` or ``'numpy'``.

    Samples must agree on every axis but ``axis``.

    Example:
        >>> Pad(pad_val=-1, ret_length=True)([[1, 2, 3], [4]])
        (tensor([[ 1,  2,  3],
                [ 4, -1, -1]]), tensor([3, 1]))
    """

    __slots__ = ("_dtype", "axis", "dtype", "output", "pad_val", "ret_length", "round_to")

    def __init__(
        self,
        axis: int = 0,
        pad_val: float = 0,
        ret_length: bool = False,
        dtype: Any = None,
        *,
        round_to: int | None = None,
        output: _Output = "torch",
    ) -> None:
        _validate_pad_args(axis, pad_val, ret_length, round_to)
        self.output = _validate_output("Pad", output)
        self._dtype = None if dtype is None else _resolve_dtype(dtype, self.output)
        self.axis, self.pad_val, self.ret_length = axis, pad_val, ret_length
        self.dtype, self.round_to = dtype, round_to

    def __call__(self, data: Sequence[Any]) -> Any:
        _require_samples("Pad", data)
        convert = _to_tensor if self.output == "torch" else _to_array
        samples = [convert(x) for x in data]
        axis = self._check_shapes(samples)
        lengths = [s.shape[axis] for s in samples]
        longest = max(lengths)
        if self.round_to is not None:
            longest = -(-longest // self.round_to) * self.round_to
        shape = list(samples[0].shape)
        shape[axis] = longest
        out = self._allocate((len(samples), *shape), samples)
        before = (slice(None),) * axis
        for row, sample, n in zip(out, samples, lengths, strict=True):
            row[(*before, slice(0, n))] = sample
            row[(*before, slice(n, None))] = self.pad_val
        if not self.ret_length:
            return out
        if self.output == "torch":
            return out, torch.tensor(lengths, dtype=torch.int64)
        return out, np.asarray(lengths, dtype=np.int64)

    def _check_shapes(self, samples: Sequence[Any]) -> int:
        """The axis as a non-negative index; samples must agree on every other axis."""
        ndim = samples[0].ndim
        if not -ndim <= self.axis < ndim:
            raise ValueError(
                f"Pad: axis={self.axis} is out of range for samples of shape "
                f"{tuple(samples[0].shape)}; samples need {ndim} dimensions"
            )
        axis = self.axis % ndim

        def others(s: Any) -> tuple[int, ...]:
            return (s.ndim, *s.shape[:axis], *s.shape[axis + 1 :])

        if any(others(s) != others(samples[0]) for s in samples):
            raise ValueError(
                f"Pad: samples must agree on every axis but axis {self.axis}; "
                f"got shapes and dtypes {_describe(samples)}"
            )
        return axis

    def _allocate(self, shape: tuple[int, ...], samples: Sequence[Any]) -> Any:
        if self.output == "numpy":
            common = np.result_type(*(s.dtype for s in samples))
            return np.empty(shape, dtype=common if self._dtype is None else self._dtype)
        common = functools.reduce(torch.promote_types, (s.dtype for s in samples))
        return _shm.empty(shape, common if self._dtype is None else self._dtype)

    def __repr__(self) -> str:
        return (
            f"Pad(axis={self.axis}, pad_val={self.pad_val!r}, ret_length={self.ret_length}, "
            f"dtype={self.dtype!r}, round_to={self.round_to!r}, output={self.output!r})"
        )


def _validate_fns(owner: str, fns: Mapping[Any, Any]) -> None:
    if not fns:
        raise ValueError(f"{owner} needs at least one function")
    for key, fn in fns.items():
        if not callable(fn):
            raise TypeError(f"{owner}: the function for {key!r} must be callable; got {fn!r}")


class Tuple:
    """Applies the i-th function to the i-th field of every sample; returns a tuple.

    Accepts the functions as arguments or as one list: ``Tuple(Stack(), Pad())``
    is ``Tuple([Stack(), Pad()])``.

    Example:
        >>> batchify = Tuple(Pad(pad_val=0), Stack())
        >>> tokens, label = batchify([([1, 2, 3], 0), ([4], 1)])
        >>> tokens.shape, label
        (torch.Size([2, 3]), tensor([0, 1]))
    """

    __slots__ = ("fns",)

    def __init__(self, *fns: CollateFn | Sequence[CollateFn]) -> None:
        one_list = len(fns) == 1 and isinstance(fns[0], list | tuple)
        flat: tuple[Any, ...] = tuple(fns[0]) if one_list else fns  # type: ignore[arg-type]
        _validate_fns("Tuple", dict(enumerate(flat)))
        self.fns: tuple[CollateFn, ...] = flat

    def __call__(self, data: Sequence[Any]) -> tuple[Any, ...]:
        for i, sample in enumerate(data):
            size = len(sample) if isinstance(sample, Sized) else None
            if size != len(self.fns):
                raise ValueError(
                    f"sample {i} has {size} fields ({type(sample).__name__}) but Tuple has "
                    f"{len(self.fns)} functions; give Tuple one function per field"
                )
        return tuple(fn([s[j] for s in data]) for j, fn in enumerate(self.fns))

    def __repr__(self) -> str:
        return f"Tuple({', '.join(_fn_name(fn) for fn in self.fns)})"


class Dict:
    """Applies each function to its key's values across the samples; returns a dict.

    Keys of the samples that have no function are dropped.

    Example:
        >>> batchify = Dict({"tokens": Pad(), "label": Stack()})
        >>> batchify([{"tokens": [1, 2], "label": 0}, {"tokens": [3], "label": 1}])
        {'tokens': tensor([[1, 2],
                [3, 0]]), 'label': tensor([0, 1])}
    """

    __slots__ = ("fns",)

    def __init__(self, fns: Mapping[Any, CollateFn]) -> None:
        if not isinstance(fns, Mapping):
            raise TypeError(f"Dict takes a mapping of key -> function; got {fns!r}")
        _validate_fns("Dict", fns)
        self.fns: dict[Any, CollateFn] = dict(fns)

    def __call__(self, data: Sequence[Mapping[Any, Any]]) -> dict[Any, Any]:
        return {key: fn(self._column(data, key)) for key, fn in self.fns.items()}

    def _column(self, data: Sequence[Mapping[Any, Any]], key: Any) -> list[Any]:
        try:
            return [sample[key] for sample in data]
        except KeyError as e:
            i = next(i for i, s in enumerate(data) if key not in s)
            raise KeyError(
                f"sample {i} has no key {key!r} (its keys: {list(data[i])}); "
                f"Dict has functions for {list(self.fns)}"
            ) from e

    def __repr__(self) -> str:
        body = ", ".join(f"{key!r}: {_fn_name(fn)}" for key, fn in self.fns.items())
        return f"Dict({{{body}}})"


class List:
    """Returns the samples as a list, unchanged (for strings, ragged objects, metadata).

    Example:
        >>> Tuple(Stack(), List())([(1, "a"), (2, "b")])
        (tensor([1, 2]), ['a', 'b'])
    """

    __slots__ = ()

    def __call__(self, data: Sequence[Any]) -> list[Any]:
        return list(data)

    def __repr__(self) -> str:
        return "List()"
