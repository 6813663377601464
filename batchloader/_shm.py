"""Shared-memory batches: create in a worker, map in the main process, release.

Ownership (see docs/design/worker-protocol.md ("Shared memory: ownership and reuse")): a worker *creates* a segment
(a file under ``/dev/shm``) and writes a batch into it; the result it sends
holds only the segment's name (:class:`_ShmArray`). The main process *maps*
the segment and unlinks its name at once: from then on no file exists, and
the memory lives exactly as long as the mappings of it.

Nothing is left behind: every name is unguessable (``secrets``), created
exclusively, and written into the pool's shared name table (:class:`Names`)
*before* its file is made. The main process removes what the table holds
when the workers stop (an abandoned epoch, a worker killed mid-batch); if
the main process itself dies, each worker notices its parent is gone and
removes them (see ``_worker``). Cleanup only ever unlinks names in the table.

Reuse: each worker keeps up to ``_SLOTS_PER_WORKER`` long-lived segments
("slots") and one byte per slot in a shared ``leases`` array. The worker sets
the byte when it sends a batch in the slot; the main process maps each slot
once, watches its view with a weak reference, and clears the byte at its next
call after the last tensor viewing that batch is freed. A batch then costs no segment
creation, no page faults and no page freeing, in either process. When every
slot is leased (the user keeps many batches), a one-off segment is used, and
the main process unlinks it as soon as it has mapped it.

Small arrays travel inline in the result pickle: below ``_SHM_MIN_BYTES`` a
segment's system calls cost more than copying the bytes.

Knows nothing of loaders.
"""

from __future__ import annotations

import itertools
import math
import mmap
import os
import secrets
import warnings
import weakref
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._nested import map_batch

__all__ = [
    "Names",
    "Receiver",
    "ShmFullError",
    "abandon",
    "allocating",
    "empty",
    "enable_worker_allocation",
    "needs_torch_pickling",
    "new_leases",
    "new_prefix",
    "pack",
    "release",
]

_SHM_DIR = "/dev/shm"
# Below this a segment's syscalls cost more than pickling the bytes inline.
_SHM_MIN_BYTES = 64 * 1024
# Reusable segments per worker: enough for its share of the prefetch window
# plus the batches the user still holds, in every tensor of a batch.
_SLOTS_PER_WORKER = 16
# A slot is reused for a smaller array only while it wastes at most half of itself.
_SLOT_SLACK = 2
# One-off segments (every slot leased) whose names a worker keeps for cleanup.
_ONE_OFF_RECORDS = 32
# A recorded name: "batchloader-" + 16 hex + "-" + 16 hex, null-padded.
_NAME_BYTES = 48
# Fresh random names tried before giving up on a squatted prefix.
_NAME_TRIES = 8
# A worker keeps at most this in reusable slots, and at most 1/_KEEP_SHARE of
# /dev/shm's free space divided among the workers: a small /dev/shm (docker's
# 64 MB) keeps few slots, and batches that fit no slot use one-off segments.
_KEEP_BYTES_MAX = 256 << 20
_KEEP_SHARE = 4


class ShmFullError(OSError):
    """The shared-memory filesystem has no room for a batch."""


