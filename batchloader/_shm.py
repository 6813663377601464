"""Shared-memory batches: create in a worker, map in the main process, release.

Ownership (see docs/design/shared-memory.md): a worker *creates* a segment
(a file under ``/dev/shm``) and writes a batch into it; the result it sends
holds only the segment's name (:class:`_ShmArray`). The main process *maps*
the segment and unlinks its name at once, so the memory lives exactly as long
as the tensor that views it. Segments whose results were never mapped (an
abandoned epoch) are removed by :func:`unlink_prefix` after the workers stop.

Small arrays travel inline in the result pickle: below ``_SHM_MIN_BYTES`` a
segment's create/map/unlink system calls cost more than copying the bytes.

Knows nothing of loaders.
"""

from __future__ import annotations

import itertools
import mmap
import os
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

__all__ = [
    "ShmFullError",
    "empty",
    "enable_worker_allocation",
    "new_prefix",
    "pack",
    "release",
    "unlink_prefix",
    "unpack",
]

_SHM_DIR = "/dev/shm"
# Below this a segment's syscalls cost more than pickling the bytes inline.
_SHM_MIN_BYTES = 64 * 1024


class ShmFullError(OSError):
    """The shared-memory filesystem has no room for a batch."""


@dataclass(frozen=True, slots=True)
class _ShmArray:
    """A tensor or array that lives in a named shared-memory segment."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    kind: str  # "torch" | "numpy"


@dataclass(frozen=True, slots=True)
class _InlineArray:
    """A small tensor or array carried by value as a NumPy array."""

    array: np.ndarray
    dtype: str
    kind: str


@dataclass(slots=True)
class _Arena:
    """This worker process's allocator: a name prefix and live segments."""

    prefix: str
    counter: itertools.count
    segments: dict[int, tuple[str, int]]  # storage data_ptr -> (name, nbytes)


_arena: _Arena | None = None


def new_prefix() -> str:
    """A segment-name prefix unique to one pool of workers."""
    return f"batchloader-{os.getpid()}-{secrets.token_hex(4)}"


def enable_worker_allocation(prefix: str) -> None:
    """Makes :func:`empty` allocate shared segments in this (worker) process."""
    global _arena
    _arena = _Arena(prefix, itertools.count(), {})


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


def _open_segment(name: str) -> mmap.mmap:
    path = os.path.join(_SHM_DIR, name)
    fd = os.open(path, os.O_RDWR)
    try:
        return mmap.mmap(fd, os.fstat(fd).st_size)
    finally:
        os.close(fd)
        os.unlink(path)


def _torch_dtype(name: str) -> torch.dtype:
    return getattr(torch, name.removeprefix("torch."))


def empty(shape: tuple[int, ...] | torch.Size, dtype: torch.dtype) -> torch.Tensor:
    """An uninitialised tensor; in a worker, large ones live in shared memory."""
    nbytes = int(np.prod(shape, dtype=np.int64)) * torch.empty((), dtype=dtype).element_size()
    if _arena is None or nbytes < _SHM_MIN_BYTES:
        return torch.empty(shape, dtype=dtype)
    name = f"{_arena.prefix}-{os.getpid()}-{next(_arena.counter)}"
    buf = _create_segment(name, nbytes)
    tensor = torch.frombuffer(buf, dtype=dtype).view(shape)
    _arena.segments[tensor.untyped_storage().data_ptr()] = (name, nbytes)
    return tensor


def _map(obj: Any, fn: Callable[[Any], Any]) -> Any:
    """Applies ``fn`` to every leaf of nested lists, tuples, namedtuples and dicts."""
    if isinstance(obj, Mapping):
        items = {k: _map(v, fn) for k, v in obj.items()}
        try:
            return type(obj)(items)
        except TypeError:
            return items
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):
        return type(obj)(*(_map(v, fn) for v in obj))
    if isinstance(obj, list | tuple):
        return type(obj)(_map(v, fn) for v in obj)
    return fn(obj)


def _pack_tensor(t: torch.Tensor) -> Any:
    if t.device.type != "cpu" or t.requires_grad:
        return t
    if _arena is not None and t.is_contiguous() and t.storage_offset() == 0:
        entry = _arena.segments.pop(t.untyped_storage().data_ptr(), None)
        if entry is not None and entry[1] == t.nbytes:
            return _ShmArray(entry[0], tuple(t.shape), str(t.dtype), "torch")
    if t.nbytes < _SHM_MIN_BYTES or _arena is None:
        if t.dtype == torch.bfloat16 or t.is_shared():
            return t  # numpy has no bfloat16; shared ones go by torch's own sharing
        return _InlineArray(t.numpy(), str(t.dtype), "torch")
    copy = empty(tuple(t.shape), t.dtype)
    copy.copy_(t)
    return _pack_tensor(copy)


def _pack_array(a: np.ndarray) -> Any:
    if a.dtype.hasobject or _arena is None or a.nbytes < _SHM_MIN_BYTES:
        return a
    name = f"{_arena.prefix}-{os.getpid()}-{next(_arena.counter)}"
    buf = _create_segment(name, a.nbytes)
    np.frombuffer(buf, dtype=a.dtype).reshape(a.shape)[...] = a
    return _ShmArray(name, a.shape, a.dtype.str, "numpy")


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
        if _arena is not None:
            _arena.segments.clear()


def _unpack_leaf(obj: Any) -> Any:
    if isinstance(obj, _ShmArray):
        buf = _open_segment(obj.name)
        if obj.kind == "numpy":
            return np.frombuffer(buf, dtype=np.dtype(obj.dtype)).reshape(obj.shape)
        return torch.frombuffer(buf, dtype=_torch_dtype(obj.dtype)).view(obj.shape)
    if isinstance(obj, _InlineArray):
        return torch.from_numpy(obj.array)
    return obj


def unpack(packed: Any) -> Any:
    """Maps a packed batch's segments into this process and unlinks their names."""
    return _map(packed, _unpack_leaf)


def _release_leaf(obj: Any) -> None:
    if isinstance(obj, _ShmArray):
        try:
            os.unlink(os.path.join(_SHM_DIR, obj.name))
        except FileNotFoundError:
            pass


def release(packed: Any) -> None:
    """Unlinks the segments of a packed batch that will never be unpacked."""
    _map(packed, _release_leaf)


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
