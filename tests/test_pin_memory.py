"""The pin-memory stage, on CPU: the thread is exercised with fake pin functions."""

from __future__ import annotations

import collections
import gc
import threading
import time
import traceback
import warnings
from collections.abc import Iterator
from typing import Any, NamedTuple

import pytest
import torch

from batchloader import _pin_memory as pm
from batchloader import device as device_module
from batchloader._pin_memory import (
    PinMemoryIter,
    make_pin_fn,
    pin_batch,
    pin_memory_supported,
)
from batchloader.device import DevicePrefetcher, to_device

CLOSE_DEADLINE_S = 1.0
"""close() must return within this even when the source blocks forever."""


# ---------------------------------------------------------------- helpers


def pin_threads() -> list[threading.Thread]:
    """The live threads that the pin-memory stage started."""
    return [t for t in threading.enumerate() if t.name.startswith(pm._THREAD_NAME_PREFIX)]


def assert_no_pin_thread() -> None:
    """The contract: no pin-memory thread outlives its iterator."""
    assert pin_threads() == []


@pytest.fixture(autouse=True)
def no_leaked_threads() -> Iterator[None]:
    """Every test here must leave no pin-memory thread behind."""
    yield
    gc.collect()  # a caught exception's traceback holds the iterator in a cycle
    assert_no_pin_thread()


def tag(batch: Any) -> tuple[str, Any]:
    """A fake pin function: marks the batch as having gone through the thread."""
    return ("pinned", batch)


class CountingSource:
    """Yields 0..n-1 and counts how many items have been pulled."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.pulled = 0

    def __iter__(self) -> CountingSource:
        return self

    def __next__(self) -> int:
        if self.pulled >= self.n:
            raise StopIteration
        self.pulled += 1
        return self.pulled - 1


class FailingSource:
    """Yields ``good`` items, raises ``error`` once, then yields ``after`` more items."""

    def __init__(self, good: int, error: BaseException, after: int = 0) -> None:
        self.items = iter(range(good))
        self.error: BaseException | None = error
        self.rest = iter(range(good, good + after))

    def __iter__(self) -> FailingSource:
        return self

    def __next__(self) -> int:
        for item in self.items:
            return item
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        return next(self.rest)


class BlockingSource:
    """Yields one item, then blocks in ``__next__`` until ``close()`` releases it."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.blocked = threading.Event()
        self.closed = 0
        self.served = 0

    def __iter__(self) -> BlockingSource:
        return self

    def __next__(self) -> int:
        if self.served == 0:
            self.served = 1
            return 0
        self.blocked.set()
        self.released.wait(timeout=30)  # bounded, so a failing test cannot hang the run
        raise StopIteration

    def close(self) -> None:
        self.closed += 1
        self.released.set()


class InfiniteSource:
    """Yields forever and records whether it was closed."""

    def __init__(self) -> None:
        self.closed = 0
        self.pulled = 0

    def __iter__(self) -> InfiniteSource:
        return self

    def __next__(self) -> int:
        self.pulled += 1
        return self.pulled

    def close(self) -> None:
        self.closed += 1


def wait_until(predicate: Any, timeout_s: float = 2.0) -> bool:
    """Poll ``predicate`` until it holds or ``timeout_s`` passes."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.005)
    return predicate()


def fake_tensor_pin(monkeypatch: pytest.MonkeyPatch) -> list[tuple]:
    """Replace ``Tensor.pin_memory`` with a tagging copy; returns the recorded call arguments."""
    calls: list[tuple] = []

    def fake_pin(self: torch.Tensor, *args: Any) -> torch.Tensor:
        calls.append(args)
        out = self.clone()
        out.was_pinned = True
        return out

    monkeypatch.setattr(torch.Tensor, "pin_memory", fake_pin)
    return calls


def is_fake_pinned(t: torch.Tensor) -> bool:
    """Whether ``t`` came out of the fake pin."""
    return getattr(t, "was_pinned", False)


# ---------------------------------------------------------------- the thread


def test_order_is_preserved_across_200_batches() -> None:
    """Batches come out in the source's order, each passed through pin_fn."""
    it = PinMemoryIter(iter(range(200)), tag, queue_depth=3)
    assert list(it) == [("pinned", i) for i in range(200)]


