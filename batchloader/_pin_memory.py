"""The pin-memory stage: page-locks batches in a background thread, and moves them to a device.

The stage sits in the main process between the loader's batch iterator and the
user. It wraps *any* iterator of batches, so it composes with the
single-process iterator, the multi-worker iterator and user iterators alike::

    source ──► [pin-memory thread: next(source), pin_fn(batch)] ──► bounded queue ──► user

Pinned (page-locked) host memory lets ``tensor.to("cuda", non_blocking=True)``
copy asynchronously through DMA. Without an accelerator there is nothing to pin
for: :func:`make_pin_fn` warns once per process and returns ``None``, and the
loader passes batches through unchanged.

:class:`batchloader.device.DevicePrefetcher` is the step after pinning: it copies
the next batch to the device on a side CUDA stream while the current one is in use.
"""

from __future__ import annotations

import enum
import itertools
import logging
import queue
import threading
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch

from . import _fork_guard
from ._nested import has_method, map_batch

__all__ = [
    "PinMemoryIter",
    "make_pin_fn",
    "pin_batch",
    "pin_memory_supported",
]

logger = logging.getLogger(__name__)

_POLL_INTERVAL_S = 0.1
"""How long one queue get/put waits before re-checking the stop flag: bounds how late close() is noticed."""

_JOIN_TIMEOUT_S = 0.25
"""How long close() waits for the thread before closing the source; an idle thread exits within one poll."""

_JOIN_AFTER_SOURCE_CLOSE_S = 2.0
"""How long close() waits again once source.close() has had the chance to unblock a stuck next()."""

_DEFAULT_QUEUE_DEPTH = 2
"""Pinned batches buffered ahead of the user: page-locked memory is scarce, and two hide one copy."""

_THREAD_NAME_PREFIX = "batchloader-pin-memory"
"""Every pin-memory thread's name starts with this, so tests and users can find strays."""

_DEVICE_AGNOSTIC_PIN_TORCH = (2, 5)
"""From this torch on, Tensor.pin_memory() pins for the current accelerator and warns if given a device."""

_thread_ids = itertools.count()

_warned: set[str] = set()
"""Keys of the once-per-process warnings already emitted (tests reset it)."""


_PIN_TAKES_DEVICE = (
    tuple(int(part) for part in torch.__version__.split(".")[:2]) < _DEVICE_AGNOSTIC_PIN_TORCH
)


# ---------------------------------------------------------------- pinning


def pin_batch(batch: Any, device: str | None = None) -> Any:
    """Return ``batch`` with every CPU tensor copied into pinned (page-locked) memory.

    Walks tuples, namedtuples, lists, dicts and other mappings, keeping their
    types. An object with a ``pin_memory()`` method (a custom batch type, as
    torch's DataLoader supports) is replaced by what that method returns.
    Tensors already on a device, strings and other leaves pass through.

    Args:
        batch: a tensor or a nested structure of them.
        device: passed to ``Tensor.pin_memory`` only on torch < 2.5; newer torch
            pins for the current accelerator and deprecates the argument.

    Note:
        Needs an accelerator: on a CPU-only build ``Tensor.pin_memory()``
        raises. Use :func:`make_pin_fn` to get a pin function only where one exists.
    """

    def pin_one(item: Any) -> Any:
        if not isinstance(item, torch.Tensor):
            return item.pin_memory()
        if item.device.type != "cpu":
            return item
        if _PIN_TAKES_DEVICE and device:
            return item.pin_memory(device)
        return item.pin_memory()

    return map_batch(batch, pin_one, lambda item: has_method(item, "pin_memory"))


def _current_accelerator() -> str | None:
    """The current accelerator's device type (``'cuda'``, ``'xpu'``, ...), or None."""
    accelerator = getattr(torch, "accelerator", None)
    if accelerator is not None and hasattr(accelerator, "is_available"):
        if not accelerator.is_available():
            return None
        current = accelerator.current_accelerator()
        return None if current is None else current.type
    return "cuda" if torch.cuda.is_available() else None


def _current_device_index() -> int:
    get_index = getattr(getattr(torch, "accelerator", None), "current_device_index", None)
    return get_index() if get_index is not None else torch.cuda.current_device()


def _set_device_index(index: int) -> None:
    set_index = getattr(getattr(torch, "accelerator", None), "set_device_index", None)
    (set_index or torch.cuda.set_device)(index)