@dataclass(frozen=True, slots=True)
class _ShmArray:
    """A tensor or array that lives in a named shared-memory segment."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    kind: str  # "torch" | "numpy"
    nbytes: int
    slot: int | None  # a reused segment's lease index; None for a one-off segment

    def __reduce__(self) -> tuple[Any, ...]:
        # Positional rebuild: several times cheaper than a frozen dataclass's setstate.
        return (_ShmArray, (self.name, self.shape, self.dtype, self.kind, self.nbytes, self.slot))


@dataclass(frozen=True, slots=True)
class _InlineArray:
    """A small tensor carried by value as a NumPy array; arrives as a tensor again."""

    array: np.ndarray

    def __reduce__(self) -> tuple[Any, ...]:
        # Its bytes, dtype and shape: several times cheaper to pickle than the ndarray's
        # own reduction. A bytearray unpickles writable (torch.from_numpy needs that).
        a = self.array
        data = bytearray(a if a.flags.c_contiguous else np.ascontiguousarray(a))
        return (_inline_from_bytes, (data, a.dtype.str, a.shape))


def _inline_from_bytes(data: bytearray, dtype: str, shape: tuple[int, ...]) -> _InlineArray:
    return _InlineArray(np.frombuffer(data, dtype).reshape(shape))


@dataclass(slots=True)
class _Slot:
    """A worker's reusable segment, kept mapped for the worker's lifetime."""

    name: str
    capacity: int
    buf: mmap.mmap


@dataclass(slots=True)
class _Arena:
    """This worker process's allocator: names, its slots, and this batch's segments."""

    prefix: str
    counter: itertools.count
    leases: Any  # shared bytes, one per slot of every worker: 1 while leased
    slot_range: range  # the lease indices that belong to this worker
    slots: dict[int, _Slot]
    segments: dict[int, tuple[str, int, int | None]]  # storage data_ptr -> (name, nbytes, slot)
    names: Names | None  # where each name is recorded before its file is made
    worker_id: int
    keep_bytes: int  # what this worker may keep in slots, from /dev/shm's free space


_arena: _Arena | None = None


def new_prefix() -> str:
    """A segment-name prefix unique to one pool of workers, and unguessable."""
    return f"batchloader-{secrets.token_hex(8)}"


def new_leases(ctx: Any, num_workers: int) -> Any:
    """The shared lease bytes for a pool of ``num_workers`` workers."""
    return _shared_bytes(ctx, "B", num_workers * _SLOTS_PER_WORKER)


def _shared_bytes(ctx: Any, typecode: str, size: int) -> Any:
    """``size`` zeroed bytes that the main process and its workers share.

    Forked workers inherit an anonymous shared mapping: no file, a few
    microseconds. Spawned and forkserver workers receive them by pickling,
    which takes ``multiprocessing``'s ``RawArray`` (a file in a heap arena: the
    first one in a process costs ~1.5 ms, and a new loader's time to its first
    batch is made of such costs). Both index and slice as bytes do.
    """
    if ctx.get_start_method() == "fork":
        return mmap.mmap(-1, max(size, 1))
    return ctx.RawArray(typecode, size)


class Names:
    """The names of every segment a pool's workers may have made: what cleanup removes.

    One fixed-size record per slot of each worker, and a ring of records for
    its one-off segments. A worker writes a name here before it creates the
    file, so a name the main process never received is still known.
    """

    def __init__(self, ctx: Any, num_workers: int):
        self.records_per_worker = _SLOTS_PER_WORKER + _ONE_OFF_RECORDS
        self.table = _shared_bytes(ctx, "c", num_workers * self.records_per_worker * _NAME_BYTES)

    def record(self, worker_id: int, index: int, name: str) -> None:
        start = (worker_id * self.records_per_worker + index) * _NAME_BYTES
        self.table[start : start + _NAME_BYTES] = name.encode().ljust(_NAME_BYTES, b"\0")

    def all(self) -> list[str]:
        return self._names(0, len(self.table))

    def _names(self, start: int, stop: int) -> list[str]:
        raw = bytes(self.table[start:stop])
        records = (raw[i : i + _NAME_BYTES] for i in range(0, len(raw), _NAME_BYTES))
        return [r.rstrip(b"\0").decode() for r in records if r[0]]

    def unlink_all(self) -> int:
        """Removes every recorded segment that still has a file; returns how many."""
        return sum(_unlink_quietly(name) for name in self.all())

    def unlink_worker(self, worker_id: int) -> int:
        """Removes the segments of one worker that has exited, and forgets their names.

        Its id then goes to a new worker, which records its own names in the same places.
        """
        size = self.records_per_worker * _NAME_BYTES
        start = worker_id * size
        removed = sum(_unlink_quietly(name) for name in self._names(start, start + size))
        self.table[start : start + size] = bytes(size)
        return removed


def _unlink_quietly(name: str) -> bool:
    try:
        os.unlink(os.path.join(_SHM_DIR, name))
    except (FileNotFoundError, PermissionError):
        return False
    return True


def enable_worker_allocation(
    prefix: str, leases: Any = None, worker_id: int = 0, names: Names | None = None
) -> None:
    """Makes :func:`empty` allocate shared segments in this (worker) process."""
    global _arena
    first = worker_id * _SLOTS_PER_WORKER
    count = len(leases) if leases is not None else 0
    slot_range = range(min(first, count), min(first + _SLOTS_PER_WORKER, count))
    num_workers = max(1, count // _SLOTS_PER_WORKER)
    keep = _keep_bytes(num_workers)
    _arena = _Arena(prefix, itertools.count(), leases, slot_range, {}, {}, names, worker_id, keep)


def _create_segment(arena: _Arena, nbytes: int, record: int) -> tuple[str, mmap.mmap]:
    """A new segment of ``nbytes``, its name recorded first; a taken name is drawn again."""
    for _ in range(_NAME_TRIES):
        name = f"{arena.prefix}-{secrets.token_hex(8)}"
        if arena.names is not None:
            arena.names.record(arena.worker_id, record, name)
        try:
            return name, _create_file(name, nbytes)
        except FileExistsError:
            continue
    raise FileExistsError(
        f"{_NAME_TRIES} random shared-memory names under {_SHM_DIR} were all taken; "
        "another process is creating files with this loader's prefix"
    )


def _create_file(name: str, nbytes: int) -> mmap.mmap:
    path = os.path.join(_SHM_DIR, name)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        # fallocate reserves the pages now: a full /dev/shm is an error here,
        # not a SIGBUS when the batch is written.
        os.posix_fallocate(fd, 0, nbytes)
        return mmap.mmap(fd, nbytes)
    except OSError as e:
        os.unlink(path)
        raise ShmFullError(
            e.errno,
            f"cannot allocate a {nbytes}-byte shared-memory batch in {_SHM_DIR} ({e.strerror}); "
            "make /dev/shm larger (docker: --shm-size), use fewer workers or a smaller "
            "prefetch_factor, or pass thread_pool=True",
        ) from e
    finally:
        os.close(fd)


def _open_segment(name: str) -> mmap.mmap:
    """Maps a worker's segment and unlinks its name: the mappings keep the memory."""
    path = os.path.join(_SHM_DIR, name)
    fd = os.open(path, os.O_RDWR)
    try:
        return mmap.mmap(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
        _unlink_quietly(name)


def _torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name.removeprefix("torch."))


