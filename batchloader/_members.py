"""One worker, as the main process sees it: its process or thread, its channel, what it owes.

A :class:`ProcessMember` is a worker process with its own two pipes (tasks
in, results out); a :class:`ThreadMember` is a worker thread with its own task
queue, answering into a queue shared by the pool. :func:`stop_processes` and
:func:`stop_threads` are the ordered ways to end them. The pool
(``_pool.WorkerPool``) decides who gets which task, when to start or stop one.
"""

from __future__ import annotations

import contextlib
import multiprocessing.connection
import os
import pickle
import queue
import sys
import threading
import time
import types
import warnings
from collections import deque
from multiprocessing.reduction import ForkingPickler
from typing import Any

from . import _fork_guard, _worker
from ._config import FetchSpec
from ._process_life import forking_workers

__all__ = [
    "Member",
    "ProcessMember",
    "ThreadMember",
    "check_picklable",
    "stop_processes",
    "stop_threads",
]

# A worker's unread tasks stay under this, half of Linux's smallest pipe buffer, so that
# writing a task never blocks while that worker is blocked writing a result to us.
_PIPE_SAFE_BYTES = 32 * 1024
# Grace a thread worker gets to finish its current task at shutdown.
_THREAD_JOIN_S = 2.0
# Grace a process worker gets to finish its task and exit by itself before it is killed.
_STOP_GRACE_S = 0.5


def _first_frame_outside_the_package() -> int:
    """The ``stacklevel`` (for the caller of this function) of the first frame not ours."""
    package = os.path.dirname(os.path.abspath(__file__))
    frame: types.FrameType | None = sys._getframe(1)
    level = 1
    while frame is not None and frame.f_code.co_filename.startswith(package):
        frame, level = frame.f_back, level + 1
    return level


def check_picklable(spec: FetchSpec, start_method: str) -> None:
    """Warns as torch does, then raises a TypeError naming the part that cannot be pickled."""
    for name in ("dataset", "collate_fn", "worker_init_fn"):
        value = getattr(spec, name)
        try:
            pickle.dumps(value)
        except Exception as e:
            # torch's warning, in its words (torch's tests and users' filters match them)
            warnings.warn(
                "Got pickle error when attempting to start a worker Process. This might be "
                "because the worker Process arguments are not picklable. Python 3.14+ changed "
                "the multiprocessing start method in non-Mac POSIX platforms to 'forkserver', "
                "which requires the worker Process arguments to be picklable. You can also try "
                "multiprocessing.set_start_method('fork').",
                UserWarning,
                stacklevel=_first_frame_outside_the_package(),
            )
            raise TypeError(
                f"{name} of type {type(value).__qualname__} cannot be pickled, and the "
                f"{start_method!r} start method sends it to each worker by pickling ({e}); "
                f"use multiprocessing_context='fork', thread_pool=True, or make it picklable "
                f"(define it at module level, not as a lambda or local)"
            ) from e


class Member:
    """One worker, as the main process sees it: its channel and what it still owes."""

    worker_id: int
    handle: Any  # the multiprocessing.Process or threading.Thread
    outstanding: int  # tasks sent whose results have not come back
    streaming: bool  # a StreamStart sent, its STREAM_ENDED not yet back

    def send(self, message: Any) -> None:
        raise NotImplementedError

    def encode(self, task: _worker.Task) -> bytes | None:
        """The task as this worker's channel carries it (None: the object itself)."""
        return None

    def room_for(self, encoded: bytes | None) -> bool:
        """Whether one more task can be written without risking a blocked write."""
        return True

    def send_task(self, task: _worker.Task, encoded: bytes | None) -> None:
        self.outstanding += 1
        self.send(task)

    def answered(self) -> None:
        self.outstanding -= 1

    def stop(self) -> None:
        """Tells the worker to exit once it has nothing to do (it then exits by itself)."""
        self.send(_worker.Command.STOP)

    def join(self) -> None:
        """Waits for a worker told to :meth:`stop` to have exited."""
        raise NotImplementedError

    def resume(self) -> None:
        """Starts the worker again if it parked for a fork (threads only park)."""

    @property
    def parked(self) -> bool:
        """Whether its thread has left to let a fork happen (and will be started again)."""
        return False