def pin_memory_supported(device: str = "") -> bool:
    """Whether batches can be pinned here, optionally for ``device`` (e.g. ``'cuda'``).

    False without an accelerator, and on MPS, where torch does not support pinning.
    """
    accelerator = _current_accelerator()
    if accelerator is None or accelerator == "mps":
        return False
    return not device or torch.device(device).type == accelerator


def _warn_once(key: str, message: str, stacklevel: int) -> None:
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, UserWarning, stacklevel=stacklevel + 1)


@dataclass(frozen=True, slots=True)
class _Pinner:
    """The pin function :func:`make_pin_fn` returns: pins for one device from any thread."""

    device: str | None
    device_index: int

    def __call__(self, batch: Any) -> Any:
        # The current device is per thread; pinned memory belongs to the device
        # that was current where the loader's iterator was created.
        _set_device_index(self.device_index)
        return pin_batch(batch, self.device)


def make_pin_fn(pin_memory_device: str = "", *, stacklevel: int = 2) -> Callable[[Any], Any] | None:
    """The function the pin-memory thread applies to each batch, or None when nothing can be pinned.

    Without an accelerator (or on MPS) this warns once per process, as torch's
    DataLoader does, and returns None: the loader then passes batches through.

    Args:
        pin_memory_device: torch's ``pin_memory_device``. On torch >= 2.5 memory
            is pinned for the current accelerator and a non-empty value is
            ignored with a once-per-process warning, as torch does.
        stacklevel: where the warnings point, counted from the caller of this function.
    """
    accelerator = _current_accelerator()
    if accelerator is None:
        _warn_once(
            "no-accelerator",
            "pin_memory=True but no accelerator is found (CUDA, XPU, ...), so device pinned "
            "memory won't be used and batches are passed through unchanged; set "
            "pin_memory=False to silence this warning.",
            stacklevel,
        )
        return None
    if accelerator == "mps":
        _warn_once(
            "mps",
            "pin_memory=True is not supported on MPS, so device pinned memory won't be used "
            "and batches are passed through unchanged; set pin_memory=False.",
            stacklevel,
        )
        return None
    if pin_memory_device and not _PIN_TAKES_DEVICE:
        _warn_once(
            "device-ignored",
            f"pin_memory_device={pin_memory_device!r} is ignored: torch>={_DEVICE_AGNOSTIC_PIN_TORCH[0]}."
            f"{_DEVICE_AGNOSTIC_PIN_TORCH[1]} pins memory for the current accelerator "
            f"({accelerator!r}); leave pin_memory_device empty.",
            stacklevel,
        )
    return _Pinner(device=pin_memory_device or None, device_index=_current_device_index())


# ---------------------------------------------------------------- the pin-memory thread


class _MsgKind(enum.Enum):
    """What a message from the pin-memory thread carries."""

    BATCH = enum.auto()  # value: the pinned batch
    ERROR = enum.auto()  # value: the exception raised by the source or the pin function
    END = enum.auto()  # the source raised StopIteration; value unused


@dataclass(frozen=True, slots=True)
class _Msg:
    """One message from the pin-memory thread to the consumer; the thread's last is END."""

    kind: _MsgKind
    value: Any = None


class _State(enum.Enum):
    """The consumer side's state; see :class:`PinMemoryIter`."""

    RUNNING = enum.auto()
    EXHAUSTED = enum.auto()
    CLOSED = enum.auto()


def _pin_fn_error(error: BaseException, index: int) -> BaseException:
    """Name the batch on an error from pin_fn; a StopIteration must not end the epoch silently."""
    if isinstance(error, StopIteration):  # as PEP 479 does for generators
        wrapped = RuntimeError(f"the pin function raised StopIteration on batch {index}")
        wrapped.__cause__ = error
        return wrapped
    error.add_note(f"(raised by the pin function on batch {index}, in the pin-memory thread)")
    return error


