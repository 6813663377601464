"""Shared-memory batches: create in a worker, map in the main process, release.

Ownership (see docs/design/worker-protocol.md ("Shared memory: ownership and reuse")): a worker *creates* a segment
(a file under ``/dev/shm``) and writes a batch into it; the result it sends
holds only the segment's name (:class:`_ShmArray`). The main process *maps*
the segment and unlinks its name at once, so the memory lives exactly as long
as the tensor that views it. Segments whose results were never mapped (an
abandoned epoch) are removed by :func:`unlink_prefix` after the workers stop.

Reuse: each worker keeps up to ``_SLOTS_PER_WORKER`` long-lived segments
("slots") and one byte per slot in a shared ``leases`` array. The worker sets
the byte when it sends a batch in the slot; the main process maps each slot
once, views it through a :class:`_Lease` array, and clears the byte when the
last tensor viewing that batch is freed. A batch then costs no segment
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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ._nested import map_batch

__all__ = [
    "Receiver",
    "ShmFullError",
    "abandon",
    "allocating",
    "empty",
    "enable_worker_allocation",
    "new_leases",
    "new_prefix",
    "pack",
    "release",
    "unlink_prefix",
]

_SHM_DIR = "/dev/shm"
# Below this a segment's syscalls cost more than pickling the bytes inline.
_SHM_MIN_BYTES = 64 * 1024
# Reusable segments per worker: enough for its share of the prefetch window
# plus the batches the user still holds, in every tensor of a batch.
_SLOTS_PER_WORKER = 16
# A slot is reused for a smaller array only while it wastes at most half of itself.
_SLOT_SLACK = 2


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


@dataclass(frozen=True, slots=True)
class _InlineArray:
    """A small tensor carried by value as a NumPy array; arrives as a tensor again."""

    array: np.ndarray


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


_arena: _Arena | None = None


def new_prefix() -> str:
    """A segment-name prefix unique to one pool of workers."""
    return f"batchloader-{os.getpid()}-{secrets.token_hex(4)}"


def new_leases(ctx: Any, num_workers: int) -> Any:
    """The shared lease bytes for a pool of ``num_workers`` workers."""
    return ctx.RawArray("B", num_workers * _SLOTS_PER_WORKER)


def enable_worker_allocation(prefix: str, leases: Any = None, worker_id: int = 0) -> None:
    """Makes :func:`empty` allocate shared segments in this (worker) process."""
    global _arena
    first = worker_id * _SLOTS_PER_WORKER
    count = len(leases) if leases is not None else 0
    slot_range = range(min(first, count), min(first + _SLOTS_PER_WORKER, count))
    _arena = _Arena(prefix, itertools.count(), leases, slot_range, {}, {})


def _create_segment(name: str, nbytes: int) -> mmap.mmap:
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


def _open_segment(name: str, *, unlink: bool) -> mmap.mmap:
    path = os.path.join(_SHM_DIR, name)
    fd = os.open(path, os.O_RDWR)
    try:
        return mmap.mmap(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
        if unlink:
            os.unlink(path)


def _torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name.removeprefix("torch."))


def _new_name(arena: _Arena) -> str:
    return f"{arena.prefix}-{os.getpid()}-{next(arena.counter)}"


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
    old = arena.slots.pop(i, None)
    if old is not None:
        os.unlink(os.path.join(_SHM_DIR, old.name))
    name = _new_name(arena)
    arena.slots[i] = _Slot(name, nbytes, _create_segment(name, nbytes))
    arena.leases[i] = 1
    return i


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
    slot = _lease_slot(arena, nbytes)
    if slot is None:
        name, buf = _new_name(arena), None
        buf = _create_segment(name, nbytes)
    else:
        name, buf = arena.slots[slot].name, arena.slots[slot].buf
    tensor = torch.frombuffer(buf, dtype=dtype, count=numel).view(shape)
    arena.segments[tensor.untyped_storage().data_ptr()] = (name, nbytes, slot)
    return tensor


def _map(obj: Any, fn: Callable[[Any], Any]) -> Any:
    """Applies ``fn`` to every tensor, array and handle in a nested batch."""
    return map_batch(
        obj, fn, lambda x: isinstance(x, torch.Tensor | np.ndarray | _ShmArray | _InlineArray)
    )


def _pack_tensor(t: torch.Tensor) -> Any:
    if t.device.type != "cpu" or t.requires_grad or t.is_nested or t.layout != torch.strided:
        return t  # nested, sparse and accelerator tensors travel by torch's own pickling
    if type(t) is not torch.Tensor:
        return t  # a subclass keeps its type and attributes only through its own reduction
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
            return t  # numpy has no bfloat16; shared ones go by torch's own sharing
        return _InlineArray(t.numpy())
    copy = empty(tuple(t.shape), t.dtype)
    copy.copy_(t)
    return _pack_tensor(copy)


def _pack_array(a: np.ndarray) -> Any:
    if a.dtype.hasobject or _arena is None or a.nbytes < _SHM_MIN_BYTES:
        return a
    holder = empty((a.nbytes,), torch.uint8)
    holder.numpy().view(a.dtype).reshape(a.shape)[...] = a
    name, nbytes, slot = _arena.segments.pop(holder.untyped_storage().data_ptr())
    return _ShmArray(name, a.shape, a.dtype.str, "numpy", nbytes, slot)


def _give_back(arena: _Arena, name: str, slot: int | None) -> None:
    """Frees a segment allocated for this batch that is not being sent."""
    if slot is not None:
        arena.leases[slot] = 0
    else:
        os.unlink(os.path.join(_SHM_DIR, name))


def _pack_leaf(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return _pack_tensor(obj)
    if isinstance(obj, np.ndarray) and type(obj) is np.ndarray:
        return _pack_array(obj)
    return obj


def pack(batch: Any) -> Any:
    """Replaces the batch's tensors and arrays by picklable handles (in a worker)."""
    try:
        return _map(batch, _pack_leaf)
    finally:
        abandon()