class ProcessMember(Member):
    """A worker process, with its task pipe (main writes) and result pipe (main reads)."""

    def __init__(self, ctx: Any, setup: _worker.WorkerSetup, worker_id: int):
        self.worker_id = worker_id
        self.outstanding = 0
        self.streaming = False
        self.unread: deque[int] = deque()  # byte sizes of the tasks it has not answered
        task_reader, self.tasks = ctx.Pipe(duplex=False)
        self.results, result_writer = ctx.Pipe(duplex=False)
        self.handle = ctx.Process(
            target=_worker.serve_process,
            args=(setup, worker_id, task_reader, result_writer),
            name=f"batchloader-worker-{worker_id}",
            daemon=True,
        )
        with forking_workers():
            self.handle.start()
        task_reader.close()  # the worker's ends: only the worker holds them now
        result_writer.close()

    def encode(self, task: _worker.Task) -> bytes:
        # Index lists: the plain (C) pickler, faster than multiprocessing's ForkingPickler.
        return pickle.dumps(task, pickle.HIGHEST_PROTOCOL)

    def room_for(self, encoded: bytes | None) -> bool:
        # An idle worker is reading its pipe, so even a large task gets through.
        size = 0 if encoded is None else len(encoded)
        return self.outstanding == 0 or sum(self.unread) + size <= _PIPE_SAFE_BYTES

    def send(self, message: Any) -> None:
        self._write(ForkingPickler.dumps(message))

    def send_task(self, task: _worker.Task, encoded: bytes | None) -> None:
        data = self.encode(task) if encoded is None else encoded
        self.outstanding += 1
        self.unread.append(len(data))
        self._write(data)

    def _write(self, data: bytes | memoryview) -> None:
        try:
            self.tasks.send_bytes(data)
        except BrokenPipeError:
            # The worker has died: the pool's liveness check says how (pid, signal), at
            # the iterator's next wait; the task stays outstanding, never answered.
            pass

    def answered(self) -> None:
        self.outstanding -= 1
        self.unread.popleft()

    def stop(self) -> None:
        _send_stop(self)

    def join(self) -> None:
        stop_processes([self])


class ThreadMember(Member):
    """A worker thread, with its own task queue; results go to the pool's shared queue."""

    def __init__(self, setup: _worker.WorkerSetup, worker_id: int, results: Any):
        self.worker_id = worker_id
        self.outstanding = 0
        self.streaming = False
        self.tasks: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.parking = _fork_guard.Parking()
        self.state: Any = None  # the worker's state, kept for the thread that resumes it
        self._args = (setup, worker_id, self.tasks, results, self)
        self.handle = self._new_thread()
        self.handle.start()

    def _new_thread(self) -> threading.Thread:
        return threading.Thread(
            target=_worker.serve_thread,
            args=self._args,
            name=f"batchloader-thread-worker-{self.worker_id}",
            daemon=True,
        )

    def send(self, message: Any) -> None:
        self.tasks.put(message)

    def join(self) -> None:
        self.handle.join(_THREAD_JOIN_S)

    @property
    def parked(self) -> bool:
        return self.parking.parked

    def resume(self) -> None:
        """Starts the worker's thread again if it parked for a fork."""
        if self.parking.unpark():
            self.handle.join()  # it has decided to park: it returns at once
            self.handle = self._new_thread()
            self.handle.start()


_STOP = bytes(ForkingPickler.dumps(_worker.Command.STOP))


def _send_stop(member: ProcessMember) -> None:
    """STOP into the worker's task pipe, never blocking: one that stopped reading is killed."""
    if member.tasks.closed:
        return
    os.set_blocking(member.tasks.fileno(), False)
    with contextlib.suppress(OSError):  # BlockingIOError, BrokenPipeError
        member.tasks.send_bytes(_STOP)


def stop_processes(members: list[Any]) -> None:
    """STOP to each idle worker, SIGKILL to one still making a batch nobody will take.

    A worker told to stop exits with status 0, as torch's do (torch's tests
    and users check it); one that is not out within a short grace is killed
    too. SIGKILL, not SIGTERM: a worker holds nothing worth saving (the
    pool's segments are removed by name afterwards), and no handler, ours or
    one a worker inherited from the trainer, can run, delay or refuse it.
    Killing a busy worker at once, rather than waiting for its batch, keeps
    an abandoned epoch's close (and so the next ``iter()``) quick. The Process
    objects stay usable (``pid``, ``exitcode``, ``join``): torch's
    ``_workers`` outlive the pool.
    """
    alive = [m for m in members if m.handle.exitcode is None]
    for member in alive:
        if member.outstanding > 0:
            member.handle.kill()
        else:
            _send_stop(member)
    deadline = time.monotonic() + _STOP_GRACE_S
    while alive and time.monotonic() < deadline:
        multiprocessing.connection.wait(
            [m.handle.sentinel for m in alive], deadline - time.monotonic()
        )
        alive = [m for m in alive if m.handle.exitcode is None]
    for member in alive:
        member.handle.kill()
    for member in members:
        member.handle.join()
        member.tasks.close()
        member.results.close()


def stop_threads(members: list[Any]) -> None:
    for member in members:
        member.send(_worker.Command.STOP)
    deadline = time.monotonic() + _THREAD_JOIN_S
    for member in members:
        member.handle.join(max(0.0, deadline - time.monotonic()))