def _lease_slot(arena: _Arena, nbytes: int) -> int | None:
    """A free slot holding at least ``nbytes`` (made or remade if needed), now leased."""
    free = [i for i in arena.slot_range if arena.leases[i] == 0]
    for i in free:
        slot = arena.slots.get(i)
        if slot is not None and nbytes <= slot.capacity <= _SLOT_SLACK * nbytes:
            arena.leases[i] = 1
            return i
    if not free:
        return None
    i = next((i for i in free if i not in arena.slots), free[0])
    _drop_slot(arena, i)
    kept = sum(slot.capacity for slot in arena.slots.values())
    if kept + nbytes > arena.keep_bytes:
        _drop_free_slots(arena)  # make room by what the user no longer holds
        kept = sum(slot.capacity for slot in arena.slots.values())
        if kept + nbytes > arena.keep_bytes:
            return None  # over the byte budget: a one-off segment, freed once received
    name, buf = _create_segment(arena, nbytes, record=i - arena.slot_range.start)
    arena.slots[i] = _Slot(name, nbytes, buf)
    arena.leases[i] = 1
    return i


def _drop_slot(arena: _Arena, i: int) -> None:
    old = arena.slots.pop(i, None)
    if old is not None:
        _unlink_quietly(old.name)  # usually gone already: the main process unlinks on mapping


def _drop_free_slots(arena: _Arena) -> None:
    for i in [i for i in arena.slots if arena.leases[i] == 0]:
        _drop_slot(arena, i)