def test_pin_fn_runs_on_a_daemon_pin_thread() -> None:
    """pin_fn runs on one daemon thread named with the stage's prefix, not the caller's."""
    seen: list[threading.Thread] = []

    def record(batch: int) -> int:
        seen.append(threading.current_thread())
        return batch

    assert list(PinMemoryIter(range(5), record, queue_depth=1)) == list(range(5))
    assert len(set(seen)) == 1
    assert seen[0] is not threading.current_thread()
    assert seen[0].daemon
    assert seen[0].name.startswith(pm._THREAD_NAME_PREFIX)


@pytest.mark.parametrize("queue_depth", [1, 3])
def test_source_is_never_more_than_queue_depth_plus_one_ahead(queue_depth: int) -> None:
    """With a slow consumer the source runs ahead by at most queue_depth + 1 and reaches it."""
    source = CountingSource(20)
    it = PinMemoryIter(source, tag, queue_depth=queue_depth)
    for consumed in range(1, 21):
        next(it)
        bound = min(consumed + queue_depth + 1, source.n)
        assert wait_until(
            lambda bound=bound: source.pulled == bound
        )  # it prefetches up to the bound
        time.sleep(0.01)  # and, given time, goes no further
        assert source.pulled == bound
    it.close()


def test_source_error_reaches_consumer_with_type_message_and_traceback() -> None:
    """An exception from the source is raised to the consumer as itself, after earlier batches."""
    it = PinMemoryIter(FailingSource(3, KeyError("bad index 7")), tag, queue_depth=2)
    assert [next(it) for _ in range(3)] == [("pinned", 0), ("pinned", 1), ("pinned", 2)]
    with pytest.raises(KeyError, match="bad index 7") as info:
        next(it)
    frames = [frame.name for frame in traceback.extract_tb(info.value.__traceback__)]
    assert "__next__" in frames and "_run" in frames


def test_pin_fn_error_reaches_consumer_with_type_message_and_note() -> None:
    """An exception from pin_fn is raised to the consumer as itself, with a note naming the batch."""

    def pin_fails_on_two(batch: int) -> int:
        if batch == 2:
            raise ValueError("cannot pin a ragged tensor")
        return batch

    it = PinMemoryIter(range(5), pin_fails_on_two, queue_depth=2)
    assert [next(it), next(it)] == [0, 1]
    with pytest.raises(ValueError, match="cannot pin a ragged tensor") as info:
        next(it)
    assert any("batch 2" in note for note in info.value.__notes__)


def test_stop_iteration_from_pin_fn_is_an_error_not_the_end() -> None:
    """A StopIteration escaping pin_fn becomes a RuntimeError instead of silently ending the epoch."""

    def pin_stops(batch: int) -> int:
        raise StopIteration

    it = PinMemoryIter(range(3), pin_stops, queue_depth=1)
    with pytest.raises(RuntimeError, match="pin function raised StopIteration on batch 0"):
        next(it)


def test_stop_iteration_after_last_batch_and_again_after() -> None:
    """After the last batch next() raises StopIteration, every time, without blocking."""
    it = PinMemoryIter(range(2), tag, queue_depth=1)
    assert [next(it), next(it)] == [("pinned", 0), ("pinned", 1)]
    for _ in range(3):
        with pytest.raises(StopIteration):
            next(it)
    assert "EXHAUSTED" in repr(it)


def test_next_after_an_error_goes_on_with_the_source() -> None:
    """As in torch, an error is one batch's: the next call returns the batch after it."""
    it = PinMemoryIter(FailingSource(1, OSError("disk gone"), after=2), tag, queue_depth=1)
    assert next(it) == ("pinned", 0)
    with pytest.raises(OSError, match="disk gone"):
        next(it)
    assert list(it) == [("pinned", 1), ("pinned", 2)]
    assert "EXHAUSTED" in repr(it)


def test_next_after_close_raises_stop_iteration() -> None:
    """A closed iterator raises StopIteration at once."""
    it = PinMemoryIter(InfiniteSource(), tag, queue_depth=1)
    next(it)
    it.close()
    with pytest.raises(StopIteration):
        next(it)