class _Runner:
    """The pin-memory thread and what it needs; it parks while the loader forks.

    The thread holds no reference to the :class:`PinMemoryIter`, so that
    object can be garbage collected (and its finalizer stop this thread)
    while it runs. Parking (see ``_fork_guard``): at a safe point the thread
    keeps the message it holds (``carry``) and the batch number it is at,
    and exits; :meth:`resume` starts a new thread that goes on from there.
    """

    def __init__(
        self, source: Iterator[Any], pin_fn: Callable[[Any], Any], out: queue.Queue[_Msg]
    ) -> None:
        self.source, self.pin_fn, self.out = source, pin_fn, out
        self.stop = threading.Event()
        self.name = f"{_THREAD_NAME_PREFIX}-{next(_thread_ids)}"
        self.carry: _Msg | None = None  # a message made but not yet queued when it parked
        self.index = 0  # the number of the next batch it takes from the source
        self.parking = _fork_guard.Parking()
        self.thread = self._new_thread()

    def _new_thread(self) -> threading.Thread:
        return threading.Thread(target=self._run, name=self.name, daemon=True)

    def _put(self, msg: _Msg) -> bool:
        """Queue ``msg``, polling for a stop or a park; False if either came first."""
        while not self.stop.is_set():
            if self.parking.now():
                self.carry = msg
                return False
            try:
                self.out.put(msg, timeout=_POLL_INTERVAL_S)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        """The thread's body: next(source), pin, put, until END, stop or park."""
        _fork_guard.mark_parkable()
        carry, self.carry = self.carry, None
        if carry is not None and not self._put(carry):
            return
        while not self.stop.is_set() and not self.parking.now():
            try:
                batch = next(self.source)
            except _fork_guard.ParkRequested:
                continue  # the source came back from its wait: park at the loop's test
            except StopIteration:
                self._put(_Msg(_MsgKind.END))
                return
            except BaseException as error:  # everything reaches the consumer, as in one thread
                # As in torch, the error is that batch's and the source may go on; one
                # that has ended says so at the next call (StopIteration: END).
                self.index += 1
                if not self._put(_Msg(_MsgKind.ERROR, error)):
                    return
                continue
            try:
                msg = _Msg(_MsgKind.BATCH, self.pin_fn(batch))
            except BaseException as error:
                msg = _Msg(_MsgKind.ERROR, _pin_fn_error(error, self.index))
            del batch
            self.index += 1
            if not self._put(msg):
                return

    def park(self, timeout_s: float) -> None:
        """Waits until the thread has parked (or ended), at most ``timeout_s``."""
        if self.thread is not threading.current_thread():
            _fork_guard.join_thread(self.thread, timeout_s)

    def resume(self) -> None:
        """Starts the thread again where it parked; nothing if it did not park."""
        if not self.parking.unpark() or self.stop.is_set():
            return
        self.thread.join()  # it has decided to park: it returns at once
        self.thread = self._new_thread()
        self.thread.start()


def _drain(out: queue.Queue[_Msg]) -> None:
    """Drop every queued message, releasing the pinned batches they hold."""
    while True:
        try:
            out.get_nowait()
        except queue.Empty:
            return


def _stop_thread(runner: _Runner) -> bool:
    """Set the stop flag, drain, join with a timeout; True if the thread is gone."""
    runner.stop.set()
    _drain(runner.out)  # unblocks a put() waiting on a full queue
    runner.thread.join(_JOIN_TIMEOUT_S)
    _drain(runner.out)
    runner.carry = None
    return not runner.thread.is_alive()


def _shutdown(runner: _Runner) -> None:
    """The ordered shutdown: stop our thread, then close the source (its worker pool)."""
    thread = runner.thread
    if thread is threading.current_thread():
        # The garbage collector ran the finalizer on the pin thread, perhaps in the
        # middle of source code holding a lock that source.close() takes: finish
        # from a fresh thread instead, which ends once this one has.
        runner.stop.set()
        threading.Thread(
            target=_shutdown, args=(runner,), name=f"{thread.name}-shutdown", daemon=True
        ).start()
        return
    stopped = _stop_thread(runner)
    if not stopped:
        logger.debug(
            "%s is still inside the source after %.1fs; closing the source",
            thread.name,
            _JOIN_TIMEOUT_S,
        )
    close_source = getattr(runner.source, "close", None)
    try:
        if callable(close_source):
            close_source()
    finally:
        if not stopped:
            thread.join(_JOIN_AFTER_SOURCE_CLOSE_S)
            if thread.is_alive():
                logger.warning(
                    "%s did not exit %.1fs after source.close(): the source's __next__ ignores close(); "
                    "the daemon thread is abandoned",
                    thread.name,
                    _JOIN_TIMEOUT_S + _JOIN_AFTER_SOURCE_CLOSE_S,
                )


