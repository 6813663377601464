"""Finding a dataset's large Python containers, and a copy of it with shared ones in their place.

:func:`share_dataset` walks a dataset's attributes (and those of the objects
it holds) and puts a :class:`~batchloader.SharedList` or
:class:`~batchloader.SharedDict` in place of each large ``list``, ``tuple``,
``dict`` or NumPy object array, in a copy of the dataset, so that worker
processes read one shared copy; :func:`find_large_containers` finds the same
containers cheaply, for the loader's warning. See docs/memory.md.
"""

from __future__ import annotations

import copy
import itertools
import sys
import types
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .shared import SharedDict, SharedList, _Shared

__all__ = ["MIN_BYTES", "MIN_ITEMS", "LargeContainer", "find_large_containers", "share_dataset"]

MIN_ITEMS = 100_000
"""A container with at least this many items is large (:func:`find_large_containers`)."""
MIN_BYTES = 64 << 20
"""A container whose items are estimated to take at least this many bytes is large."""


@dataclass(frozen=True)
class LargeContainer:
    """A large Python container in a dataset: found by :func:`find_large_containers`,
    or replaced by :func:`share_dataset`.

    Attributes:
        path: how the dataset reaches it, as Python code would:
            ``"dataset.annotations"``, ``"dataset.datasets[1].labels"``.
        kind: ``"list"``, ``"tuple"``, ``"dict"`` or ``"numpy.ndarray[object]"``.
        items: how many items it holds.
        nbytes: the bytes of shared memory that replaced it (:func:`share_dataset`),
            or an estimate of its items' memory as Python objects
            (:func:`find_large_containers`).
        estimated: whether ``nbytes`` is an estimate.
    """

    path: str
    kind: str
    items: int
    nbytes: int
    estimated: bool


def find_large_containers(
    dataset: Any, *, min_items: int = MIN_ITEMS, min_bytes: int = MIN_BYTES
) -> list[LargeContainer]:
    """The large Python containers that :func:`share_dataset` would replace, found cheaply.

    A container is large when it holds at least ``min_items`` items (100,000
    by default) or its items are estimated to take at least ``min_bytes``
    (64 MiB). Nothing is pickled: the estimate is ``sys.getsizeof`` summed
    through up to 16 sampled items, times the item count. Where this looks
    and what qualifies is said in :func:`share_dataset`.
    """
    walk = _Walk(min_items, min_bytes, convert=False)
    walk.visit(dataset, "dataset", 0)
    return walk.found


def share_dataset(
    dataset: Any, *, min_items: int = MIN_ITEMS, min_bytes: int = MIN_BYTES
) -> tuple[Any, list[LargeContainer]]:
    """Return a copy of ``dataset`` whose large Python containers are shared ones, and what changed.

    Replaced, when large (see :func:`find_large_containers`): every ``list``,
    ``tuple`` (by a :class:`SharedList`, which compares equal to the tuple),
    ``dict`` (by a :class:`SharedDict`) and one-dimensional NumPy array of
    ``dtype=object`` (by a :class:`SharedList`) that the dataset holds in its
    instance attributes, in attributes of the objects it holds (a
    ``Subset``'s or ``ConcatDataset``'s datasets, your helper objects; up to
    6 levels down), or in small lists, tuples and dicts on the way (64 items
    or fewer); and the dataset itself if it is such a container. Left alone:
    containers of exact other types (subclasses, ``defaultdict``), containers
    whose sampled items hold tensors (torch shares those itself), NumPy object
    arrays of more than one dimension, and the insides of NumPy, pandas,
    torch (other than its datasets) and similar libraries' objects.

    Nothing of yours is changed: each object on the way to a replaced
    container is copied (``copy.copy``), and the copy gets the new value.
    When nothing is large, ``dataset`` itself is returned. A container
    reached twice is replaced once, by the same shared container.

    Returns:
        ``(copy, replaced)``: the dataset to give the workers, and one
        :class:`LargeContainer` per replaced container, ``nbytes`` being its
        shared memory.

    Raises:
        TypeError: an item of a large container cannot be pickled (the
            message names the container's path and the item).
    """
    walk = _Walk(min_items, min_bytes, convert=True)
    return walk.visit(dataset, "dataset", 0), walk.found


