"""Walking nested batches: tuples, lists, namedtuples, mappings and custom containers.

One walker for every stage that rebuilds a batch leaf by leaf (shared-memory
packing, pinning, moving to a device), and the container rebuilders that
collation shares with it, so they agree on what a batch may hold.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, MutableMapping, MutableSequence
from collections.abc import Sequence as SequenceABC
from typing import Any

__all__ = ["has_method", "map_batch", "rebuild_mapping", "rebuild_sequence"]


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
    # The plain containers collation makes, rebuilt directly: a batch walks this per batch.
    kind = type(data)
    if kind is list:
        return [walk(item) for item in data]
    if kind is tuple:
        return tuple([walk(item) for item in data])
    if kind is dict:
        return {key: walk(value) for key, value in data.items()}
    if isinstance(data, (str, bytes, bytearray)):
        return data
    if isinstance(data, Mapping):
        return rebuild_mapping(data, {key: walk(value) for key, value in data.items()})
    if isinstance(data, tuple):
        values = [walk(item) for item in data]
        if hasattr(data, "_fields"):  # a namedtuple takes its fields positionally
            return type(data)(*values)
        return rebuild_sequence(data, values, tuple)
    if isinstance(data, SequenceABC):
        return rebuild_sequence(data, [walk(item) for item in data])
    return data


def rebuild_mapping(like: Mapping[Any, Any], values: dict[Any, Any]) -> Mapping[Any, Any]:
    """``values`` in the mapping type of ``like`` where it can be built, else a dict.

    A mutable mapping is shallow-copied and updated, keeping extra state such
    as a ``defaultdict``'s factory; other types are called with ``values``.
    """
    try:
        if isinstance(like, MutableMapping):
            clone = copy.copy(like)
            clone.update(values)
            return clone
        make: Any = type(like)  # a Mapping subclass's constructor, if it takes the items
        return make(values)
    except TypeError:
        return values


def rebuild_sequence(
    like: SequenceABC[Any], values: list[Any], fallback: Callable[[list[Any]], Any] = list
) -> Any:
    """``values`` in the sequence type of ``like`` where it can be built, else ``fallback(values)``."""
    try:
        if isinstance(like, MutableSequence):
            clone = copy.copy(like)
            for i, value in enumerate(values):  # item by item: a deque takes no slice
                clone[i] = value
            return clone
        make: Any = type(like)
        return make(values)
    except TypeError:  # e.g. range, or a subclass whose __init__ takes other arguments
        return fallback(values)


def has_method(obj: Any, name: str) -> bool:
    try:
        return callable(getattr(obj, name, None))
    except Exception:  # a custom __getattr__ may raise anything; then it has no such method
        return False
