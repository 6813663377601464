"""What a loader delivered, and whether it is right.

The consumer in a measurement keeps a :class:`Checksum` of every batch; the
runner compares it with what the dataset must give (:func:`check_run`). Every
batch is ``(..., labels)`` with ``labels`` the sample indices, in order,
because the benchmark loads with ``shuffle=False``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the runner imports this module
    pass

__all__ = ["Checksum", "check_run", "expected_label_hash", "leaves"]

# Elements probed per sample and array: enough to catch a wrong or stale sample,
# few enough that the check costs the consumer microseconds, not a pass over the data.
_PROBES = 4
_HASH_MOD = (1 << 61) - 1
# Probe weights are 64 + (label mod 64): distinct for neighbouring samples, exact in float64.
_WEIGHT_MASK = 63
# Two probes differing by more than this (relative) mean different data was delivered:
# equal data gives sums equal to within float64 rounding, whatever the batching.
_PROBE_RTOL = 1e-9


def leaves(obj: Any) -> Iterator[Any]:
    """The arrays (or anything else) inside nested lists and tuples, in order."""
    if isinstance(obj, list | tuple):
        for item in obj:
            yield from leaves(item)
    else:
        yield obj


def _as_array(value: Any) -> np.ndarray:
    """A NumPy view of a CPU tensor or array; ``Tensor.numpy()`` is the cheapest way there."""
    if isinstance(value, np.ndarray):
        return value
    to_numpy = getattr(value, "numpy", None)
    return to_numpy() if callable(to_numpy) else np.asarray(value)


@functools.cache
def _offsets(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64)


@dataclass(slots=True)
class Checksum:
    """What a loader delivered: sample count, an order-sensitive label hash, probed data.

    Every batch is ``(..., labels)`` with ``labels`` the sample indices. The
    probe adds up to ``_PROBES`` evenly spaced elements of every sample of
    every other array, weighted by its label (data beside the wrong label
    changes it; how samples are batched does not); ``cpu_s`` is the main
    thread's CPU time spent checking.
    """

    count: int = 0
    labels: int = 0
    probe: float = 0.0
    cpu_s: float = 0.0
    sizes: list[int] = field(default_factory=list)

    def add(self, batch: Any) -> None:
        start = time.thread_time()
        labels = _as_array(batch[-1]).astype(np.int64, copy=False)
        # sum((count + 1 + k) * label_k) without a per-batch arange
        offsets = _offsets(len(labels))
        step = (self.count + 1) * int(labels.sum()) + int(offsets @ labels)
        self.labels = (self.labels + step) % _HASH_MOD
        weights = (labels & _WEIGHT_MASK) + float(_WEIGHT_MASK + 1)
        for leaf in leaves(batch[:-1]):
            rows = _as_array(leaf).reshape(len(labels), -1)
            stride = max(1, (rows.shape[1] - 1) // (_PROBES - 1))
            per_row = rows[:, ::stride].sum(axis=1, dtype=np.float64)
            self.probe += float(per_row @ weights)
        self.count += len(labels)
        self.sizes.append(len(labels))
        self.cpu_s += time.thread_time() - start

    def as_dict(self) -> dict[str, Any]:
        return {"count": self.count, "labels": self.labels, "probe": self.probe}


def expected_label_hash(n: int) -> int:
    """The label hash of samples ``0..n-1`` in order: sum of (p + 1) * p over positions p."""
    return ((n - 1) * n * (n + 1) // 3) % _HASH_MOD


def check_run(result: dict[str, Any], count: int, probe: float | None) -> list[str]:
    """What is wrong with what one run delivered; an empty list when nothing is."""
    if not result.get("ok"):
        return [f"failed: {result.get('error', 'unknown error')}"]
    got = result["checksum"]
    problems = []
    if got["count"] != count:
        problems.append(f"delivered {got['count']} samples, expected {count}")
    if got["labels"] != expected_label_hash(count):
        problems.append("samples missing, repeated or out of order (label hash differs)")
    if probe is not None and abs(got["probe"] - probe) > _PROBE_RTOL * max(1.0, abs(probe)):
        problems.append(f"data differs from the reference (probe {got['probe']!r} != {probe!r})")
    return problems
