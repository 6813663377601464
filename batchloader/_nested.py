"""Walking nested batches: tuples, lists, namedtuples, mappings and custom containers.

One walker for every stage that rebuilds a batch leaf by leaf (shared-memory
packing, pinning, moving to a device), so they agree on what a batch may hold.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, MutableMapping, MutableSequence
from collections.abc import Sequence as SequenceABC
from typing import Any

__all__ = ["has_method", "map_batch"]


def map_batch(data: Any, leaf: Callable[[Any], Any], is_leaf: Callable[[Any], bool]) -> Any:
    """Rebuild ``data`` with ``leaf`` applied to every element ``is_leaf`` claims.

    Containers keep their type where it can be rebuilt: a mutable mapping or
    sequence is shallow-copied and updated (keeping extra state such as a
    ``defaultdict``'s factory), other types are called with the new contents,
    and a type that refuses falls back to ``dict`` / ``tuple`` / ``list``.
    Strings, bytes and unknown objects are returned as they are.
    """

    def walk(item: Any) -> Any:
        return map_batch(item, leaf, is_leaf)

    if is_leaf(data):
        return leaf(data)
    if isinstance(data, (str, bytes, bytearray)):
        return data
    if isinstance(data, Mapping):
        return _rebuild_mapping(data, {key: walk(value) for key, value in data.items()})
    if isinstance(data, tuple):
        values = [walk(item) for item in data]
        if hasattr(data, "_fields"):  # a namedtuple takes its fields positionally
            return type(data)(*values)
        return _rebuild(data, values, tuple)
    if isinstance(data, SequenceABC):
        return _rebuild(data, [walk(item) for item in data], list)
    return data


def _rebuild_mapping(data: Mapping, items: dict) -> Any:
    try:
        if isinstance(data, MutableMapping):
            clone = copy.copy(data)
            clone.update(items)
            return clone
        return type(data)(items)
    except TypeError:
        return items


def _rebuild(data: Any, values: list, fallback: type) -> Any:
    try:
        if isinstance(data, MutableSequence):
            clone = copy.copy(data)
            for i, value in enumerate(values):  # item by item: a deque takes no slice
                clone[i] = value
            return clone
        return type(data)(values)
    except TypeError:  # e.g. range, or a subclass whose __init__ takes other arguments
        return fallback(values)


def has_method(obj: Any, name: str) -> bool:
    try:
        return callable(getattr(obj, name, None))
    except Exception:  # a custom __getattr__ may raise anything; then it has no such method
        return False