class PinMemoryIter(Iterator[Any]):
    """Pins batches from ``source`` in one daemon thread, keeping order and a prefetch bound.

    The thread pulls ``next(source)``, applies ``pin_fn`` and puts the result in
    a ``queue.Queue(maxsize=queue_depth)``, so it is never more than
    ``queue_depth + 1`` batches ahead of the user (the queue plus the one in
    its hands). Errors raised by ``source`` or ``pin_fn`` are re-raised in the
    user's thread as the same object (same type, message and traceback).
    Every get and put is a ``_POLL_INTERVAL_S`` poll that checks a stop flag.

    States (``__next__`` outside RUNNING raises StopIteration at once)::

        RUNNING ──END──► EXHAUSTED ──┐      EXHAUSTED: our thread is joined;
           │  (ERROR: raised, RUNNING) │      the source is left open
           └──close()/GC─────────────┴─► CLOSED: thread joined, source.close()

    ``close()`` is idempotent and also runs when the iterator is garbage
    collected (``weakref.finalize``): set the stop flag, drain the queue, join
    the thread (``_JOIN_TIMEOUT_S``), then call ``source.close()`` if it has
    one, which is what stops a blocked ``next(source)`` and the worker pool.
    As in torch, an error is raised for its batch and the iteration goes on;
    the source says when it has ended.

    Args:
        source: any iterator (or iterable) of batches.
        pin_fn: applied to each batch in the thread, e.g. from :func:`make_pin_fn`.
        queue_depth: the queue's size, at least 1.
    """

    def __init__(
        self, source: Iterable[Any], pin_fn: Callable[[Any], Any], *, queue_depth: int
    ) -> None:
        if not callable(pin_fn):
            raise TypeError(f"pin_fn must be callable, got {type(pin_fn).__name__}: {pin_fn!r}")
        if isinstance(queue_depth, bool) or not isinstance(queue_depth, int) or queue_depth < 1:
            raise ValueError(f"queue_depth must be an int >= 1, got {queue_depth!r}")
        self._source = iter(source)
        self._queue_depth = queue_depth
        self._queue: queue.Queue[_Msg] = queue.Queue(maxsize=queue_depth)
        self._state = _State.RUNNING
        self._runner = _Runner(self._source, pin_fn, self._queue)
        self._finalizer = weakref.finalize(self, _shutdown, self._runner)
        _fork_guard.register(self._runner)
        self._runner.thread.start()

    def __iter__(self) -> PinMemoryIter:
        return self

    def __next__(self) -> Any:
        if self._state is not _State.RUNNING:
            raise StopIteration
        msg = self._get()
        match msg.kind:
            case _MsgKind.BATCH:
                return msg.value
            case _MsgKind.END:
                self._finish(_State.EXHAUSTED)
                raise StopIteration
            case _MsgKind.ERROR:
                error = msg.value
                del msg
                raise error  # that batch's error; the next call goes on, as in torch
            case _:
                raise RuntimeError(f"[INTERNAL ERROR] batchloader: unknown message {msg!r}")

    def _get(self) -> _Msg:
        """Wait for the thread's next message, polling the stop flag and the thread's life."""
        runner = self._runner
        while True:
            try:
                return self._queue.get(timeout=_POLL_INTERVAL_S)
            except queue.Empty:
                pass
            if runner.stop.is_set():  # closed from another thread while we waited
                raise StopIteration
            if not runner.thread.is_alive() and not runner.parking.parked:
                try:
                    return self._queue.get_nowait()  # it may have put its last message and exited
                except queue.Empty:
                    raise RuntimeError(
                        f"[INTERNAL ERROR] batchloader: {runner.name} exited without sending "
                        "END or ERROR; please report this bug"
                    ) from None

    def _finish(self, state: _State) -> None:
        """RUNNING -> EXHAUSTED: the thread has sent its last message; join it."""
        self._state = state
        _stop_thread(self._runner)

    def close(self) -> None:
        """Stop the thread and close the source; safe to call more than once."""
        self._state = _State.CLOSED
        self._finalizer()

    def adopt_pool(self) -> bool:
        """Passes a persistent pool whose loader is gone on to the source (see the loader)."""
        adopt = getattr(self._source, "adopt_pool", None)
        return bool(adopt()) if adopt is not None else False

    @property
    def _workers(self) -> list[Any]:
        """torch's attribute: the source's worker processes, if it has any."""
        return list(getattr(self._source, "_workers", []))

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(state={self._state.name}, queue_depth={self._queue_depth}, "
            f"thread={self._runner.name!r})"
        )
