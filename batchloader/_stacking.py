"""Stacking samples into a batch: the leaf rules and structure walk behind collation.

Private to :mod:`batchloader.collate` and its batchify functions.
"""

from __future__ import annotations

import functools
import types
from collections.abc import Callable, Mapping, Sequence, Sized
from typing import Any, Literal

import numpy as np
import torch

from batchloader import _shm
from batchloader._nested import rebuild_mapping, rebuild_sequence

__all__ = [
    "_NUMPY_LEAVES",
    "_OUTPUTS",
    "_STR_OBJ_KINDS",
    "_TORCH_LEAVES",
    "_Output",
    "_checked_array",
    "_collate",
    "_describe",
    "_fn_name",
    "_from_numpy",
    "_is_namedtuple",
    "_rebuild_sequence",
    "_stack_arrays",
    "_stack_failure",
    "_stack_tensors",
    "_to_array",
    "_to_tensor",
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
    if not _shm.allocating():
        return None  # outside a worker torch.stack's own allocation is the same, and cheaper
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
        return torch.stack(list(tensors), out=_stack_out(tensors))
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
        kind = "nested" if elem.is_nested else "sparse"
        raise RuntimeError(
            f"Batches of {kind} tensors are not currently supported by the default collate_fn; "
            "please provide a custom collate_fn to handle them appropriately "
            f"(got layout {elem.layout})."
        )
    return _stack_tensors(batch)


def _collate_arrays(batch: Sequence[np.ndarray]) -> torch.Tensor:
    _reject_str_obj(batch[0].dtype, "default_collate")
    stacked = _stack_uniform(batch)
    if stacked is not None:
        return stacked
    tensors = [_from_numpy(a) if isinstance(a, np.ndarray) else torch.as_tensor(a) for a in batch]
    return _stack_tensors(tensors)


def _stack_uniform(batch: Sequence[np.ndarray]) -> torch.Tensor | None:
    """The common case in one NumPy copy: native arrays of one dtype and shape.

    None for anything else (mixed dtypes promote as torch.stack does, elsewhere).
    """
    first = batch[0]
    dtype, shape = first.dtype, first.shape
    nbytes = first.nbytes * len(batch)
    # Below shared memory's threshold the batch travels inline: one np.array() call is fastest.
    if nbytes < _shm._SHM_MIN_BYTES and dtype.isnative and dtype.kind in _TORCH_KINDS:
        # One C-level copy, no per-sample check in Python. NumPy promotes mixed dtypes;
        # if the result kept the first sample's dtype, torch.stack would keep it too.
        try:
            stacked = np.array(batch)
        except ValueError:  # ragged: the general path raises torch's error
            return None
        if stacked.dtype == dtype and stacked.shape == (len(batch), *shape):
            return torch.from_numpy(stacked)
        return None
    if nbytes >= _PARALLEL_COPY_BYTES and torch.get_num_threads() > 1:
        return None  # torch.stack copies a large batch with all its threads; NumPy uses one
    if not dtype.isnative or not all(
        type(a) is np.ndarray and a.dtype == dtype and a.shape == shape for a in batch
    ):
        return None
    try:
        torch_dtype = torch.from_numpy(first.reshape(-1)[:0]).dtype
    except TypeError:
        return None  # a dtype torch lacks: the general path raises torch's error
    out = _shm.empty((len(batch), *shape), torch_dtype)
    np.stack(batch, out=out.numpy())
    return out


def _collate_arrays_np(batch: Sequence[np.ndarray | torch.Tensor]) -> np.ndarray:
    if isinstance(batch[0], np.ndarray):
        _reject_str_obj(batch[0].dtype, "numpy_collate")
    return _stack_arrays([_to_array(x) for x in batch])


def _unchanged(batch: Sequence[Any]) -> Sequence[Any]:
    return batch


# From this size torch.stack's multi-threaded copy beats one NumPy copy (when torch has threads).
_PARALLEL_COPY_BYTES = 1 << 20
# The dtype kinds torch has (bool, signed, unsigned, float, complex).
_TORCH_KINDS = frozenset("biufc")


def _collate_ints(batch: Sequence[int]) -> torch.Tensor:
    """torch.tensor(batch), the common case (exact ints) several times faster."""
    if all(type(v) is int for v in batch):
        try:
            return torch.from_numpy(np.fromiter(batch, np.int64, len(batch)))
        except OverflowError:
            pass  # torch's own error, below
    return torch.tensor(batch)


def _collate_floats(batch: Sequence[float]) -> torch.Tensor:
    """torch.tensor(batch, dtype=torch.float64), the common case faster."""
    if all(type(v) is float for v in batch):
        return torch.from_numpy(np.fromiter(batch, np.float64, len(batch)))
    return torch.tensor(batch, dtype=torch.float64)


_NUMPY_SCALARS = (np.bool_, np.number, np.object_)

# Checked in order with isinstance: np.float64 is a float and bool is an int.
_TORCH_LEAVES: _Leaves = (
    (torch.Tensor, _collate_tensors),
    (np.ndarray, _collate_arrays),
    (_NUMPY_SCALARS, torch.as_tensor),
    (float, _collate_floats),
    (int, _collate_ints),
    ((str, bytes), _unchanged),
)
_NUMPY_LEAVES: _Leaves = (
    ((torch.Tensor, np.ndarray), _collate_arrays_np),
    (_NUMPY_SCALARS, np.asarray),
    (float, functools.partial(np.asarray, dtype=np.float64)),
    (int, np.asarray),
    ((str, bytes), _unchanged),
)


def _rebuild_sequence(like: Sequence[Any], values: list[Any]) -> Any:
    """``values`` in the sequence type of ``like``; a plain tuple becomes a list, as in torch."""
    return values if isinstance(like, tuple) else rebuild_sequence(like, values)


def _is_namedtuple(value: Any) -> bool:
    return isinstance(value, tuple) and hasattr(value, "_fields")


def _transpose(batch: Sequence[Sequence[Any]]) -> list[tuple[Any, ...]]:
    try:
        return list(zip(*batch, strict=True))
    except ValueError:
        lengths = [len(sample) for sample in batch]
        raise RuntimeError(
            "each element in list of batch should be of equal size; "
            f"got lengths {lengths[:_MAX_LISTED]}{' ...' if len(lengths) > _MAX_LISTED else ''}"
        ) from None


def _collate(batch: Sequence[Any], leaves: _Leaves, name: str) -> Any:
    elem = batch[0]
    for kinds, leaf in leaves:
        if isinstance(elem, kinds):
            return leaf(batch)
    if isinstance(elem, Mapping):
        values = {key: _collate([d[key] for d in batch], leaves, name) for key in elem}
        return rebuild_mapping(elem, values)
    if _is_namedtuple(elem):
        return type(elem)(*(_collate(f, leaves, name) for f in zip(*batch, strict=False)))
    if isinstance(elem, Sequence):
        columns = [_collate(c, leaves, name) for c in _transpose(batch)]
        return _rebuild_sequence(elem, columns)
    raise TypeError(_UNSUPPORTED.format(name=name, found=type(elem)))
