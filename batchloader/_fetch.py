"""Making one batch: the same steps in a worker and in the main process (``num_workers=0``)."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from ._batch_dataset import check_batch
from ._config import FetchMode, FetchSpec

__all__ = ["fetch_batch", "next_iterable_batch", "next_shared_batch", "number_batches"]


def fetch_batch(spec: FetchSpec, indices: Any) -> Any:
    """Makes one batch of a map-style dataset; shared by every worker kind."""
    dataset = spec.dataset
    match spec.mode:
        case FetchMode.SAMPLES:
            getitems = getattr(dataset, "__getitems__", None)
            samples = getitems(indices) if getitems else [dataset[i] for i in indices]
            return spec.collate_fn(samples)
        case FetchMode.GET_BATCH:
            return _as_collated(dataset.get_batch(indices))
        case FetchMode.SINGLE:
            return spec.collate_fn(dataset[indices])
        case FetchMode.BATCH_DATASET:
            return spec.collate_fn(check_batch(dataset[indices], indices))
    raise RuntimeError(f"[INTERNAL ERROR] fetch_batch got mode {spec.mode}")


def number_batches(
    batches: Iterator[Any], skip: int, done: frozenset[int]
) -> Iterator[tuple[int, Any]]:
    """``(batch id, indices)`` for an epoch's batches, leaving out those delivered before.

    The index lists of the left-out batches are still drawn (so everything
    after them is as in the uninterrupted epoch), but no sample is loaded.
    """
    for batch_id, indices in enumerate(batches):
        if batch_id >= skip and batch_id not in done:
            yield batch_id, indices


def _as_collated(fields: Any) -> Any:
    """What default_collate makes of the same samples: tensors, and a list for tuples."""
    if isinstance(fields, tuple):
        return [torch.as_tensor(f) if isinstance(f, np.ndarray) else f for f in fields]
    return torch.as_tensor(fields) if isinstance(fields, np.ndarray) else fields


def next_iterable_batch(spec: FetchSpec, iterator: Iterator[Any]) -> Any:
    """The next batch of an iterable dataset; raises StopIteration at its end."""
    if spec.mode is FetchMode.ITERABLE_SINGLE:
        return spec.collate_fn(next(iterator))
    items = list(itertools.islice(iterator, spec.batch_size))
    if not items or (spec.drop_last and spec.batch_size and len(items) < spec.batch_size):
        raise StopIteration
    return spec.collate_fn(items)


def next_shared_batch(spec: FetchSpec, take: Any, epoch: int) -> tuple[int, Any]:
    """The next batch of a generator the thread workers share, and its number in the epoch.

    The whole batch is taken under the generator's lock, so its items are
    consecutive; raises StopIteration at the end, as :func:`next_iterable_batch`.
    """
    single = spec.mode is FetchMode.ITERABLE_SINGLE
    number, items = take(1 if single else spec.batch_size, epoch)
    short = spec.batch_size is not None and len(items) < spec.batch_size
    if not items or (not single and spec.drop_last and short):
        raise StopIteration
    return number, spec.collate_fn(items[0] if single else items)
