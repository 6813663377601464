"""Exceptions users catch, and the one way an exception crosses a process boundary.

A worker turns an exception into a :class:`_RemoteError` (picklable by
construction); the main process calls :meth:`_RemoteError.rebuild` and raises
an exception of the original type and message whose ``__cause__`` carries the
worker's formatted traceback, as ``concurrent.futures`` does.
"""

from __future__ import annotations

import pickle
import signal
import traceback
from dataclasses import dataclass

__all__ = [
    "LoaderTimeoutError",
    "WorkerDiedError",
    "WorkerError",
    "_RemoteError",
    "_RemoteTraceback",
    "exit_description",
    "likely_cause",
]


class WorkerError(RuntimeError):
    """An exception raised in a worker that could not be sent back as itself.

    Raised in its place when the original exception cannot be pickled or
    unpickled; the message keeps the original type name and text.
    """


class WorkerDiedError(RuntimeError):
    """A worker process exited while the loader was waiting on it."""

    def __init__(self, message: str, *, pid: int | None = None, exitcode: int | None = None):
        super().__init__(message)
        self.pid = pid
        self.exitcode = exitcode


class LoaderTimeoutError(RuntimeError):
    """No batch arrived within the loader's ``timeout``.

    A ``RuntimeError`` subclass, as torch raises ``RuntimeError`` on timeout.
    """


class _RemoteTraceback(Exception):
    """Holds a worker's formatted traceback; shown as the ``__cause__``."""

    def __init__(self, tb: str):
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return self.tb


@dataclass(frozen=True, slots=True)
class _RemoteError:
    """An exception captured in a worker, ready to cross a process boundary."""

    type_name: str
    message: str
    traceback: str
    pickled: bytes | None

    @classmethod
    def capture(cls, exc: BaseException) -> _RemoteError:
        """Records ``exc``; keeps it pickled only if it survives a round trip."""
        tb = "".join(traceback.format_exception(exc))
        try:
            pickled = pickle.dumps(exc)
            pickle.loads(pickled)
        except Exception:
            pickled = None
        return cls(type(exc).__qualname__, str(exc), tb, pickled)

    def rebuild(self, context: str) -> BaseException:
        """The original exception (or a :class:`WorkerError`), with context."""
        exc: BaseException | None = None
        if self.pickled is not None:
            try:
                exc = pickle.loads(self.pickled)
            except Exception:
                exc = None
        if exc is None:
            exc = WorkerError(f"{self.type_name}: {self.message}")
        exc.__cause__ = _RemoteTraceback(f'\n"""\n{self.traceback}"""')
        exc.add_note(context)
        return exc


def exit_description(exitcode: int) -> str:
    """torch's words for a worker's end: 'is killed by signal: Killed', 'exited unexpectedly'."""
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            return f"is killed by signal: {-exitcode}"
        return f"is killed by signal: {signal.strsignal(-exitcode)} ({name})"
    return f"exited unexpectedly with exit code {exitcode}"


def likely_cause(exitcode: int) -> str:
    """What most often ends a worker this way, where one cause is likely."""
    if exitcode == -signal.SIGKILL:
        return "A likely cause is the out-of-memory killer (see dmesg). "
    if exitcode in (-signal.SIGSEGV, -signal.SIGBUS, -signal.SIGABRT):
        return "A crash in native code (a C extension or a library that is not fork-safe). "
    if exitcode == 1:
        return (
            "With spawn or forkserver, exit code 1 means the worker printed a traceback on "
            "stderr while starting. "
        )
    return ""
