"""A list of samples to one batch: torch's default collation and Gluon-style batchify functions.

:func:`default_collate` and :func:`default_convert` have torch's semantics;
:func:`numpy_collate` is the same walk producing arrays. :class:`Stack`, :class:`Pad`,
:class:`Tuple`, :class:`Dict` and :class:`List` compose into a ``collate_fn``. Every
stacked or padded tensor comes from :func:`batchloader._shm.empty`: a plain tensor in
the main process, a shared-memory segment in a worker, so the batch is not copied again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ._batchify import Dict, List, Pad, Stack, Tuple
from ._nested import rebuild_mapping
from ._stacking import (
    _NUMPY_LEAVES,
    _STR_OBJ_KINDS,
    _TORCH_LEAVES,
    _collate,
    _is_namedtuple,
    _rebuild_sequence,
)

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
        return rebuild_mapping(data, {key: default_convert(data[key]) for key in data})
    if _is_namedtuple(data):
        return type(data)(*(default_convert(d) for d in data))
    if isinstance(data, Sequence) and not isinstance(data, str | bytes):
        return _rebuild_sequence(data, [default_convert(d) for d in data])
    return data
