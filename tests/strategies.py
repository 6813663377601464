"""Hypothesis strategies shared by the test modules.

Grouped by the component they feed; add a new section rather than scattering
strategies through test files. Sizes stay small so that each property runs in
milliseconds under the ``ci`` profile.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

__all__ = [
    "batch_sizes",
    "container_indices",
    "container_slices",
    "distributed_configs",
    "epochs",
    "index_subsets",
    "interval_configs",
    "last_batch_modes",
    "lengths",
    "loader_configs",
    "random_sampler_configs",
    "seeds",
    "shared_keys",
    "shared_records",
    "shared_values",
    "weighted_configs",
]

# --- samplers -----------------------------------------------------------------

MAX_LENGTH = 50
"""Largest dataset a sampler property sees: enough for several batches and ranks."""

LAST_BATCH_MODES = ("keep", "discard", "rollover")


def lengths(min_value: int = 0, max_value: int = MAX_LENGTH) -> st.SearchStrategy[int]:
    """Dataset lengths, empty included by default."""
    return st.integers(min_value, max_value)


def batch_sizes(max_value: int = 12) -> st.SearchStrategy[int]:
    """Positive batch sizes, some larger than the dataset."""
    return st.integers(1, max_value)


def last_batch_modes() -> st.SearchStrategy[str]:
    """One of the three last-batch modes."""
    return st.sampled_from(LAST_BATCH_MODES)


def seeds() -> st.SearchStrategy[int]:
    """Seeds as users pass them: non-negative and up to 2**32."""
    return st.integers(0, 2**32 - 1)


def epochs(max_value: int = 50) -> st.SearchStrategy[int]:
    """Epoch numbers."""
    return st.integers(0, max_value)


@st.composite
def random_sampler_configs(draw: st.DrawFn) -> dict[str, Any]:
    """Keyword arguments for RandomSampler (and torch's): ``data_source``, ``replacement``, ``num_samples``."""
    n = draw(lengths(min_value=1))
    replacement = draw(st.booleans())
    num_samples = draw(st.none() | st.integers(1, 3 * MAX_LENGTH))
    return {"data_source": range(n), "replacement": replacement, "num_samples": num_samples}


@st.composite
def weighted_configs(draw: st.DrawFn, replacement: bool | None = None) -> dict[str, Any]:
    """Keyword arguments for WeightedRandomSampler, valid for ``replacement`` (drawn if None)."""
    weights = draw(st.lists(st.sampled_from([0.0, 0.5, 1.0, 2.5, 10.0]), min_size=1, max_size=20))
    weights[draw(st.integers(0, len(weights) - 1))] = draw(st.floats(0.1, 10.0))
    replacement = draw(st.booleans()) if replacement is None else replacement
    limit = 60 if replacement else sum(w > 0 for w in weights)
    num_samples = draw(st.integers(1, limit))
    return {"weights": weights, "num_samples": num_samples, "replacement": replacement}


def index_subsets() -> st.SearchStrategy[list[int]]:
    """Distinct indices in no particular order."""
    return st.lists(st.integers(0, 1000), unique=True, max_size=40)


@st.composite
def interval_configs(draw: st.DrawFn) -> dict[str, Any]:
    """Arguments for IntervalSampler, intervals longer than the data included."""
    return {
        "length": draw(lengths()),
        "interval": draw(st.integers(1, MAX_LENGTH + 5)),
        "rollover": draw(st.booleans()),
    }


@st.composite
def distributed_configs(draw: st.DrawFn) -> dict[str, Any]:
    """Arguments for DistributedSampler (ours and torch's) plus an ``epoch``."""
    num_replicas = draw(st.integers(1, 8))
    return {
        "size": draw(lengths(max_value=40)),
        "num_replicas": num_replicas,
        "rank": draw(st.integers(0, num_replicas - 1)),
        "shuffle": draw(st.booleans()),
        "seed": draw(st.integers(0, 2**31)),
        "drop_last": draw(st.booleans()),
        "epoch": draw(epochs()),
    }


# --- loader -------------------------------------------------------------------


@st.composite
def loader_configs(draw: st.DrawFn) -> dict[str, Any]:
    """A map-style loader's batching: dataset size, batch size, mode, shuffle, seed."""
    return {
        "size": draw(lengths(0, 40)),
        "batch_size": draw(batch_sizes(9)),
        "last_batch": draw(last_batch_modes()),
        "shuffle": draw(st.booleans()),
        "seed": draw(seeds()),
    }


# --- shared containers --------------------------------------------------------

_SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False)  # NaN is unequal to itself, so no container would equal it
    | st.text(max_size=12)
    | st.binary(max_size=12)
)


def shared_values() -> st.SearchStrategy[Any]:
    """Picklable items as datasets hold them: scalars, and lists, tuples and dicts of them."""
    return st.recursive(
        _SCALARS,
        lambda inner: (
            st.lists(inner, max_size=4)
            | st.tuples(inner, inner)
            | st.dictionaries(st.text(max_size=6), inner, max_size=4)
        ),
        max_leaves=12,
    )


@st.composite
def shared_records(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Lists of dicts with the same ``str`` keys, as annotation files hold: mostly plain values
    (stored as records), sometimes one that is not (a NumPy scalar, a ``bytearray``, a ``set``),
    sometimes an item with other keys."""
    keys = draw(st.lists(st.text(max_size=6), min_size=1, max_size=5, unique=True))
    odd = st.sampled_from([np.float64(0.5), np.int64(3), bytearray(b"ab"), {1, 2}, ("t", [b"x"])])
    value = st.one_of(shared_values(), odd) if draw(st.booleans()) else shared_values()
    record = st.fixed_dictionaries(dict.fromkeys(keys, value))
    records = draw(st.lists(record, min_size=1, max_size=8))
    if draw(st.integers(0, 9)) == 0:
        records.insert(draw(st.integers(0, len(records))), {"other": 1})
    return records


def shared_keys() -> st.SearchStrategy[Any]:
    """Hashable keys: numbers (``1``, ``1.0`` and ``True`` are one key), text, bytes, ``None``,
    and tuples and frozensets of them."""
    scalars = (
        st.none()
        | st.booleans()
        | st.integers(-(2**70), 2**70)
        | st.sampled_from([0.0, -0.0, 1.0, 2.0, 0.5, -3.25, float("inf")])
        | st.text(max_size=8)
        | st.binary(max_size=8)
    )
    return (
        scalars
        | st.tuples(scalars, scalars)
        | st.frozensets(st.integers(-3, 3) | st.text(max_size=2), max_size=3)
    )


def container_indices(length: int) -> st.SearchStrategy[int]:
    """Indices for a sequence of ``length`` items: negative ones and out-of-range ones included."""
    return st.integers(-length - 3, length + 3)


def container_slices(length: int) -> st.SearchStrategy[slice]:
    """Slices with any start, stop and step (negative and out of range too), or ``None``s."""
    bound = st.none() | st.integers(-length - 3, length + 3)
    step = st.none() | st.integers(-4, 4).filter(bool)
    return st.builds(slice, bound, bound, step)