def test_close_returns_promptly_when_source_blocks_forever() -> None:
    """close() returns within a second while the thread is stuck in next(source), and closes it."""
    source = BlockingSource()
    it = PinMemoryIter(source, tag, queue_depth=2)
    assert next(it) == ("pinned", 0)
    assert source.blocked.wait(timeout=2)
    start = time.monotonic()
    it.close()
    assert time.monotonic() - start < CLOSE_DEADLINE_S
    assert source.closed == 1


def test_close_returns_promptly_when_consumer_stopped_reading() -> None:
    """close() returns within a second while the thread waits on a full queue."""
    source = InfiniteSource()
    it = PinMemoryIter(source, tag, queue_depth=2)
    next(it)
    assert wait_until(lambda: it._queue.full())
    start = time.monotonic()
    it.close()
    assert time.monotonic() - start < CLOSE_DEADLINE_S
    assert source.closed == 1


def test_close_is_idempotent() -> None:
    """A second close() does nothing: the source is closed once."""
    source = InfiniteSource()
    it = PinMemoryIter(source, tag, queue_depth=1)
    it.close()
    it.close()
    assert source.closed == 1
    assert "CLOSED" in repr(it)


def test_exhaustion_leaves_the_source_open() -> None:
    """End of epoch joins the thread but leaves closing the source to close()."""
    source = CountingSource(3)
    source.close = lambda: setattr(source, "closed", True)  # type: ignore[method-assign]
    it = PinMemoryIter(source, tag, queue_depth=1)
    assert len(list(it)) == 3
    assert_no_pin_thread()
    assert not hasattr(source, "closed")
    it.close()
    assert source.closed  # type: ignore[attr-defined]


def test_no_thread_left_after_exhaustion() -> None:
    """Once StopIteration is raised the thread is already joined."""
    it = PinMemoryIter(range(10), tag, queue_depth=2)
    list(it)
    assert_no_pin_thread()


def test_no_thread_left_after_break_and_close() -> None:
    """Breaking out of the loop and closing stops the thread."""
    it = PinMemoryIter(InfiniteSource(), tag, queue_depth=2)
    for batch in it:
        if batch[1] == 5:
            break
    it.close()
    assert_no_pin_thread()


def test_no_thread_left_after_an_error() -> None:
    """An error raised to the consumer leaves no thread behind."""
    it = PinMemoryIter(FailingSource(2, RuntimeError("worker 1 died")), tag, queue_depth=2)
    with pytest.raises(RuntimeError, match="worker 1 died"):
        list(it)
    assert_no_pin_thread()


def test_no_thread_left_after_del_and_gc() -> None:
    """Dropping an unfinished iterator stops its thread and closes its source."""
    source = InfiniteSource()
    it = PinMemoryIter(source, tag, queue_depth=2)
    next(it)
    del it
    gc.collect()
    assert_no_pin_thread()
    assert source.closed == 1


def test_finalizer_on_the_pin_thread_closes_the_source_from_another_thread() -> None:
    """When GC finalizes the iterator on its own pin thread, the source is closed from elsewhere."""
    closed_on: list[threading.Thread] = []
    source = InfiniteSource()
    source.close = lambda: closed_on.append(threading.current_thread())  # type: ignore[method-assign]
    holder: list[PinMemoryIter] = []
    constructed = threading.Event()

    def pin_and_finalize(batch: int) -> int:
        assert constructed.wait(timeout=2)
        holder[0]._finalizer()  # what a GC pass on this thread would run
        return batch

    holder.append(PinMemoryIter(source, pin_and_finalize, queue_depth=1))
    constructed.set()
    assert wait_until(lambda: len(closed_on) == 1 and not pin_threads())
    assert closed_on[0].name.endswith("-shutdown")


def test_queue_depth_must_be_a_positive_int() -> None:
    """A queue_depth below 1 is rejected, naming the argument and the value."""
    with pytest.raises(ValueError, match=r"queue_depth must be an int >= 1, got 0"):
        PinMemoryIter(range(3), tag, queue_depth=0)


