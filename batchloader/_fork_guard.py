"""Forking while none of the loader's own threads runs.

Python 3.12+ warns when a process that runs more than one thread forks, and
the warning is right: a fork copies only the forking thread, so a lock that
another thread held at that moment stays held in the child for ever. The
pool itself runs no thread (see ``_pool``); the loader's other threads (a
pin-memory stage, thread workers) step aside while a worker is forked: each
*parks* at a safe point (between batches, holding no lock and no batch), the
fork happens, and each starts again where it stopped.

Threads the program started itself (a progress bar's monitor, a logger's
writer, another library's pool) are not the loader's to stop: with them
running, Python warns as it does for torch's loader (docs/workers.md).

A thread that can park calls :func:`mark_parkable` when it starts, checks
:func:`park_requested` at its safe points, and its owner registers an object
with ``park(timeout_s) -> None`` and ``resume() -> None`` (:class:`Parkable`).
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from collections.abc import Iterator
from typing import Protocol

__all__ = [
    "ParkRequested",
    "Parkable",
    "Parking",
    "forking",
    "join_thread",
    "mark_parkable",
    "park_requested",
    "register",
]

# How long a fork waits for the loader's threads to park: one batch of a slow pin
# function or dataset should fit; past it the fork goes ahead (and Python may warn).
_PARK_WAIT_S = 2.0
# How long a joined thread gets to leave the system's thread list (microseconds, usually).
_EXIT_WAIT_S = 0.05
_EXIT_POLL_S = 0.0002


class ParkRequested(Exception):
    """Raised inside a wait loop of a parkable thread when a fork waits for it to park."""


class Parkable(Protocol):
    """What owns a parkable thread: stops it at a safe point, and starts it again."""

    def park(self, timeout_s: float) -> None: ...

    def resume(self) -> None: ...


_requested = threading.Event()
_local = threading.local()
_owners: weakref.WeakSet[Parkable] = weakref.WeakSet()
# One fork at a time: a second would resume threads the first still needs parked.
_fork_lock = threading.Lock()


def mark_parkable() -> None:
    """Called by a thread of the loader's when it starts: it parks when a fork asks."""
    _local.parkable = True


def park_requested() -> bool:
    """Whether the calling thread is parkable and a fork is waiting for it to park."""
    return _requested.is_set() and getattr(_local, "parkable", False)


class Parking:
    """One parkable thread's decision to park, taken under a lock against its resumption.

    The thread calls :meth:`now` at each safe point and returns if it says
    so; its owner's ``resume()`` calls :meth:`unpark` and starts a new thread
    if the old one parked. The lock makes the two exclusive, so a thread that
    decides to park is always started again.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.parked = False

    def now(self) -> bool:
        """In the thread, at a safe point: whether to park (and so return) now."""
        if not park_requested():
            return False
        with self._lock:
            if not _requested.is_set():
                return False
            self.parked = True
            return True

    def unpark(self) -> bool:
        """For ``resume()``: whether the thread parked and must be started again."""
        with self._lock:
            parked, self.parked = self.parked, False
            return parked


def join_thread(thread: threading.Thread, timeout_s: float) -> None:
    """Joins a parked (or ending) ``thread``, then waits until the system has removed it too.

    ``join()`` returns once the thread's Python state is gone, a moment
    before its system thread exits; Python 3.12+ counts the process's system
    threads when it warns at a fork, so a fork right after a join could still
    see it.
    """
    thread.join(timeout_s)
    if thread.is_alive() or thread.native_id is None:
        return
    task = f"/proc/self/task/{thread.native_id}"
    deadline = time.monotonic() + _EXIT_WAIT_S
    while os.path.exists(task) and time.monotonic() < deadline:
        time.sleep(_EXIT_POLL_S)


def register(owner: Parkable) -> None:
    """Makes every later fork park ``owner``'s thread first (held weakly)."""
    _owners.add(owner)


@contextlib.contextmanager
def forking() -> Iterator[None]:
    """Parks every thread of the loader's for the forks made in this block."""
    if getattr(_local, "parkable", False) or getattr(_local, "forking", False):
        # Already parked (a nested block), or a parkable thread, which cannot wait for
        # itself to park. The loader forks only from the thread that iterates it
        # (auto-sizing does it there), so only a loader iterated inside a thread
        # worker forks from a parkable thread.
        yield
        return
    _local.forking = True
    try:
        with _parked():
            yield
    finally:
        _local.forking = False


@contextlib.contextmanager
def _parked() -> Iterator[None]:
    with _fork_lock:
        owners = list(_owners)
        _requested.set()
        try:
            deadline = time.monotonic() + _PARK_WAIT_S
            for owner in owners:
                owner.park(max(0.0, deadline - time.monotonic()))
            yield
        finally:
            _requested.clear()
            for owner in owners:
                owner.resume()