_MAX_DEPTH = 6
# A container below the size limits is walked into only if it is this small
# (ConcatDataset's list of datasets): walking large ones would cost as much as the data.
_MAX_WALKED_ITEMS = 64
_SAMPLE = 16
_NOT_WALKED = (
    type,
    types.ModuleType,
    types.FunctionType,
    types.BuiltinFunctionType,
    types.MethodType,
    torch.Tensor,
    torch.nn.Module,
)
# Libraries whose objects hold arrays and containers we must not swap out from under them.
_OPAQUE_PACKAGES = frozenset(
    {"numpy", "pandas", "polars", "pyarrow", "torch", "scipy", "h5py", "PIL", "datasets"}
)


class _Walk:
    """One walk over a dataset: finds its large containers and, with ``convert``, replaces them."""

    def __init__(self, min_items: int, min_bytes: int, *, convert: bool) -> None:
        for name, value in (("min_items", min_items), ("min_bytes", min_bytes)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.min_items, self.min_bytes, self.convert = min_items, min_bytes, convert
        self.found: list[LargeContainer] = []
        self._seen: dict[int, tuple[Any, Any]] = {}  # id -> (object, what replaces it)

    def visit(self, obj: Any, path: str, depth: int) -> Any:
        """``obj``, or a copy of it in which the large containers below it are replaced."""
        if id(obj) in self._seen:
            return self._seen[id(obj)][1]
        self._seen[id(obj)] = (obj, obj)  # a cycle back to obj finds it unchanged
        result = self._visit(obj, path, depth)
        self._seen[id(obj)] = (obj, result)
        return result

    def _visit(self, obj: Any, path: str, depth: int) -> Any:
        kind = _container_kind(obj)
        if kind is not None:
            nbytes = _estimate_bytes(obj)
            if (len(obj) >= self.min_items or nbytes >= self.min_bytes) and not _holds_tensors(obj):
                return self._replace(obj, path, kind, nbytes)
            if depth < _MAX_DEPTH and len(obj) <= _MAX_WALKED_ITEMS and kind != _OBJECT_ARRAY:
                return self._walk_items(obj, path, depth)
            return obj
        attributes = _attributes(obj)
        if depth < _MAX_DEPTH and attributes is not None:
            return self._walk_attributes(obj, attributes, path, depth)
        return obj

    def _replace(self, obj: Any, path: str, kind: str, nbytes: int) -> Any:
        if not self.convert:
            self.found.append(LargeContainer(path, kind, len(obj), nbytes, estimated=True))
            return obj
        try:
            shared: _Shared = SharedDict(obj) if kind == "dict" else SharedList(obj)
        except TypeError as error:
            raise TypeError(f"{path} ({kind}) cannot be shared: {error}") from error
        self.found.append(LargeContainer(path, kind, len(obj), shared.nbytes, estimated=False))
        return shared

    def _walk_items(self, obj: Any, path: str, depth: int) -> Any:
        if type(obj) is dict:
            new = {key: self.visit(v, f"{path}[{key!r}]", depth + 1) for key, v in obj.items()}
            return new if any(new[key] is not v for key, v in obj.items()) else obj
        items = [self.visit(v, f"{path}[{i}]", depth + 1) for i, v in enumerate(obj)]
        return type(obj)(items) if any(a is not b for a, b in zip(items, obj, strict=True)) else obj

    def _walk_attributes(self, obj: Any, attributes: dict[str, Any], path: str, depth: int) -> Any:
        changed = {}
        for name, value in list(attributes.items()):
            new = self.visit(value, f"{path}.{name}", depth + 1)
            if new is not value:
                changed[name] = new
        if not changed:
            return obj
        clone = copy.copy(obj)
        own = _attributes(clone)
        if clone is obj or type(clone) is not type(obj) or own is None or own is attributes:
            raise TypeError(
                f"cannot share the large containers of {path}: copy.copy() of its "
                f"{type(obj).__name__} does not make a separate object with its own attributes, "
                "so they could only be replaced in your own object; share them yourself "
                "(batchloader.SharedList, batchloader.SharedDict)"
            )
        own.update(changed)
        return clone


_OBJECT_ARRAY = "numpy.ndarray[object]"


def _container_kind(obj: Any) -> str | None:
    kind = type(obj)
    if kind is list or kind is tuple or kind is dict:
        return kind.__name__
    if kind is np.ndarray and obj.dtype == object and obj.ndim == 1:
        return _OBJECT_ARRAY
    return None


def _attributes(obj: Any) -> dict[str, Any] | None:
    """The instance attributes of an object we may walk into, else None."""
    if not isinstance(obj, torch.utils.data.Dataset) and (
        isinstance(obj, _NOT_WALKED) or type(obj).__module__.partition(".")[0] in _OPAQUE_PACKAGES
    ):
        return None
    try:
        attributes = vars(obj)
    except Exception:  # no __dict__ (or a __getattr__ that refuses)
        return None
    return attributes if type(attributes) is dict else None


def _sample(obj: Any) -> list[Any]:
    """Up to ``_SAMPLE`` items, spread over the container (a dict's first ones, as pairs)."""
    if type(obj) is dict:
        return list(itertools.islice(obj.items(), _SAMPLE))
    n = len(obj)
    return [obj[int(i)] for i in np.unique(np.linspace(0, n - 1, min(n, _SAMPLE)).astype(int))]


def _holds_tensors(obj: Any) -> bool:
    def tensor_in(item: Any) -> bool:
        if isinstance(item, torch.Tensor):
            return True
        if type(item) is dict:
            item = list(itertools.islice(item.values(), _SAMPLE))
        return isinstance(item, list | tuple) and any(
            isinstance(x, torch.Tensor) for x in item[:_SAMPLE]
        )

    return any(tensor_in(item) for item in _sample(obj))


def _estimate_bytes(obj: Any) -> int:
    """The container and its items as Python objects, from a sample of the items."""
    sample = _sample(obj)
    if not sample:
        return sys.getsizeof(obj)
    per_item = sum(_deep_size(item, 3) for item in sample) / len(sample)
    if type(obj) is dict:
        per_item -= sys.getsizeof(())  # the sampled pairs are tuples the dict does not hold
    return int(sys.getsizeof(obj) + per_item * len(obj))


def _deep_size(obj: Any, depth: int) -> int:
    """``sys.getsizeof`` through containers and instance attributes, ``depth`` levels down.

    Singletons (``None``, booleans, small ints) cost nothing, and neither do
    the ``str`` keys of dicts inside items (the same few names, shared).
    """
    if obj is None or type(obj) is bool or (type(obj) is int and -5 <= obj <= 256):
        return 0
    size = sys.getsizeof(obj)
    if depth == 0:
        return size
    if type(obj) in (list, tuple, set, frozenset):
        inner = [_deep_size(x, depth - 1) for x in itertools.islice(obj, _SAMPLE)]
        return size + (sum(inner) * len(obj) // len(inner) if inner else 0)
    if type(obj) is dict:
        pairs = list(itertools.islice(obj.items(), _SAMPLE))
        inner = [
            (0 if type(k) is str else _deep_size(k, 0)) + _deep_size(v, depth - 1) for k, v in pairs
        ]
        return size + (sum(inner) * len(obj) // len(inner) if inner else 0)
    attributes = _attributes(obj)
    return size + (_deep_size(attributes, depth - 1) if attributes is not None else 0)
