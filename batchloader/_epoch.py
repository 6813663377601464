"""One epoch's iterators around the engine: the main-process loop, and epoch bookkeeping.

:class:`SingleProcessIter` makes batches in the calling thread
(``num_workers=0``). The wrappers count what the user received (for
``state_dict``), call a batch dataset's epoch hooks, and give torch's warning
for an iterable dataset longer than it said. :class:`EndlessSampler` numbers
the batches of a batch dataset with no end.
"""

from __future__ import annotations

import collections
import itertools
import time
import warnings
from collections.abc import Callable, Iterator
from typing import Any

from . import _datapipes
from ._config import FetchSpec
from ._fetch import fetch_batch, next_iterable_batch, number_batches
from ._stats import EpochRecorder

__all__ = [
    "EndlessSampler",
    "Epoch",
    "LengthCheck",
    "SingleProcessIter",
    "Tracked",
    "call_hook",
]


class EndlessSampler:
    """Batch indices of a batch dataset with no end: each epoch goes on from the last.

    As Keras does with an endless ``PyDataset``, an epoch starts after the last
    batch the previous epoch handed out (``position``), not at 0.
    """

    def __init__(self) -> None:
        self.position = 0

    def __iter__(self) -> Iterator[int]:
        return itertools.count(self.position)

    def __len__(self) -> int:
        raise TypeError("an infinite batch dataset (num_batches=None) has no len()")


class SingleProcessIter:
    """``num_workers=0``: every batch is made in the calling thread."""

    def __init__(
        self,
        spec: FetchSpec,
        index_sampler: Any,
        shared_seed: int | None = None,
        *,
        epoch: Epoch | None = None,
    ):
        self._spec = spec
        if _datapipes.is_datapipe(spec.dataset):
            _datapipes.shard(spec.dataset, 1, 0)
            _datapipes.seed_epoch(spec.dataset, shared_seed)
        self._log: collections.deque[int] = collections.deque()
        if spec.iterable:
            self._source = iter(spec.dataset)
            self._indices = None
        else:
            epoch = epoch or Epoch({})
            self._indices = number_batches(
                iter(index_sampler), epoch.prefix, frozenset(epoch.ahead)
            )
            epoch.log = self._log
        self._stats = epoch.stats if epoch is not None else EpochRecorder(0, {})
        self._done = False

    def __iter__(self) -> Iterator[Any]:
        return self

    def draw_indices(self) -> None:
        """Draws the epoch's index lists up to the next batch now (the sampler's randomness)."""
        if self._indices is not None:
            first = next(self._indices, None)
            self._indices = itertools.chain(() if first is None else (first,), self._indices)

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        started, cpu = time.perf_counter(), time.thread_time()
        try:
            if self._indices is None:
                batch = next_iterable_batch(self._spec, self._source)
                samples = self._spec.batch_size or 1
            else:
                batch_id, indices = next(self._indices)
                batch = fetch_batch(self._spec, indices)
                self._log.append(batch_id)
                samples = len(indices) if isinstance(indices, list) else 1
        except StopIteration:
            self._done = True
            raise
        stats = self._stats
        busy = time.perf_counter() - started
        stats.produced(busy, time.thread_time() - cpu)
        stats.starved_s += busy  # the loop waits while it makes the batch itself
        stats.samples += samples
        return batch

    def close(self) -> None:
        self._done = True

    def adopt_pool(self) -> bool:
        return False  # no workers

    @property
    def _workers(self) -> list[Any]:
        return []  # torch's attribute: this epoch has no worker processes


class LengthCheck:
    """torch's warning when an iterable dataset yields more than the ``len(loader)`` it reported."""

    def __init__(self, source: Any, loader: Any, num_workers: int):
        self._source = source
        self._dataset = loader.dataset
        self._reported = loader._IterableDataset_len_called
        self._num_workers = num_workers
        self._yielded = 0

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        batch = next(self._source)
        self._yielded += 1
        if self._yielded > self._reported:
            message = (
                f"Length of IterableDataset {self._dataset} was reported to be {self._reported} "
                f"(when accessing len(dataloader)), but {self._yielded} samples have been fetched. "
            )
            if self._num_workers > 0:
                message += (
                    "For multiprocessing data-loading, this could be caused by not properly "
                    "configuring the IterableDataset replica at each worker: shard it with "
                    "torch.utils.data.get_worker_info() (see docs/workers.md)."
                )
            warnings.warn(message, UserWarning, stacklevel=2)
        return batch

    def close(self) -> None:
        self._source.close()

    def adopt_pool(self) -> bool:
        return self._source.adopt_pool()

    @property
    def _workers(self) -> list[Any]:
        """torch's attribute: the worker processes, indexed by worker id."""
        return list(self._source._workers)


