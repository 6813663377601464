"""One epoch's iterators around the engine: the main-process loop, and epoch bookkeeping.

:class:`SingleProcessIter` makes batches in the calling thread
(``num_workers=0``). The wrappers count what the user received (for
``state_dict``), call a batch dataset's epoch hooks, and give torch's warning
for an iterable dataset longer than it said. :class:`EndlessSampler` numbers
the batches of a batch dataset with no end.
"""

from __future__ import annotations

import itertools
import warnings
from collections.abc import Iterator
from typing import Any

from . import _datapipes
from ._config import FetchSpec
from ._worker import fetch_batch, next_iterable_batch

__all__ = [
    "EndlessSampler",
    "EpochHooks",
    "KerasEpoch",
    "LengthCheck",
    "SingleProcessIter",
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

    def __init__(self, spec: FetchSpec, index_sampler: Any, shared_seed: int | None = None):
        self._spec = spec
        if _datapipes.is_datapipe(spec.dataset):
            _datapipes.shard(spec.dataset, 1, 0)
            _datapipes.seed_epoch(spec.dataset, shared_seed)
        if spec.iterable:
            self._source = iter(spec.dataset)
            self._indices = None
        else:
            self._indices = iter(index_sampler)
        self._done = False

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        if self._done:
            raise StopIteration
        try:
            if self._indices is None:
                return next_iterable_batch(self._spec, self._source)
            return fetch_batch(self._spec, next(self._indices))
        except StopIteration:
            self._done = True
            raise

    def close(self) -> None:
        self._done = True

    def adopt_pool(self) -> bool:
        return False  # no workers


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


def call_hook(dataset: Any, name: str) -> None:
    hook = getattr(dataset, name, None)
    if callable(hook):
        hook()


class KerasEpoch:
    """One epoch of a batch dataset: counts what it handed out and ends once.

    Ending calls ``on_epoch_end`` in the main process, and moves an endless
    dataset's sampler past the batches handed out, so the next epoch goes on
    from there. An epoch ends when it runs out, when its iterator is closed,
    or, if it was left early, when the next epoch begins or the loader closes.
    """

    def __init__(self, dataset: Any, sampler: Any):
        self._dataset = dataset
        self._sampler = sampler
        self.delivered = 0
        self._ended = False

    def end(self) -> None:
        if self._ended:
            return
        self._ended = True
        if isinstance(self._sampler, EndlessSampler):
            self._sampler.position += self.delivered
        call_hook(self._dataset, "on_epoch_end")


class EpochHooks:
    """A batch dataset's epoch: counts batches handed out, and ends the epoch at its end."""

    def __init__(self, source: Any, epoch: KerasEpoch):
        self._source = source
        self._epoch = epoch

    def __iter__(self) -> Iterator[Any]:
        return self

    def __next__(self) -> Any:
        try:
            batch = next(self._source)
        except StopIteration:
            self._epoch.end()
            raise
        self._epoch.delivered += 1
        return batch

    def close(self) -> None:
        self._source.close()
        self._epoch.end()

    def adopt_pool(self) -> bool:
        return self._source.adopt_pool()