class _Lease(np.ndarray):
    """Bytes of a leased slot; when the last view of them dies, the slot is free again."""

    def __del__(self) -> None:
        lease = self.__dict__.get("lease")
        if lease is not None:
            leases, slot = lease
            leases[slot] = 0


class Receiver:
    """The main process's side of one pool's segments: maps, views and releases them."""

    def __init__(self, leases: Any):
        self._leases = leases
        self._maps: dict[int, tuple[str, mmap.mmap]] = {}  # slot -> its current segment

    def unpack(self, packed: Any) -> Any:
        """Turns a packed batch's handles back into tensors and arrays."""
        return _map(packed, self._unpack_leaf)

    def _unpack_leaf(self, obj: Any) -> Any:
        if isinstance(obj, _InlineArray):
            return torch.from_numpy(obj.array)
        if not isinstance(obj, _ShmArray):
            return obj
        raw = self._bytes(obj)
        if obj.kind == "numpy":
            return np.asarray(raw.view(np.dtype(obj.dtype)).reshape(obj.shape))
        return torch.from_numpy(raw).view(_torch_dtype(obj.dtype)).view(obj.shape)

    def _bytes(self, obj: _ShmArray) -> np.ndarray:
        if obj.slot is None:
            return np.frombuffer(_open_segment(obj.name, unlink=True), np.uint8, obj.nbytes)
        cached = self._maps.get(obj.slot)
        if cached is None or cached[0] != obj.name:
            cached = (obj.name, _open_segment(obj.name, unlink=False))
            self._maps[obj.slot] = cached
        raw = np.frombuffer(cached[1], np.uint8, obj.nbytes).view(_Lease)
        raw.lease = (self._leases, obj.slot)
        return raw

    def release(self, packed: Any) -> None:
        """Frees the segments of a packed batch that will never be unpacked."""
        release(packed, self._leases)


def release(packed: Any, leases: Any) -> None:
    """Frees the segments of a packed batch that will never be unpacked (either side)."""

    def leaf(obj: Any) -> None:
        if not isinstance(obj, _ShmArray):
            return
        if obj.slot is not None:
            leases[obj.slot] = 0
            return
        try:
            os.unlink(os.path.join(_SHM_DIR, obj.name))
        except FileNotFoundError:
            pass

    _map(packed, leaf)


def abandon() -> None:
    """Frees what this worker allocated for a batch that failed before it was packed."""
    if _arena is not None:
        for name, _, slot in _arena.segments.values():
            _give_back(_arena, name, slot)
        _arena.segments.clear()


def unlink_prefix(prefix: str) -> int:
    """Removes every segment whose name starts with ``prefix``; returns how many."""
    removed = 0
    try:
        names = os.listdir(_SHM_DIR)
    except FileNotFoundError:
        return 0
    for name in names:
        if name.startswith(prefix + "-"):
            try:
                os.unlink(os.path.join(_SHM_DIR, name))
                removed += 1
            except FileNotFoundError:
                pass
    return removed