def _keep_bytes(num_workers: int) -> int:
    """What one worker may keep in reusable slots: a share of /dev/shm's free space."""
    try:
        stats = os.statvfs(_SHM_DIR)
    except OSError:
        return 0
    free = stats.f_bavail * stats.f_frsize
    return min(_KEEP_BYTES_MAX, free // (_KEEP_SHARE * max(1, num_workers)))


def allocating() -> bool:
    """Whether :func:`empty` puts large tensors in shared memory (in a process worker)."""
    return _arena is not None


def empty(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor; in a worker, large ones live in shared memory."""
    numel = math.prod(shape)
    nbytes = numel * dtype.itemsize
    arena = _arena
    if arena is None or nbytes < _SHM_MIN_BYTES:
        return torch.empty(shape, dtype=dtype)
    try:
        name, buf, slot = _segment_for(arena, nbytes)
    except ShmFullError:
        # /dev/shm is short: the batch goes the slower way, pickled through the pipe.
        _warn_short_shm(nbytes)
        return torch.empty(shape, dtype=dtype)
    tensor = torch.frombuffer(buf, dtype=dtype, count=numel).view(shape)
    arena.segments[tensor.untyped_storage().data_ptr()] = (name, nbytes, slot)
    return tensor


def _segment_for(arena: _Arena, nbytes: int) -> tuple[str, mmap.mmap, int | None]:
    """A leased slot or a one-off segment of ``nbytes``; on a full /dev/shm, tries once
    more after dropping the free slots."""
    for attempt in range(2):
        try:
            slot = _lease_slot(arena, nbytes)
            if slot is not None:
                return arena.slots[slot].name, arena.slots[slot].buf, slot
            ring = _SLOTS_PER_WORKER + next(arena.counter) % _ONE_OFF_RECORDS
            name, buf = _create_segment(arena, nbytes, record=ring)
            return name, buf, None
        except ShmFullError:
            if attempt:
                raise
            _drop_free_slots(arena)
    raise RuntimeError("[INTERNAL ERROR] _segment_for fell through")


_warned_short_shm = False


def _warn_short_shm(nbytes: int) -> None:
    global _warned_short_shm
    if not _warned_short_shm:
        _warned_short_shm = True
        warnings.warn(
            f"{_SHM_DIR} has no room for a {nbytes}-byte batch, so batches that do not fit are "
            "pickled through the worker's pipe instead (slower); make /dev/shm larger "
            "(docker: --shm-size) to avoid it",
            ResourceWarning,
            stacklevel=2,
        )


_LEAVES = (torch.Tensor, np.ndarray, _ShmArray, _InlineArray)


def _is_leaf(obj: Any) -> bool:
    return isinstance(obj, _LEAVES)


def _map(obj: Any, fn: Callable[[Any], Any]) -> Any:
    """Applies ``fn`` to every tensor, array and handle in a nested batch."""
    return map_batch(obj, fn, _is_leaf)


def _kept(t: Any) -> Any:
    """A tensor (or an object that may hold some) left for torch's own pickling.

    The result then needs ``ForkingPickler``, which shares a tensor's storage
    rather than copying its bytes into the pipe.
    """
    global _kept_tensors
    _kept_tensors = True
    return t


def _pack_tensor(t: torch.Tensor) -> Any:
    if type(t) is not torch.Tensor:
        return _kept(t)  # a subclass keeps its type and attributes only through its own reduction
    if t.device.type != "cpu" or t.requires_grad or t.is_nested or t.layout != torch.strided:
        return _kept(t)  # nested, sparse and accelerator tensors travel by torch's own pickling
    arena = _arena
    if arena is not None and t.is_contiguous() and t.storage_offset() == 0:
        entry = arena.segments.pop(t.untyped_storage().data_ptr(), None)
        if entry is not None:
            name, nbytes, slot = entry
            if nbytes == t.nbytes:
                return _ShmArray(name, tuple(t.shape), str(t.dtype), "torch", nbytes, slot)
            _give_back(arena, name, slot)
    if t.nbytes < _SHM_MIN_BYTES or arena is None:
        if t.dtype == torch.bfloat16 or t.is_shared():
            return _kept(t)  # numpy has no bfloat16; shared ones go by torch's own sharing
        return _InlineArray(t.numpy())
    copy = empty(tuple(t.shape), t.dtype)
    if copy.untyped_storage().data_ptr() not in arena.segments:  # /dev/shm is short
        return _kept(t) if t.dtype == torch.bfloat16 else _InlineArray(t.numpy())
    copy.copy_(t)
    return _pack_tensor(copy)


def _pack_array(a: np.ndarray) -> Any:
    if a.dtype.hasobject or _arena is None or a.nbytes < _SHM_MIN_BYTES:
        return a
    holder = empty((a.nbytes,), torch.uint8)
    entry = _arena.segments.pop(holder.untyped_storage().data_ptr(), None)
    if entry is None:  # /dev/shm is short: pickled with the result
        return a
    holder.numpy().view(a.dtype).reshape(a.shape)[...] = a
    name, nbytes, slot = entry
    return _ShmArray(name, a.shape, a.dtype.str, "numpy", nbytes, slot)


def _give_back(arena: _Arena, name: str, slot: int | None) -> None:
    """Frees a segment allocated for this batch that is not being sent."""
    if slot is not None:
        arena.leases[slot] = 0
    else:
        _unlink_quietly(name)


# What packing walks into or sends as it is: any other object (a dataclass, a custom
# batch class) may hold tensors that the walk does not reach.
_PLAIN = (str, bytes, bytearray, int, float, complex, type(None), np.generic, Mapping, Sequence)


def _pack_is_leaf(obj: Any) -> bool:
    return isinstance(obj, _LEAVES) or not isinstance(obj, _PLAIN)


def _pack_leaf(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return _pack_tensor(obj)
    if isinstance(obj, np.ndarray):
        return _pack_array(obj) if type(obj) is np.ndarray else obj
    if not isinstance(obj, _LEAVES):  # an object the walk leaves whole: torch's pickling
        return _kept(obj)
    return obj


_kept_tensors = False  # the last pack() left a tensor for torch's own pickling


def pack(batch: Any) -> Any:
    """Replaces the batch's tensors and arrays by picklable handles (in a worker)."""
    global _kept_tensors
    _kept_tensors = False
    try:
        return map_batch(batch, _pack_leaf, _pack_is_leaf)
    finally:
        abandon()


def needs_torch_pickling() -> bool:
    """Whether the last :func:`pack` left tensors that only torch's reductions send well.

    Otherwise the result pickles with the plain (C) pickler, which is faster
    than ``multiprocessing``'s ``ForkingPickler``.
    """
    return _kept_tensors


class Receiver:
    """The main process's side of one pool's segments: maps, views and releases them."""

    def __init__(self, leases: Any):
        self._leases = leases
        self._maps: dict[int, tuple[str, mmap.mmap]] = {}  # slot -> its current segment
        # A leased slot's bytes are watched by a weak reference whose callback is
        # list.append, which runs no Python code: freeing a batch can never swallow a
        # KeyboardInterrupt (as a __del__ could). The slots are freed at the next collect().
        # id(weak reference) -> (the reference, kept alive so it calls back; its slot)
        self._views: dict[int, tuple[weakref.ref[np.ndarray], int]] = {}
        self._dead: list[weakref.ref[np.ndarray]] = []
        self.bytes_received = 0  # the arrays' bytes of every batch unpacked (statistics)

    def collect(self) -> None:
        """Frees the slots whose batches the user no longer holds."""
        dead, views, leases = self._dead, self._views, self._leases
        while dead:
            leases[views.pop(id(dead.pop()))[1]] = 0

    def unpack(self, packed: Any) -> Any:
        """Turns a packed batch's handles back into tensors and arrays."""
        self.collect()
        return _map(packed, self._unpack_leaf)

    def _unpack_leaf(self, obj: Any) -> Any:
        if isinstance(obj, _InlineArray):
            self.bytes_received += obj.array.nbytes
            return torch.from_numpy(obj.array)
        if not isinstance(obj, _ShmArray):
            return obj
        self.bytes_received += obj.nbytes
        raw = self._bytes(obj)
        if obj.kind == "numpy":
            return np.asarray(raw.view(np.dtype(obj.dtype)).reshape(obj.shape))
        return torch.from_numpy(raw).view(_torch_dtype(obj.dtype)).view(obj.shape)

    def _bytes(self, obj: _ShmArray) -> np.ndarray:
        if obj.slot is None:
            return np.frombuffer(_open_segment(obj.name), np.uint8, obj.nbytes)
        cached = self._maps.get(obj.slot)
        if cached is None or cached[0] != obj.name:
            # Both sides have it mapped from now on: the file is no longer needed.
            cached = (obj.name, _open_segment(obj.name))
            self._maps[obj.slot] = cached
        raw = np.frombuffer(cached[1], np.uint8, obj.nbytes)
        watch = weakref.ref(raw, self._dead.append)
        self._views[id(watch)] = (watch, obj.slot)
        return raw

    def release(self, packed: Any) -> None:
        """Frees the segments of a packed batch that will never be unpacked.

        A slot seen here for the first time is mapped all the same, which
        unlinks its file: the worker reuses it, and no file outlives the batch.
        """

        def map_new_slots(obj: Any) -> None:
            if isinstance(obj, _ShmArray) and obj.slot is not None:
                cached = self._maps.get(obj.slot)
                if cached is None or cached[0] != obj.name:
                    try:
                        self._maps[obj.slot] = (obj.name, _open_segment(obj.name))
                    except FileNotFoundError:
                        pass  # already cleaned up (the pool is stopping)

        _map(packed, map_new_slots)
        release(packed, self._leases)


def release(packed: Any, leases: Any) -> None:
    """Frees the segments of a packed batch that will never be unpacked (either side)."""

    def leaf(obj: Any) -> None:
        if not isinstance(obj, _ShmArray):
            return
        if obj.slot is not None:
            leases[obj.slot] = 0
            return
        _unlink_quietly(obj.name)

    _map(packed, leaf)


def abandon() -> None:
    """Frees what this worker allocated for a batch that failed before it was packed."""
    if _arena is not None:
        for name, _, slot in _arena.segments.values():
            _give_back(_arena, name, slot)
        _arena.segments.clear()
