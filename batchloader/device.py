"""Moving batches to a device: ``to_device`` and the one-batch-ahead ``DevicePrefetcher``.

The step after the pin-memory stage: with pinned batches, a CUDA copy started
on a side stream overlaps the model's work on the previous batch.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from collections.abc import Sequence as SequenceABC
from typing import Any

import torch

from ._nested import has_method, map_batch

__all__ = ["DevicePrefetcher", "to_device"]


def to_device(batch: Any, device: str | torch.device, non_blocking: bool = False) -> Any:
    """Return ``batch`` with every tensor moved by ``tensor.to(device, non_blocking=...)``.

    Walks the same structures as :func:`pin_batch`. A non-container object with
    a ``to`` method (a custom batch type) is replaced by
    ``obj.to(device, non_blocking=non_blocking)``; other leaves pass through.

    Note:
        ``non_blocking=True`` only overlaps host-to-device copies from pinned
        memory; a device-to-host copy with it must be synchronized before use.
    """

    def is_leaf(item: Any) -> bool:
        if isinstance(item, torch.Tensor):
            return True
        if isinstance(item, (str, bytes, bytearray, Mapping, SequenceABC)):
            return False
        return has_method(item, "to")

    return map_batch(batch, lambda item: item.to(device, non_blocking=non_blocking), is_leaf)


def _keep_one_ahead(
    batches: Iterator[Any], start: Callable[[Any], Any], hand_over: Callable[[Any], Any]
) -> Iterator[Any]:
    """Yield ``hand_over(start(b))`` for each batch, starting the next one's copy first.

    ``hand_over`` of batch k runs before ``start`` of batch k+1, so the
    consumer waits for batch k's copy only, while k+1's copy overlaps its use.
    """
    ahead = [start(batch) for batch in itertools.islice(batches, 1)]
    while ahead:
        current = hand_over(ahead.pop())
        ahead = [start(batch) for batch in itertools.islice(batches, 1)]
        yield current


class _CudaHandOff:
    """Copies on a side stream; hands a batch over by making the consumer's stream wait for it."""

    def __init__(self, device: torch.device, non_blocking: bool) -> None:
        self._device = device
        self._non_blocking = non_blocking
        self._stream = torch.cuda.Stream(device=device)

    def start(self, batch: Any) -> Any:
        with torch.cuda.stream(self._stream):
            return to_device(batch, self._device, non_blocking=self._non_blocking)

    def hand_over(self, batch: Any) -> Any:
        consumer = torch.cuda.current_stream(self._device)
        consumer.wait_stream(self._stream)

        def record(tensor: torch.Tensor) -> torch.Tensor:
            # Memory allocated on the side stream must not be reused until the
            # consumer's stream is done with it.
            if tensor.device.type == "cuda":
                tensor.record_stream(consumer)
            return tensor

        return map_batch(batch, record, lambda item: isinstance(item, torch.Tensor))


class DevicePrefetcher:
    """Moves each batch of ``iterable`` to ``device``; on CUDA, one batch ahead on a side stream.

    On CUDA the next batch's host-to-device copy runs on a side
    ``torch.cuda.Stream`` while the current batch is in use; before a batch is
    handed over the consumer's current stream waits for its copy
    (``wait_stream``) and its tensors are marked used there (``record_stream``).
    On other devices batches are moved as they come, and on ``'cpu'`` CPU
    tensors pass through untouched.

    Example::

        loader = batchloader.DataLoader(ds, batch_size=64, num_workers=4, pin_memory=True)
        for images, labels in DevicePrefetcher(loader, "cuda"):
            loss = loss_fn(model(images), labels)  # the next batch is already copying

    Args:
        iterable: a loader or any iterable of batches (nested as :func:`pin_batch` walks).
        device: the target device, e.g. ``'cuda'``, ``'cuda:1'`` or ``'cpu'``.
        non_blocking: copy asynchronously; overlaps only from pinned memory, so
            use it with ``pin_memory=True``. Ignored for ``device='cpu'``.

    Note:
        Iterating an abandoned prefetcher closes the source iterator (when it has
        ``close()``) once the ``for`` loop's generator is closed or collected.
    """

    def __init__(
        self, iterable: Iterable[Any], device: str | torch.device, *, non_blocking: bool = True
    ) -> None:
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError) as error:
            raise ValueError(
                f"DevicePrefetcher: device={device!r} is not a torch device; use e.g. 'cpu', 'cuda' or 'cuda:1'"
            ) from error
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(
                f"DevicePrefetcher: device={device!r} but CUDA is not available here; use device='cpu'"
            )
        self.iterable = iterable
        self.non_blocking = bool(non_blocking) and self.device.type != "cpu"

    def __iter__(self) -> Iterator[Any]:
        source = iter(self.iterable)
        exhausted = False
        try:
            if self.device.type == "cuda":
                hand_off = _CudaHandOff(self.device, self.non_blocking)
                yield from _keep_one_ahead(source, hand_off.start, hand_off.hand_over)
            else:
                for batch in source:
                    yield to_device(batch, self.device, non_blocking=self.non_blocking)
            exhausted = True
        finally:
            close = getattr(source, "close", None)
            if not exhausted and callable(close):
                close()

    def __len__(self) -> int:
        try:
            return len(self.iterable)  # type: ignore[arg-type]
        except TypeError:
            raise TypeError(
                f"DevicePrefetcher has no len(): its iterable ({type(self.iterable).__name__}) has none"
            ) from None

    def __repr__(self) -> str:
        return f"DevicePrefetcher({self.iterable!r}, device={str(self.device)!r}, non_blocking={self.non_blocking})"
