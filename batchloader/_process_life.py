"""A worker process's own life: the signals it inherits, its parent's death, its allocator.

A forked worker inherits the trainer's signal handlers, its memory
allocator's habits and no way of knowing that the main process died; these
functions, run once when a worker starts (and, for the signals, at the fork
itself), fix each. They know nothing of loaders.
"""

from __future__ import annotations

import _thread
import contextlib
import ctypes
import multiprocessing.util
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

__all__ = [
    "die_with_parent",
    "forget_parent_signal_handlers",
    "forking_workers",
    "keep_freed_memory",
]

# How often a process worker checks that the main process is still alive.
_PARENT_POLL_S = 0.2
# How long a worker that ends by itself waits to learn whether the main process died.
_REPARENT_WAIT_S = 1.0


# glibc mallopt parameters, and the sizes a worker keeps for reuse.
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_KEEP_FREED_BYTES = 256 << 20
_HEAP_ALLOCATION_BYTES = 32 << 20


def keep_freed_memory() -> None:
    """Makes glibc keep freed memory in this worker for the next batch.

    Otherwise each sample-sized array a dataset makes is handed back to the
    kernel when freed, and the next one faults its pages in again (copy-on-write
    faults in a forked worker): for 0.6 MB images that was most of a worker's time.
    """
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL(None)
        libc.mallopt(_M_MMAP_THRESHOLD, _HEAP_ALLOCATION_BYTES)
        libc.mallopt(_M_TRIM_THRESHOLD, _KEEP_FREED_BYTES)
    except (OSError, AttributeError):
        pass


def die_with_parent(names: Any) -> None:
    """Ends this worker soon after the main process dies, removing the pool's segments.

    A thread polls the parent pid rather than ``PR_SET_PDEATHSIG``, which
    fires when the *thread* that started the worker exits, not the process.
    A main process killed outright (SIGKILL, or SIGTERM with Python's default)
    cleans nothing up; the workers do it for it.
    """

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(_PARENT_POLL_S)
        if names is not None:
            names.unlink_all()
        os._exit(0)

    def at_exit() -> None:
        # An idle worker ends by itself when the main process dies (its task pipe
        # closes), maybe before it is reparented: give that a moment to show.
        deadline = time.monotonic() + _REPARENT_WAIT_S
        while os.getppid() == parent and time.monotonic() < deadline:
            time.sleep(_PARENT_POLL_S / 4)
        if os.getppid() != parent and names is not None:
            names.unlink_all()

    # Started without waiting for it to run (threading.Thread.start would): it has
    # nothing to do for a while, and the worker's first batch should not wait.
    _thread.start_new_thread(watch, ())
    multiprocessing.util.Finalize(None, at_exit, exitpriority=100)


def forget_parent_signal_handlers() -> None:
    """Puts back the default action of every signal the parent gave a Python handler.

    A forked worker inherits the trainer's handlers (a framework's SIGTERM
    handler that talks to the process group, say); a worker must never run
    them, and SIGTERM, which stops it, must stop it whatever the user installed.
    """
    for signum in signal.valid_signals():
        try:
            handler = signal.getsignal(signum)
        except (OSError, ValueError):
            continue
        if callable(handler) and handler is not signal.default_int_handler:
            signal.signal(signum, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the main process's to handle


_forking = threading.local()


@contextlib.contextmanager
def forking_workers() -> Iterator[None]:
    """Marks the forks made in this block (by this thread) as workers.

    A worker forgets the parent's signal handlers the moment it exists, not
    only in the pool initializer: a SIGTERM that stops a worker still starting
    up must not run the trainer's handler in it.
    """
    _forking.active = True
    try:
        yield
    finally:
        _forking.active = False


def _after_fork_in_child() -> None:
    if getattr(_forking, "active", False):
        _forking.active = False
        forget_parent_signal_handlers()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
