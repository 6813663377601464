"""What worker processes receive of a dataset: a copy with shared containers, or a warning.

A dataset that holds a large ``list`` or ``dict`` of Python objects makes
every worker process copy the pages of each item it reads (pytorch#13246).
With ``share_dataset=True`` the loader converts those containers once, into
shared read-only ones (``_sharing.share_dataset``), and gives the workers
that copy; without it, it warns once per loader (see docs/memory.md).
"""

from __future__ import annotations

import logging
import time
import warnings
from typing import Any

from . import _sharing

__all__ = ["WorkerMemory"]

_log = logging.getLogger("batchloader")

# The warning shows at most this many containers.
_SHOWN = 3


def _describe(found: list[_sharing.LargeContainer]) -> str:
    parts = [
        f"a {c.kind} of {c.items:,} items at {c.path} (about {c.nbytes / 1e6:,.0f} MB as Python "
        "objects)"
        for c in found[:_SHOWN]
    ]
    more = len(found) - _SHOWN
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


class WorkerMemory:
    """One loader's decision for its worker processes, taken once.

    Example::

        memory = WorkerMemory()
        dataset_for_workers = memory.dataset_for(dataset, share=True, stacklevel=2)
    """

    def __init__(self) -> None:
        self._shared: tuple[Any, Any] | None = None  # (the user's dataset, the shared copy)
        self._checked: set[int] = set()  # ids of the datasets already checked for the warning

    def dataset_for(self, dataset: Any, share: bool, *, stacklevel: int) -> Any:
        """The dataset to send to worker processes: a shared copy, or ``dataset`` itself.

        The copy is made once per loader (it stays valid for every epoch and
        every persistent pool); without ``share``, a dataset with large
        containers gets one warning.
        """
        if share:
            return self._shared_copy(dataset)
        if id(dataset) not in self._checked:
            self._checked.add(id(dataset))
            self._warn_if_large(dataset, stacklevel + 1)
        return dataset

    def _shared_copy(self, dataset: Any) -> Any:
        if self._shared is not None and self._shared[0] is dataset:
            return self._shared[1]
        started = time.perf_counter()
        copy, replaced = _sharing.share_dataset(
            dataset, min_items=_sharing.MIN_ITEMS, min_bytes=_sharing.MIN_BYTES
        )
        if replaced:
            _log.info(
                "share_dataset: %s shared in %.2f s (%s MB)",
                ", ".join(f"{c.path} ({c.items:,} items)" for c in replaced),
                time.perf_counter() - started,
                f"{sum(c.nbytes for c in replaced) / 1e6:,.0f}",
            )
        self._shared = (dataset, copy)
        return copy

    def _warn_if_large(self, dataset: Any, stacklevel: int) -> None:
        found = _sharing.find_large_containers(
            dataset, min_items=_sharing.MIN_ITEMS, min_bytes=_sharing.MIN_BYTES
        )
        if not found:
            return
        warnings.warn(
            f"DataLoader: the dataset holds {_describe(found)}. Each worker process copies "
            "the memory of every item it reads (reading a Python object writes its reference "
            "count: pytorch#13246), up to a whole copy per worker, growing every epoch; with "
            "spawn or forkserver each worker starts with a whole copy. Pass "
            "share_dataset=True to give the workers one shared, read-only copy "
            "(docs/memory.md).",
            UserWarning,
            stacklevel=stacklevel,
        )

    def close(self) -> None:
        """Drops the shared copy: its memory goes once no worker maps it any more."""
        self._shared = None
