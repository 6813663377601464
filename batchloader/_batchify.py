"""Gluon-style batchify functions: ``Stack``, ``Pad``, ``Tuple``, ``Dict``, ``List``.

Re-exported by :mod:`batchloader.collate`; each composes into a ``collate_fn``.
"""

from __future__ import annotations

import functools
import numbers
from collections.abc import Mapping, Sequence, Sized
from typing import Any

import numpy as np
import torch

from batchloader import _shm
from batchloader._typing import CollateFn

from ._stacking import (
    _OUTPUTS,
    _checked_array,
    _describe,
    _fn_name,
    _from_numpy,
    _Output,
    _stack_arrays,
    _stack_failure,
    _stack_tensors,
    _to_array,
    _to_tensor,
)

__all__ = ["Dict", "List", "Pad", "Stack", "Tuple"]


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
        dtype: the batch's dtype (numpy dtype, torch dtype or name), as GluonNLP's
            ``Stack(dtype)``; by default the samples' own.
        output: ``'torch'`` for a tensor (in shared memory inside a worker) or
            ``'numpy'`` for an array.

    Example:
        >>> Stack()([np.array([1, 2]), np.array([3, 4])])
        tensor([[1, 2],
                [3, 4]])
    """

    __slots__ = ("_dtype", "dtype", "output")

    def __init__(self, dtype: Any = None, *, output: _Output = "torch") -> None:
        self.output = _validate_output("Stack", output)
        self.dtype = dtype
        # a torch dtype for output="torch", a NumPy one for "numpy"
        self._dtype: Any = None if dtype is None else _resolve_dtype("Stack", dtype, self.output)

    def __call__(self, data: Sequence[Any]) -> torch.Tensor | np.ndarray:
        batch = self._stack(data)
        if self._dtype is None:
            return batch
        if isinstance(batch, np.ndarray):
            return batch.astype(self._dtype)
        return batch.to(self._dtype)

    def _stack(self, data: Sequence[Any]) -> torch.Tensor | np.ndarray:
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
        options = [f"dtype={self.dtype!r}"] if self.dtype is not None else []
        if self.output != "torch":
            options.append(f"output={self.output!r}")
        return f"Stack({', '.join(options)})"


def _resolve_dtype(owner: str, dtype: Any, output: _Output) -> torch.dtype | np.dtype:
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
            f"{owner}: dtype must be a numpy dtype, torch dtype or dtype name that {output} "
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
        pad_val: the value written past each sample's end; None means 0 (GluonNLP's
            default, which GluonNLP also warns about). It must fit the batch's dtype.
        ret_length: also return the samples' lengths, as an int64 tensor or array.
        dtype: the batch's dtype (numpy dtype, torch dtype or name); by default the
            samples' common dtype.
        round_to: pad to a multiple of this length (fewer distinct shapes, e.g. for kernels).
        output: ``'torch'`` or ``'numpy'``.

    Samples must agree on every axis but ``axis``. An empty sample (``[]``)
    takes the batch's dtype: only non-empty samples decide it.

    Example:
        >>> Pad(pad_val=-1, ret_length=True)([[1, 2, 3], [4]])
        (tensor([[ 1,  2,  3],
                [ 4, -1, -1]]), tensor([3, 1]))
    """

    __slots__ = ("_dtype", "axis", "dtype", "output", "pad_val", "ret_length", "round_to")

    def __init__(
        self,
        axis: int = 0,
        pad_val: float | None = 0,
        ret_length: bool = False,
        dtype: Any = None,
        round_to: int | None = None,
        *,
        output: _Output = "torch",
    ) -> None:
        pad_val = 0 if pad_val is None else pad_val
        _validate_pad_args(axis, pad_val, ret_length, round_to)
        self.output = _validate_output("Pad", output)
        self._dtype: Any = None if dtype is None else _resolve_dtype("Pad", dtype, self.output)
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
        _check_fits(self.pad_val, out.dtype)
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
        # An empty sample ([] is float64 to NumPy) says nothing of the batch's dtype.
        typed = [s for s in samples if s.shape[self.axis % s.ndim] > 0] or samples
        if self.output == "numpy":
            common = np.result_type(*(s.dtype for s in typed))
            return np.empty(shape, dtype=common if self._dtype is None else self._dtype)
        promoted = functools.reduce(torch.promote_types, (s.dtype for s in typed))
        return _shm.empty(shape, promoted if self._dtype is None else self._dtype)

    def __repr__(self) -> str:
        return (
            f"Pad(axis={self.axis}, pad_val={self.pad_val!r}, ret_length={self.ret_length}, "
            f"dtype={self.dtype!r}, round_to={self.round_to!r}, output={self.output!r})"
        )


def _check_fits(pad_val: Any, dtype: torch.dtype | np.dtype) -> None:
    """Refuses a pad value the batch's dtype cannot hold (torch would wrap it, NumPy raise)."""
    if isinstance(dtype, torch.dtype):
        if dtype.is_floating_point or dtype.is_complex:
            return
        info: Any = torch.iinfo(dtype) if dtype != torch.bool else None
    else:
        if dtype.kind not in "iub":
            return
        info = np.iinfo(dtype) if dtype.kind != "b" else None
    if info is None:
        fits = pad_val in (0, 1)
    else:
        fits = float(pad_val).is_integer() and info.min <= pad_val <= info.max
    if not fits:
        raise ValueError(
            f"Pad: pad_val={pad_val!r} does not fit the batch's dtype {dtype}; pass a pad_val "
            "it can hold, or a wider dtype="
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