def test_pin_fn_must_be_callable() -> None:
    """A pin_fn that is not callable is rejected with its type."""
    with pytest.raises(TypeError, match="pin_fn must be callable, got str"):
        PinMemoryIter(range(3), "pin", queue_depth=1)  # type: ignore[arg-type]


def test_repr_shows_state_depth_and_thread() -> None:
    """repr names the state, the queue depth and the thread."""
    it = PinMemoryIter(range(1), tag, queue_depth=4)
    text = repr(it)
    it.close()
    assert text.startswith(
        "PinMemoryIter(state=RUNNING, queue_depth=4, thread='batchloader-pin-memory-"
    )


# ---------------------------------------------------------------- pin_batch


class Pair(NamedTuple):
    """A namedtuple batch."""

    x: Any
    y: Any


class CustomBatch:
    """A custom batch type with its own pin_memory(), as torch supports."""

    def __init__(self) -> None:
        self.pinned = False

    def pin_memory(self) -> CustomBatch:
        self.pinned = True
        return self


def test_pin_batch_walks_nested_structures_keeping_types(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every CPU tensor in dicts, lists, tuples and namedtuples is pinned; container types survive."""
    fake_tensor_pin(monkeypatch)
    counts = collections.defaultdict(int, {"n": torch.ones(1)})
    batch = {
        "pair": Pair(torch.zeros(2), [torch.ones(3), (torch.ones(1),)]),
        "ordered": collections.OrderedDict(a=torch.ones(2)),
        "queue": collections.deque([torch.ones(1)]),
        "counts": counts,
        "name": "sample-1",
        "id": 7,
    }
    out = pin_batch(batch)
    assert type(out["pair"]) is Pair
    assert is_fake_pinned(out["pair"].x) and is_fake_pinned(out["pair"].y[0])
    assert isinstance(out["pair"].y[1], tuple) and is_fake_pinned(out["pair"].y[1][0])
    assert type(out["ordered"]) is collections.OrderedDict and is_fake_pinned(out["ordered"]["a"])
    assert type(out["queue"]) is collections.deque and is_fake_pinned(out["queue"][0])
    assert type(out["counts"]) is collections.defaultdict
    assert out["counts"].default_factory is int and is_fake_pinned(out["counts"]["n"])
    assert out["name"] == "sample-1" and out["id"] == 7
    assert not is_fake_pinned(batch["pair"].x)  # the input is not modified


def test_pin_batch_calls_a_custom_types_pin_memory() -> None:
    """An object with pin_memory() is replaced by what that method returns."""
    custom = CustomBatch()
    out = pin_batch([custom, "label"])
    assert out == [custom, "label"] and custom.pinned


def test_pin_batch_passes_non_cpu_tensors_through(monkeypatch: pytest.MonkeyPatch) -> None:
    """A tensor already on a device (here 'meta') is returned as it is, not pinned."""
    calls = fake_tensor_pin(monkeypatch)
    on_device = torch.empty(4, device="meta")
    assert pin_batch((on_device,))[0] is on_device
    assert calls == []


@pytest.mark.skipif(pm._PIN_TAKES_DEVICE, reason="torch < 2.5 takes the device argument")
def test_pin_batch_does_not_pass_the_deprecated_device(monkeypatch: pytest.MonkeyPatch) -> None:
    """On torch >= 2.5 the device is not passed to Tensor.pin_memory, so nothing warns."""
    calls = fake_tensor_pin(monkeypatch)
    pin_batch([torch.ones(1)], device="cuda")
    assert calls == [()]


def test_pin_batch_leaves_tensorless_structures_equal() -> None:
    """A batch without tensors comes back equal, including ranges turned into lists."""
    batch = {"a": [1, ("x", b"y")], "r": range(3)}
    assert pin_batch(batch) == {"a": [1, ("x", b"y")], "r": [0, 1, 2]}


# ---------------------------------------------------------------- accelerator detection


@pytest.fixture
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """Reset the once-per-process warning flags."""
    monkeypatch.setattr(pm, "_warned", set())


def fake_accelerator(monkeypatch: pytest.MonkeyPatch, kind: str | None) -> None:
    """Pretend the current accelerator is ``kind`` (None: there is none)."""
    monkeypatch.setattr(pm, "_current_accelerator", lambda: kind)
    monkeypatch.setattr(pm, "_current_device_index", lambda: 0)


@pytest.mark.skipif(
    pm._current_accelerator() is not None, reason="needs a machine without accelerator"
)
def test_pin_memory_is_unsupported_without_an_accelerator() -> None:
    """On a CPU-only machine pin_memory_supported() is False."""
    assert pin_memory_supported() is False
    assert pin_memory_supported("cuda") is False


def test_pin_memory_supported_matches_the_accelerator_type(monkeypatch: pytest.MonkeyPatch) -> None:
    """With a CUDA accelerator, 'cuda:1' is supported and 'xpu' is not; MPS never is."""
    fake_accelerator(monkeypatch, "cuda")
    assert pin_memory_supported() and pin_memory_supported("cuda:1")
    assert not pin_memory_supported("xpu")
    fake_accelerator(monkeypatch, "mps")
    assert not pin_memory_supported()


def test_make_pin_fn_warns_once_and_returns_none_without_accelerator(
    monkeypatch: pytest.MonkeyPatch, fresh_warnings: None
) -> None:
    """Without an accelerator the first call warns like torch, later calls are silent; all return None."""
    fake_accelerator(monkeypatch, None)
    with pytest.warns(UserWarning, match="no accelerator is found") as record:
        assert make_pin_fn("") is None
    assert len(record) == 1
    assert record[0].filename == __file__  # stacklevel points at the caller
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert make_pin_fn("") is None
        assert make_pin_fn("cuda") is None


def test_make_pin_fn_warns_and_returns_none_on_mps(
    monkeypatch: pytest.MonkeyPatch, fresh_warnings: None
) -> None:
    """On MPS, where torch cannot pin, it warns and returns None."""
    fake_accelerator(monkeypatch, "mps")
    with pytest.warns(UserWarning, match="not supported on MPS"):
        assert make_pin_fn("") is None


def test_make_pin_fn_returns_a_pinner_with_an_accelerator(
    monkeypatch: pytest.MonkeyPatch, fresh_warnings: None
) -> None:
    """With an accelerator it returns a callable that sets the device and pins."""
    fake_accelerator(monkeypatch, "cuda")
    device_set: list[int] = []
    monkeypatch.setattr(pm, "_set_device_index", device_set.append)
    fake_tensor_pin(monkeypatch)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pin_fn = make_pin_fn("")
    assert pin_fn is not None and is_fake_pinned(pin_fn([torch.ones(1)])[0])
    assert device_set == [0]


@pytest.mark.skipif(pm._PIN_TAKES_DEVICE, reason="torch < 2.5 honours pin_memory_device")
def test_make_pin_fn_warns_that_pin_memory_device_is_ignored(
    monkeypatch: pytest.MonkeyPatch, fresh_warnings: None
) -> None:
    """A pin_memory_device on torch >= 2.5 is ignored with a warning naming it."""
    fake_accelerator(monkeypatch, "cuda")
    with pytest.warns(UserWarning, match="pin_memory_device='cuda:1' is ignored"):
        assert make_pin_fn("cuda:1") is not None


def test_nothing_to_pin_without_an_accelerator(
    monkeypatch: pytest.MonkeyPatch, fresh_warnings: None
) -> None:
    """Without an accelerator there is no pin function, so the loader starts no pin thread."""
    fake_accelerator(monkeypatch, None)
    with pytest.warns(UserWarning, match="no accelerator"):
        assert make_pin_fn("") is None
    assert_no_pin_thread()


def test_pin_stage_pins_every_batch_with_an_accelerator(
    monkeypatch: pytest.MonkeyPatch, fresh_warnings: None
) -> None:
    """With an accelerator, the pin function and the stage pin every batch."""
    fake_accelerator(monkeypatch, "cuda")
    monkeypatch.setattr(pm, "_set_device_index", [].append)
    fake_tensor_pin(monkeypatch)
    pin_fn = make_pin_fn("")
    assert pin_fn is not None
    stage = PinMemoryIter([{"x": torch.ones(1)}] * 3, pin_fn, queue_depth=2)
    assert all(is_fake_pinned(batch["x"]) for batch in stage)


# ---------------------------------------------------------------- moving to a device


class Movable:
    """A custom batch type with its own to()."""

    def __init__(self) -> None:
        self.moved_to: tuple | None = None

    def to(self, device: Any, non_blocking: bool = False) -> Movable:
        self.moved_to = (device, non_blocking)
        return self


def test_to_device_moves_nested_tensors_and_custom_types() -> None:
    """Tensors in nested containers land on the device; .to() objects are moved; strings pass."""
    movable = Movable()
    batch = {"x": [torch.ones(2, dtype=torch.float64)], "m": movable, "s": "id-3"}
    out = to_device(batch, "meta", non_blocking=True)
    assert out["x"][0].device.type == "meta"
    assert movable.moved_to == ("meta", True)
    assert out["s"] == "id-3"


def test_device_prefetcher_on_cpu_keeps_order_nesting_and_leaves() -> None:
    """On 'cpu' every batch comes out in order, same structure, tensors unchanged."""
    batches = [Pair(torch.full((2,), i), {"name": f"b{i}", "ids": [i]}) for i in range(6)]
    out = list(DevicePrefetcher(batches, "cpu"))
    assert len(out) == 6
    for i, batch in enumerate(out):
        assert type(batch) is Pair and batch.x is batches[i].x
        assert batch.y == {"name": f"b{i}", "ids": [i]}


def test_device_prefetcher_moves_to_a_non_cpu_device() -> None:
    """On another device ('meta' stands in on CPU) every tensor is moved."""
    out = list(DevicePrefetcher([[torch.ones(1)], [torch.zeros(1)]], "meta"))
    assert [batch[0].device.type for batch in out] == ["meta", "meta"]


def test_device_prefetcher_closes_an_abandoned_source() -> None:
    """Breaking out of the loop closes the source iterator."""
    source = InfiniteSource()
    loop = iter(DevicePrefetcher(source, "cpu"))
    next(loop)
    loop.close()
    assert source.closed == 1


def test_device_prefetcher_len_and_repr() -> None:
    """len() is the iterable's; repr names the device and non_blocking (off on cpu)."""
    prefetcher = DevicePrefetcher([1, 2, 3], "cpu")
    assert len(prefetcher) == 3
    assert repr(prefetcher) == "DevicePrefetcher([1, 2, 3], device='cpu', non_blocking=False)"


def test_device_prefetcher_rejects_a_bad_device() -> None:
    """An unparseable device is a ValueError naming the argument."""
    with pytest.raises(ValueError, match="device='gpu0' is not a torch device"):
        DevicePrefetcher([], "gpu0")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_device_prefetcher_rejects_cuda_without_cuda() -> None:
    """Asking for CUDA where there is none fails at construction, not mid-epoch."""
    with pytest.raises(ValueError, match="CUDA is not available"):
        DevicePrefetcher([], "cuda")


def test_keep_one_ahead_hands_over_before_starting_the_next_copy() -> None:
    """The CUDA schedule: batch k is handed over, then k+1's copy starts, then k is yielded."""
    events: list[str] = []

    def start(batch: int) -> int:
        events.append(f"start{batch}")
        return batch

    def hand_over(batch: int) -> int:
        events.append(f"hand{batch}")
        return batch

    for batch in device_module._keep_one_ahead(iter(range(3)), start, hand_over):
        events.append(f"use{batch}")
    assert events == [
        "start0",
        *("hand0", "start1", "use0"),
        *("hand1", "start2", "use1"),
        *("hand2", "use2"),
    ]


def test_the_stage_passes_a_pool_adoption_on_to_its_source() -> None:
    """A temporary persistent loader's epoch keeps its workers through the pin stage too."""

    class Adopting(InfiniteSource):
        def adopt_pool(self) -> bool:
            return True

    it = PinMemoryIter(Adopting(), tag, queue_depth=1)
    assert it.adopt_pool() is True
    it.close()
    plain = PinMemoryIter(InfiniteSource(), tag, queue_depth=1)
    assert plain.adopt_pool() is False
    plain.close()
