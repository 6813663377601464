"""Read-only containers whose items live once in memory that every worker process shares.

Reading a Python object writes its reference count, so a forked worker that
reads a ``list`` of a million dicts copies, page by page, every page that
holds one (pytorch#13246); a ``spawn`` or ``forkserver`` worker unpickles a
whole copy. :class:`SharedList` and :class:`SharedDict` keep their items
encoded in one read-only memory mapping instead: reading an item decodes a
few hundred bytes and touches nothing of the parent's, and every worker,
whatever its start method, maps the same pages. ``batchloader.share_dataset``
puts them in place of a dataset's large containers, in a copy of the dataset
(``_sharing``). See docs/memory.md.
"""

from __future__ import annotations

import bisect
import itertools
import operator
import reprlib
from collections.abc import ItemsView, Iterable, Iterator, Mapping, Sequence, ValuesView
from typing import Any, overload

import numpy as np

from ._shared_buffer import SharedBuffer, stable_hash

__all__ = ["SharedDict", "SharedList"]

_REPR = reprlib.Repr()
_REPR.maxstring, _REPR.maxother, _REPR.maxlist, _REPR.maxdict = 40, 40, 4, 4
_REPR_ITEMS = 3


class _Shared:
    """What both containers share: their buffer, length, lifetime and pickling."""

    __slots__ = ("__weakref__", "_buffer", "_len")
    _buffer: SharedBuffer
    _len: int

    def __len__(self) -> int:
        return self._len

    @property
    def nbytes(self) -> int:
        """Bytes of shared memory it holds: the pickled items and their index."""
        return self._buffer.nbytes

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` (or garbage collection) has unmapped it in this process."""
        return self._buffer.closed

    def close(self) -> None:
        """Unmap its memory and close its descriptor in this process (again: no effect).

        Reading it afterwards raises ``ValueError``; ``len()`` still answers.
        Other processes' copies stay usable: the memory lives while any
        process maps it. Garbage collection closes it too.
        """
        self._buffer.close()

    def __enter__(self) -> Any:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, tb: Any
    ) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        # The buffer pickles as a handle to the same memory, never as its bytes.
        return _attach, (type(self), self._buffer)


def _attach(cls: type[_Shared], buffer: SharedBuffer) -> Any:
    """Rebuild a container around a buffer that was pickled as a handle."""
    self = cls.__new__(cls)
    self._buffer = buffer
    self._len = len(buffer) // 2 if cls is SharedDict else len(buffer)
    if isinstance(self, SharedList):
        self._bind()
    return self


class SharedList(_Shared, Sequence[Any]):
    """A read-only list whose items are stored once, in memory that every worker maps.

    ``SharedList(items)`` pickles each item of ``items`` (any iterable of
    picklable objects) once. It reads like a list: ``len``, indexing
    (negative indices too), slices, iteration in order, ``in``, ``index``,
    ``count``, ``reversed``, and ``==`` with a ``list``, a ``tuple`` or
    another ``SharedList``. It cannot be changed: item assignment raises
    ``TypeError``, and there is no ``append``.

    Each read decodes the item afresh (about a microsecond for a small
    dict): the object you get is new every time, equal to the one stored,
    and changing it changes nothing in the list. A slice returns a plain
    ``list`` of such fresh items. So a list holding a NaN is not equal to its
    ``SharedList``: NaN is unequal to itself, and the list compares its own
    objects by identity first.

    Given a ``list``, ``tuple`` or NumPy array of dicts that all have the
    same ``str`` keys in the same order and plain values (numbers, ``str``,
    ``bytes``, ``None``, and lists, tuples and dicts of them), it stores the
    keys once and each item's values (marshalled): reading such an item is
    about twice as fast as unpickling it. Any other items are pickled.

    Pickling it (into a ``spawn`` or ``forkserver`` worker, through a queue)
    sends a handle to the same memory, never the items; a forked worker
    inherits it. See :doc:`/memory`.

    Example::

        annotations = SharedList([{"id": 0, "box": [0, 0, 4, 4]}, {"id": 1, "box": []}])
        annotations[-1]["id"]   # 1
    """

    # The buffer's views and decoder, held here too: the loader's read is one call shorter.
    __slots__ = ("_data", "_decode", "_offsets")
    _data: memoryview | None
    _offsets: memoryview | None

    def __init__(self, items: Iterable[Any] = ()) -> None:
        if not isinstance(items, Iterable):
            raise TypeError(
                f"SharedList(items) takes an iterable, got items={items!r} "
                f"of type {type(items).__name__}"
            )
        # A list of dicts with the same keys is stored as records (faster to read); trying
        # needs a second pass over the items if one does not fit, so only for sequences.
        records = isinstance(items, list | tuple | np.ndarray)
        self._buffer = SharedBuffer.create(items, name="SharedList", records=records)
        self._len = len(self._buffer)
        self._bind()

    def _bind(self) -> None:
        self._data, self._offsets, self._decode = self._buffer.reader()

    def close(self) -> None:
        self._data = self._offsets = None  # before the views they held are released
        super().close()

    @overload
    def __getitem__(self, index: int) -> Any: ...

    @overload
    def __getitem__(self, index: slice) -> list[Any]: ...

    def __getitem__(self, index: int | slice) -> Any:
        if type(index) is int and 0 <= index < self._len:  # the loader's case, first and short
            offsets = self._offsets
            try:
                return self._decode(self._data[offsets[index] : offsets[index + 1]])  # type: ignore[index]
            except (TypeError, ValueError):  # None, or a released view, once closed
                if self._buffer.closed:
                    raise self._buffer.closed_error() from None
                raise
        if isinstance(index, slice):
            self._buffer.check_open()
            load = self._buffer.load
            return [load(i) for i in range(*index.indices(self._len))]
        try:
            i = operator.index(index)
        except TypeError:
            raise TypeError(
                f"SharedList indices must be integers or slices, not {type(index).__name__}"
            ) from None
        n = self._len
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"SharedList index {index} is out of range for length {n}")
        return self._buffer.load(i)

    def __iter__(self) -> Iterator[Any]:
        load = self._buffer.load
        for i in range(self._len):
            yield load(i)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, SharedList):
            if _same_memory(self._buffer, other._buffer):
                return True
        elif not isinstance(other, list | tuple):
            return NotImplemented
        return len(self) == len(other) and all(
            a is b or a == b for a, b in zip(self, other, strict=True)
        )

    __hash__ = None  # type: ignore[assignment]  # like list: equal by value, so unhashable

    def __repr__(self) -> str:
        if self.closed:
            return f"SharedList(<closed>, len={self._len})"
        head = [_REPR.repr(self._buffer.load(i)) for i in range(min(self._len, _REPR_ITEMS))]
        more = ", ..." if self._len > _REPR_ITEMS else ""
        return f"SharedList([{', '.join(head)}{more}], len={self._len})"


class SharedDict(_Shared, Mapping[Any, Any]):
    """A read-only dict whose keys and values are stored once, in memory that every worker maps.

    ``SharedDict(mapping)`` takes a mapping (or an iterable of key-value
    pairs, as ``dict`` does) and pickles each key and value once. It reads
    like a dict: ``d[key]`` (``KeyError`` if absent), ``get``, ``in``,
    ``len``, ``keys()``, ``values()``, ``items()`` and iteration in the
    original order, and ``==`` with any mapping. It cannot be changed.
    Values come back as fresh objects on each read, as in :class:`SharedList`.

    A lookup touches no Python object of the process that built it: keys are
    found through a sorted array of 64-bit hashes that are the same in every
    process (binary search), and the candidate key is unpickled to confirm
    it is equal, so ``d[key]`` costs a hash, a search and two unpickles
    (a few microseconds). Numbers, ``str``, ``bytes``, ``None`` and tuples
    and frozensets of them are found by equality, as in a dict (``d[1]``
    finds the key ``1.0``); a key of any other type is found only by a key
    that pickles to the same bytes.
    """

    __slots__ = ()

    def __init__(self, mapping: Mapping[Any, Any] | Iterable[tuple[Any, Any]] = ()) -> None:
        try:
            source = mapping if isinstance(mapping, Mapping) else dict(mapping)
        except (TypeError, ValueError) as e:
            raise TypeError(
                "SharedDict(mapping) takes a mapping or an iterable of (key, value) pairs, "
                f"got mapping={reprlib.repr(mapping)} of type {type(mapping).__name__}: {e}"
            ) from e
        hashes = np.fromiter(map(stable_hash, source), dtype=np.int64, count=len(source))
        order = np.argsort(hashes, kind="stable")

        def describe(i: int) -> str:
            key = next(itertools.islice(source, i // 2, None))
            return f"the key {key!r}" if i % 2 == 0 else f"the value of key {key!r}"

        self._buffer = SharedBuffer.create(
            itertools.chain.from_iterable(source.items()),
            name="SharedDict",
            arrays=(hashes[order], order),
            describe=describe,
        )
        self._len = len(source)

    def _find(self, key: Any) -> int:
        """The entry number of ``key``, or -1."""
        h = stable_hash(key)
        hashes, order = self._buffer.arrays
        load = self._buffer.load
        i = bisect.bisect_left(hashes, h)
        while i < self._len and hashes[i] == h:
            entry = order[i]
            stored = load(2 * entry)
            if stored is key or stored == key:
                return entry
            i += 1
        return -1

    def __getitem__(self, key: Any) -> Any:
        entry = self._find(key)
        if entry < 0:
            raise KeyError(key)
        return self._buffer.load(2 * entry + 1)

    def __contains__(self, key: object) -> bool:
        return self._find(key) >= 0

    def __iter__(self) -> Iterator[Any]:
        load = self._buffer.load
        for i in range(self._len):
            yield load(2 * i)

    def _pairs(self) -> Iterator[tuple[Any, Any]]:
        load = self._buffer.load
        for i in range(self._len):
            yield load(2 * i), load(2 * i + 1)

    def values(self) -> ValuesView[Any]:
        """The values, in order, unpickled one at a time (no key lookups)."""
        return _Values(self)

    def items(self) -> ItemsView[Any, Any]:
        """The ``(key, value)`` pairs, in order, unpickled one at a time (no key lookups)."""
        return _Items(self)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        if isinstance(other, SharedDict) and _same_memory(self._buffer, other._buffer):
            return True
        if len(self) != len(other):
            return False
        missing = object()
        for key, value in self._pairs():
            theirs = other.get(key, missing)
            if theirs is missing or not (theirs is value or theirs == value):
                return False
        return True

    __hash__ = None  # type: ignore[assignment]  # like dict

    def __repr__(self) -> str:
        if self.closed:
            return f"SharedDict(<closed>, len={self._len})"
        pairs = itertools.islice(self._pairs(), _REPR_ITEMS)
        head = [f"{_REPR.repr(k)}: {_REPR.repr(v)}" for k, v in pairs]
        more = ", ..." if self._len > _REPR_ITEMS else ""
        return f"SharedDict({{{', '.join(head)}{more}}}, len={self._len})"


class _Values(ValuesView[Any]):
    __slots__ = ()
    _mapping: SharedDict

    def __iter__(self) -> Iterator[Any]:
        for _, value in self._mapping._pairs():
            yield value

    def __contains__(self, value: object) -> bool:
        return any(v is value or v == value for v in self)


class _Items(ItemsView[Any, Any]):
    __slots__ = ()
    _mapping: SharedDict

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        return self._mapping._pairs()


def _same_memory(a: SharedBuffer, b: SharedBuffer) -> bool:
    return a is b or (not a.closed and not b.closed and a.identity() == b.identity())