def _no_tuning() -> None:
    return None


def call_hook(dataset: Any, name: str) -> None:
    hook = getattr(dataset, name, None)
    if callable(hook):
        hook()


class Epoch:
    """One epoch as the user sees it: where it started, what was handed out, how it ends.

    ``snapshot`` is what the epoch started from (random state, sampler state,
    ...; see ``_resume``). A map-style source logs each batch id it hands on
    (``log``); each batch the user receives takes the oldest, so the set of
    delivered ids is exact even when batches come out of order or a pin-memory
    thread holds some. The set is kept as a prefix ``0 .. prefix-1`` plus the
    ids ``ahead`` of it.

    Ending (once) calls a batch dataset's ``on_epoch_end`` in the main process
    and moves an endless batch dataset's sampler past the batches handed out.
    An epoch ends when it runs out, when its iterator is closed, or, if it was
    left early, when the next epoch begins or the loader closes.
    """

    def __init__(
        self,
        snapshot: dict[str, Any],
        skip: int = 0,
        done: frozenset[int] = frozenset(),
        *,
        hooks: Any = None,
        sampler: Any = None,
    ):
        self.snapshot = snapshot
        self.prefix = skip
        self.ahead = set(done)
        self.log: collections.deque[int] | None = None  # set by a source that numbers batches
        # set by a stream source: (worker, its dataset's state after the batch)
        self.stream_log: collections.deque[tuple[int, Any]] | None = None
        self.worker_states: dict[int, Any] = {}  # per worker: the state after its last batch
        self.last_worker: int | None = None
        self.finished = False
        self._hooks = hooks
        self._sampler = sampler
        self._ended = False
        self.stats = EpochRecorder(0, {})  # the loader sets the real one (number, settings)
        self.tune: Callable[[], None] = _no_tuning  # num_workers="auto": after each batch

    def delivered(self) -> None:
        if self.log is None:
            self.prefix += 1  # a stream: batches are counted, in order
            if self.stream_log:
                self.last_worker, state = self.stream_log.popleft()
                if state is not None:
                    self.worker_states[self.last_worker] = state
            return
        batch_id = self.log.popleft()
        if batch_id != self.prefix:
            self.ahead.add(batch_id)
            return
        self.prefix += 1
        while self.prefix in self.ahead:
            self.ahead.remove(self.prefix)
            self.prefix += 1

    def end(self, *, finished: bool = False) -> None:
        self.finished = self.finished or finished
        if self._ended:
            return
        self._ended = True
        self.stats.end(finished=finished)
        if isinstance(self._sampler, EndlessSampler):
            self._sampler.position += self.prefix  # the epoch's batches, from before a resume too
        if self._hooks is not None:
            call_hook(self._hooks, "on_epoch_end")


class Tracked:
    """The user's side of an epoch: counts batches handed out, and ends the epoch."""

    def __init__(self, source: Any, epoch: Epoch):
        self._source = source
        self._epoch = epoch

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        asked = time.perf_counter()
        try:
            batch = next(self._source)
        except StopIteration:
            self._epoch.end(finished=True)
            raise
        epoch = self._epoch
        epoch.stats.delivered(asked, time.perf_counter())
        epoch.delivered()
        epoch.tune()  # in the thread that iterates: a fork is safe here (see _fork_guard)
        return batch

    def close(self) -> None:
        self._source.close()
        self._epoch.end()

    def adopt_pool(self) -> bool:
        return self._source.adopt_pool()

    @property
    def _workers(self) -> list[Any]:
        """torch's attribute: the worker processes, indexed by worker id."""
        return list(self._source._workers)
