"""Encoded items in one read-only anonymous memory file, mapped by every process that reads them.

A :class:`SharedBuffer` holds ``n`` items, each encoded once (pickled, or as
a record: below) and laid end to end, plus an int64 offset index: item ``i``
is the bytes between ``offsets[i]`` and ``offsets[i + 1]``. Reading it
decodes those bytes from the mapping, so no Python object of the process
that built it is touched: a forked worker reads without writing a single
refcount of its parent's.

The memory is an anonymous file (``os.memfd_create``): it has no name in
``/dev/shm``, so nothing is ever left behind (not even after ``SIGKILL``),
and ``/dev/shm``'s size limit (Docker's 64 MB) does not apply. It is sealed
after it is written (no process can change, grow or shrink it) and mapped
read-only. It lives while any process maps it or holds its descriptor.

Layout, every number a little-endian int64::

    header (8 words): magic, item count n, end of the data, number of arrays,
                      the length of each array (up to 2), encoding, length of
                      the keys
    data:             the encoded items, from byte 64
    keys:             with the record encoding, the records' keys (pickled)
    offsets:          n + 1 positions into the data (8-byte aligned)
    arrays:           extra int64 arrays (a SharedDict's hash index)

Two encodings (one per buffer). *Pickles*: each item pickled. *Records*
(``_records``), for a list of dicts with the same ``str`` keys and plain
values: the keys are stored once, each item is its values marshalled as a
tuple, and a decoder generated for those keys rebuilds the dict.

Sharing: a forked child inherits the mapping. Pickled while a
``multiprocessing`` child is being started (``spawn``, ``forkserver``), a
buffer sends its descriptor (``multiprocessing.reduction.DupFd``), which the
child maps. Pickled any other way, it sends ``(pid, fd, size, identity)`` and
the receiver opens ``/proc/<pid>/fd/<fd>``: that needs the sending process
alive with the buffer open. The bytes themselves are never pickled.

Knows nothing of loaders or containers.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import itertools
import mmap
import numbers
import os
import pickle
import struct
import weakref
from collections.abc import Callable, Iterable, Sequence
from multiprocessing import context, reduction
from typing import Any

import numpy as np

from . import _records

__all__ = ["SharedBuffer", "stable_hash"]

_MAGIC = int.from_bytes(b"BLSHBUF2", "little")
_HEADER = struct.Struct("<8q")
_MAX_ARRAYS = 2
_PICKLES, _RECORDS = 0, 1  # the encodings
# Items pickled and written per step: large enough that the per-step cost
# vanishes, small enough that one step's pickles stay a few MB.
_CHUNK = 1 << 14
_PROTOCOL = pickle.HIGHEST_PROTOCOL
_IOV_MAX = min(os.sysconf("SC_IOV_MAX"), 1024)  # buffers per pwritev call
_SEALS = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE


def _align8(position: int) -> int:
    return (position + 7) & ~7


def _describe_item(index: int) -> str:
    return f"item {index}"


class SharedBuffer:
    """``n`` encoded items and their offsets, in one sealed, read-only memory file.

    Build one with :meth:`create`; read item ``i`` with :meth:`load`. Each
    process holds its own mapping and descriptor, which its ``close()`` or
    garbage collection releases.
    """

    __slots__ = (
        "__weakref__",
        "_arrays",
        "_data",
        "_decode",
        "_fd",
        "_finalizer",
        "_name",
        "_offsets",
        "_size",
    )

    def __init__(self, fd: int, name: str, *, populate: bool = False) -> None:
        """Map the buffer in the memory file open on ``fd``, which this object then owns.

        ``populate`` maps every page at once (``MAP_POPULATE``): the creating
        process does, so that a worker that maps the memory later finds its
        pages shared already, and they never count as that worker's own.
        """
        size = os.fstat(fd).st_size
        flags = mmap.MAP_SHARED | (mmap.MAP_POPULATE if populate else 0)
        mm = mmap.mmap(fd, size, flags=flags, prot=mmap.PROT_READ)
        whole = memoryview(mm)
        magic, count, data_end, n_arrays, *sizes, encoding, keys_length = _HEADER.unpack_from(whole)
        if magic != _MAGIC:
            whole.release()
            mm.close()
            raise ValueError(f"[INTERNAL ERROR] fd {fd} does not hold a shared buffer")
        self._decode: Callable[[memoryview], Any] = pickle.loads
        if encoding == _RECORDS:
            self._decode = _records.decoder(pickle.loads(whole[data_end : data_end + keys_length]))
        position = _align8(data_end + keys_length)
        offsets = whole[position : position + 8 * (count + 1)].cast("q")
        position += 8 * (count + 1)
        self._arrays: list[memoryview] = []
        for length in sizes[:n_arrays]:
            self._arrays.append(whole[position : position + 8 * length].cast("q"))
            position += 8 * length
        self._data: memoryview | None = whole[_HEADER.size : data_end]
        self._offsets: memoryview | None = offsets
        self._fd, self._size, self._name = fd, size, name
        views = [self._data, offsets, *self._arrays, whole]  # the whole last: it holds the rest
        self._finalizer = weakref.finalize(self, _unmap, views, mm, fd)
        self._finalizer.atexit = False  # the system unmaps at exit; there is no file to remove

    @classmethod
    def create(
        cls,
        items: Iterable[Any],
        *,
        name: str,
        arrays: Sequence[np.ndarray] = (),
        describe: Callable[[int], str] = _describe_item,
        records: bool = False,
    ) -> SharedBuffer:
        """Encode every item of ``items`` once into a new buffer, with ``arrays`` (int64) after them.

        ``name`` labels the memory file (``/proc/<pid>/maps`` shows
        ``memfd:batchloader-<name>``) and the errors. ``describe(i)`` names
        item ``i`` in the error raised when it cannot be pickled.
        ``records=True`` tries the record encoding first (``items`` must be
        iterable twice: if an item does not fit, every item is pickled).
        """
        if len(arrays) > _MAX_ARRAYS:
            raise ValueError(f"[INTERNAL ERROR] at most {_MAX_ARRAYS} arrays, got {len(arrays)}")
        fd = os.memfd_create(f"batchloader-{name}", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        try:
            keys = _records.record_keys(items) if records else None
            try:
                lengths = _write_items(fd, items, describe, keys)
            except _records.NotRecords:
                os.ftruncate(fd, 0)
                keys, lengths = None, _write_items(fd, items, describe, None)
            count = len(lengths)
            offsets = np.zeros(count + 1, dtype="<i8")
            np.cumsum(lengths, out=offsets[1:])
            data_end = _HEADER.size + int(offsets[-1])
            keys_blob = b"" if keys is None else pickle.dumps(keys, _PROTOCOL)
            tail = [offsets, *(np.ascontiguousarray(a, dtype="<i8") for a in arrays)]
            _write_all(fd, keys_blob, data_end)
            _write_all(fd, b"".join(a.tobytes() for a in tail), _align8(data_end + len(keys_blob)))
            sizes = [len(a) for a in arrays] + [0] * (_MAX_ARRAYS - len(arrays))
            encoding = _PICKLES if keys is None else _RECORDS
            header = (_MAGIC, count, data_end, len(arrays), *sizes, encoding, len(keys_blob))
            _write_all(fd, _HEADER.pack(*header), 0)
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)
            return cls(fd, name, populate=True)
        except BaseException:
            os.close(fd)
            raise

    # ----------------------------------------------------------------- reading

    def __len__(self) -> int:
        return len(self._offsets) - 1 if self._offsets is not None else 0

    def check_open(self) -> None:
        """Raise the closed container's ``ValueError`` if :meth:`close` has run."""
        if self._data is None:
            raise self.closed_error()

    def load(self, i: int) -> Any:
        """Decode item ``i`` (``0 <= i < len(self)``: callers check the bounds)."""
        data, offsets = self._data, self._offsets
        if data is None or offsets is None:
            raise self.closed_error()
        return self._decode(data[offsets[i] : offsets[i + 1]])

    def reader(self) -> tuple[memoryview, memoryview, Callable[[memoryview], Any]]:
        """``(data, offsets, decode)``: item ``i`` is ``decode(data[offsets[i]:offsets[i + 1]])``.

        For a container's own fast path; the views are released by :meth:`close`.
        """
        if self._data is None or self._offsets is None:
            raise self.closed_error()
        return self._data, self._offsets, self._decode

    @property
    def encoding(self) -> str:
        """``"pickles"`` or ``"records"`` (see the module's docstring)."""
        return "pickles" if self._decode is pickle.loads else "records"

    @property
    def data(self) -> memoryview:
        """The encoded items end to end, viewed in place, read-only: item ``i`` is
        ``data[offsets[i]:offsets[i + 1]]``."""
        if self._data is None:
            raise self.closed_error()
        return self._data

    @property
    def arrays(self) -> list[memoryview]:
        """The extra int64 arrays, viewed in place (format ``q``), read-only."""
        if self._data is None:
            raise self.closed_error()
        return self._arrays

    @property
    def offsets(self) -> np.ndarray:
        """The ``n + 1`` offsets of the items into the data, viewed in place, read-only."""
        if self._offsets is None:
            raise self.closed_error()
        return np.frombuffer(self._offsets, dtype="<i8")

    @property
    def nbytes(self) -> int:
        """The size of the memory file: pickled items, offsets, arrays and header."""
        return self._size

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` (or garbage collection) has unmapped it in this process."""
        return self._data is None

    def identity(self) -> tuple[int, int]:
        """``(st_dev, st_ino)`` of the memory file: equal in every process that maps it."""
        if self._data is None:
            raise self.closed_error()
        stat = os.fstat(self._fd)
        return stat.st_dev, stat.st_ino

    # ----------------------------------------------------------------- closing

    def close(self) -> None:
        """Unmap the memory and close the descriptor in this process; idempotent.

        The memory itself lives on while any other process maps it.
        """
        self._data = self._offsets = None
        self._finalizer()

    def closed_error(self) -> ValueError:
        """The error a read of a closed buffer (or of its container) raises."""
        return ValueError(
            f"this {self._name} is closed: close() (or garbage collection) unmapped its memory "
            "in this process; keep it open (and referenced) while you read from it"
        )

    # ----------------------------------------------------------------- sharing

    def __reduce__(self) -> tuple[Callable[..., SharedBuffer], tuple[Any, ...]]:
        if self._data is None:
            raise self.closed_error()
        if context.get_spawning_popen() is not None:
            # A spawn or forkserver child is being started: it receives the descriptor itself.
            return _attach_inherited, (reduction.DupFd(self._fd), self._name)
        return _attach_by_path, (os.getpid(), self._fd, self._size, self.identity(), self._name)


def _write_items(
    fd: int, items: Iterable[Any], describe: Callable[[int], str], keys: tuple[str, ...] | None
) -> np.ndarray:
    """Encode and write ``items`` after the header, a chunk at a time; return their lengths.

    With ``keys``, as records with those keys; raises ``_records.NotRecords`` at the
    first item that is not one.
    """
    dumps, protocol = pickle.dumps, _PROTOCOL
    iterator = iter(items)
    lengths: list[np.ndarray] = []
    position, start = _HEADER.size, 0
    while chunk := list(itertools.islice(iterator, _CHUNK)):
        if keys is not None:
            blobs = _records.encode(chunk, keys)
        else:
            try:
                blobs = [dumps(item, protocol) for item in chunk]
            except Exception as error:
                raise _unpicklable(chunk, start, describe) from error
        sizes = np.fromiter(map(len, blobs), dtype=np.int64, count=len(blobs))
        lengths.append(sizes)
        position = _write_blobs(fd, blobs, sizes, position)
        start += len(chunk)
    return np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)


def _write_blobs(fd: int, blobs: list[bytes], sizes: np.ndarray, position: int) -> int:
    """Write ``blobs`` end to end from ``position`` (``pwritev``: no joined copy); return the end."""
    ends = np.cumsum(sizes)
    for k in range(0, len(blobs), _IOV_MAX):
        group = blobs[k : k + _IOV_MAX]
        expected = int(ends[k + len(group) - 1] - (ends[k - 1] if k else 0))
        written = os.pwritev(fd, group, position)
        if written < expected:  # interrupted: write the rest the slow way
            _write_all(fd, b"".join(group)[written:], position + written)
        position += expected
    return position


def _unpicklable(chunk: list[Any], start: int, describe: Callable[[int], str]) -> Exception:
    for j, item in enumerate(chunk):
        try:
            pickle.dumps(item, _PROTOCOL)
        except Exception as error:
            return TypeError(
                f"{describe(start + j)} (of type {type(item).__name__}) cannot be pickled, so it "
                f"cannot be shared: {error}. Shared containers hold picklable items only"
            )
    return RuntimeError("[INTERNAL ERROR] an item failed to pickle once, then pickled")


def _write_all(fd: int, data: bytes, position: int) -> None:
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, position)
        view, position = view[written:], position + written


def _unmap(views: list[memoryview], mm: mmap.mmap, fd: int) -> None:
    """Drop this process's views, its mapping and its descriptor.

    A view still held elsewhere (a NumPy array from :attr:`SharedBuffer.offsets`,
    a read in another thread) keeps the mapping alive until it is freed: Python
    refuses to unmap memory that is still viewed, so nothing can read freed memory.
    """
    try:
        for view in views:
            with contextlib.suppress(BufferError):
                view.release()
        with contextlib.suppress(BufferError):
            mm.close()
    finally:
        os.close(fd)


def _attach_inherited(handle: Any, name: str) -> SharedBuffer:
    """In a spawn or forkserver child: map the descriptor it was started with."""
    return SharedBuffer(handle.detach(), name)


def _attach_by_path(
    pid: int, fd: int, size: int, identity: tuple[int, int], name: str
) -> SharedBuffer:
    """Open the sender's descriptor through ``/proc/<pid>/fd/<fd>`` and map it."""
    path = f"/proc/{pid}/fd/{fd}"
    try:
        mine = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as error:
        raise OSError(
            error.errno,
            f"cannot open the {name}'s memory at {path}: the process that pickled it "
            f"(pid {pid}) must be alive and keep the container open until it is unpickled "
            f"({error.strerror})",
        ) from error
    stat = os.fstat(mine)
    if (stat.st_dev, stat.st_ino) != identity or stat.st_size != size:
        os.close(mine)
        raise OSError(
            f"{path} is no longer the {name}'s memory: process {pid} closed it before it "
            "was unpickled; keep it open there until the receiver has it"
        )
    try:
        return SharedBuffer(mine, name)
    except BaseException:
        os.close(mine)
        raise


# ------------------------------------------------------------- stable hashes

_NONE_HASH = 0x5EED_0001
_OTHER_TAG = b"batchloader-other"


def stable_hash(key: Any) -> int:
    """A 64-bit hash of ``key`` that is the same in every process (Python's is not, for ``str``).

    Keys that compare equal hash equally when they are numbers (Python's own
    numeric hash, which is not randomized: ``1 == 1.0 == True``), ``None``,
    ``str``, ``bytes``, and tuples and frozensets of these. Any other key is
    hashed by its pickled bytes, so an equal key that pickles differently is
    not found. Raises ``TypeError`` for unhashable keys, as a dict does.
    """
    kind = type(key)
    if kind is str:
        return _digest(key.encode("utf-8", "surrogatepass"))
    if kind is int:
        return hash(key)
    if key is None:
        return _NONE_HASH
    if isinstance(key, str):
        return _digest(key.encode("utf-8", "surrogatepass"))
    if isinstance(key, bytes):
        return _digest(key)
    if isinstance(key, numbers.Number | np.bool_):
        return hash(key)
    if isinstance(key, tuple):
        return hash(tuple(stable_hash(item) for item in key))
    if isinstance(key, frozenset):
        return hash(frozenset(stable_hash(item) for item in key))
    hash(key)  # an unhashable key fails here, with Python's own message
    return _digest(_OTHER_TAG + pickle.dumps(key, _PROTOCOL))


def _digest(data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little", signed=True)
