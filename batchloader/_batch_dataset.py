"""The Keras ``PyDataset`` protocol, read from any object that follows it.

A batch dataset returns whole batches: ``ds[i]`` is batch ``i``, ``num_batches``
(or ``len(ds)``) counts them, ``None`` meaning endless. Its loading options
(``workers``, ``use_multiprocessing``, ``max_queue_size``) live on the dataset.
This module recognises such objects (ours, Keras's, or duck-typed), reads
their options into one frozen :class:`BatchDatasetOptions`, and checks the
batches they return. It never imports Keras: Keras classes are recognised by
module and class name.
"""

from __future__ import annotations

import inspect
import operator
import reprlib
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.utils.data
from torch.utils.data import IterableDataset as _TorchIterableDataset

__all__ = [
    "DEFAULT_MAX_QUEUE_SIZE",
    "DEFAULT_USE_MULTIPROCESSING",
    "DEFAULT_WORKERS",
    "BatchDatasetOptions",
    "batch_dataset_options",
    "check_batch",
    "fill_missing_options",
    "is_batch_dataset",
    "validate_option",
]

DEFAULT_WORKERS = 1  # Keras's default: load in the main process
DEFAULT_USE_MULTIPROCESSING = False  # Keras's default: threads, the dataset need not pickle
DEFAULT_MAX_QUEUE_SIZE = 10  # Keras's default: batches prepared ahead

_DEFAULTS: dict[str, Any] = {
    "workers": DEFAULT_WORKERS,
    "use_multiprocessing": DEFAULT_USE_MULTIPROCESSING,
    "max_queue_size": DEFAULT_MAX_QUEUE_SIZE,
}
# Modules whose base classes keep the options in `_<name>` behind a property of the same name.
_ACCESSOR_MODULES = ("batchloader", "keras", "tf_keras")
_KERAS_BASE_NAMES = frozenset({"PyDataset", "Sequence"})
_BATCH_FORMS = "a tuple (x,), (x, y) or (x, y, sample_weight), a dict, or one array or tensor (x)"
_MISSING = object()
_REPR = reprlib.Repr()  # keyword arguments to Repr() need 3.12
_REPR.maxstring = _REPR.maxother = 60


@dataclass(frozen=True, slots=True)
class BatchDatasetOptions:
    """How a batch dataset asks to be loaded, validated.

    Args:
        workers: how many workers; ``1`` without multiprocessing means the main process.
        use_multiprocessing: processes rather than threads.
        max_queue_size: at most this many batches prepared ahead.
        num_batches: batches per epoch, or ``None`` for an endless dataset.

    The derived properties translate these into loader arguments, as Keras
    does: ``workers=1, use_multiprocessing=False`` loads in the main process.

    Example::

        opts = batch_dataset_options(ds)
        loader_kwargs = dict(num_workers=opts.num_workers, thread_pool=opts.thread_pool,
                             prefetch_factor=opts.prefetch_factor)
    """

    workers: int = DEFAULT_WORKERS
    use_multiprocessing: bool = DEFAULT_USE_MULTIPROCESSING
    max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE
    num_batches: int | None = None

    def __post_init__(self) -> None:
        for name in _DEFAULTS:
            object.__setattr__(self, name, validate_option(name, getattr(self, name)))
        if self.num_batches is not None:
            object.__setattr__(self, "num_batches", _count("num_batches", self.num_batches))

    @property
    def num_workers(self) -> int:
        """The loader's ``num_workers``: 0 (main process) when Keras would not start workers."""
        return (
            self.workers if self.workers > 1 or (self.workers and self.use_multiprocessing) else 0
        )

    @property
    def thread_pool(self) -> bool:
        """The loader's ``thread_pool``: threads unless ``use_multiprocessing``."""
        return not self.use_multiprocessing

    @property
    def prefetch_factor(self) -> int | None:
        """The loader's ``prefetch_factor``: ``max_queue_size`` spread over the workers, at least 1."""
        if self.num_workers == 0:
            return None
        return max(1, self.max_queue_size // self.num_workers)


def validate_option(name: str, value: Any) -> Any:
    """``value`` checked (and ints normalised) for option ``name``; raises naming both."""
    if name == "use_multiprocessing":
        # Keras tests it for truth: 0 and 1 are as good as False and True.
        if not isinstance(value, bool | np.bool_ | int | np.integer):
            raise TypeError(f"use_multiprocessing={value!r} must be True or False")
        return bool(value)
    if name not in ("workers", "max_queue_size"):
        raise RuntimeError(f"[INTERNAL ERROR] validate_option got unknown option {name!r}")
    # workers=0 loads in the main process, as Keras does with it.
    return _count(name, value, minimum=0 if name == "workers" else 1)


def _count(name: str, value: Any, *, minimum: int = 0) -> int:
    if isinstance(value, bool | np.bool_):
        raise TypeError(f"{name}={value!r} must be an int, not a bool")
    try:
        count = operator.index(value)
    except TypeError:
        raise TypeError(
            f"{name}={value!r} must be an int; got {type(value).__qualname__}"
        ) from None
    if count < minimum:
        raise ValueError(f"{name}={value!r} must be at least {minimum}")
    return count


def fill_missing_options(
    obj: Any, *, stacklevel: int = 2, names: Iterable[str] | None = None
) -> bool:
    """Sets Keras's defaults for options its base ``__init__`` never set; warns once if so.

    Only ``names`` are checked (all three by default). ``stacklevel`` is
    counted from the caller, as in ``warnings.warn``. The
    defaults are stored on ``obj`` (as Keras does), so the warning comes once
    per object. Returns whether anything was missing.
    """
    missing = [n for n in (names or _DEFAULTS) if not hasattr(obj, "_" + n)]
    if not missing:
        return False
    for name in missing:
        try:
            setattr(obj, "_" + name, _DEFAULTS[name])
        except AttributeError:  # __slots__ or a frozen object: warn every time instead
            pass
    cls = type(obj).__qualname__
    defaults = ", ".join(f"{n}={_DEFAULTS[n]!r}" for n in missing)
    warnings.warn(
        f"{cls}.__init__ did not call super().__init__(**kwargs), so {defaults} "
        f"(the default{'s' if len(missing) > 1 else ''}) will be used. Call "
        f"super().__init__(**kwargs) in {cls}.__init__ and give workers, "
        "use_multiprocessing and max_queue_size there.",
        UserWarning,
        stacklevel=stacklevel + 1,
    )
    return True


def is_batch_dataset(obj: Any) -> bool:
    """Whether ``obj`` returns whole batches from ``obj[i]``, following Keras's ``PyDataset``.

    True for :class:`~batchloader.datasets.BatchDataset` and Keras's
    ``PyDataset``/``Sequence`` (by module and class name, Keras is not imported),
    for any object with ``__getitem__`` and a ``num_batches`` attribute, and
    for one that follows Keras's protocol without its base class: it has all
    of ``workers``, ``use_multiprocessing`` and ``max_queue_size``.
    A plain map-style dataset (``__getitem__`` and ``__len__`` only) is not one:
    nothing tells its samples from batches.
    """
    cls = type(obj)
    if isinstance(obj, type | _TorchIterableDataset) or not callable(
        getattr(cls, "__getitem__", None)
    ):
        return False
    if _from_keras(cls):
        return True
    return inspect.getattr_static(obj, "num_batches", _MISSING) is not _MISSING or all(
        inspect.getattr_static(obj, name, _MISSING) is not _MISSING for name in _DEFAULTS
    )


def batch_dataset_options(obj: Any, *, stacklevel: int = 2) -> BatchDatasetOptions:
    """The loading options and batch count of a batch dataset, validated.

    Reads ``workers``, ``use_multiprocessing`` and ``max_queue_size`` from our
    :class:`~batchloader.datasets.BatchDataset`, from Keras's ``PyDataset``, or
    from a duck-typed object's attributes (``workers`` or ``_workers``, and so
    on; absent ones take Keras's defaults silently). When a subclass of ours or
    Keras's never called ``super().__init__``, warns (``UserWarning``, at
    ``stacklevel`` counted from the caller) and uses the defaults.
    ``num_batches`` comes from the ``num_batches`` attribute, else ``len(obj)``.

    Raises:
        TypeError: no ``__getitem__``; neither ``num_batches`` nor ``__len__``;
            an option of the wrong type. ValueError: an option out of range.
    """
    cls = type(obj)
    if not callable(getattr(cls, "__getitem__", None)):
        raise TypeError(f"{cls.__qualname__} is not a batch dataset: it has no __getitem__")
    inherited = [n for n in _DEFAULTS if _is_base_accessor(inspect.getattr_static(cls, n, None))]
    if inherited:
        fill_missing_options(obj, stacklevel=stacklevel, names=inherited)
    values = {n: _read_option(obj, n, inherited=n in inherited) for n in _DEFAULTS}
    try:
        return BatchDatasetOptions(**values, num_batches=_read_num_batches(obj))
    except (TypeError, ValueError) as error:
        error.add_note(f"(read from the batch dataset {cls.__qualname__})")
        raise


def check_batch(batch: Any, index: int) -> Any:
    """``batch`` (what ``ds[index]`` returned) if it is a valid Keras-style batch.

    Accepted, and returned unchanged: a tuple ``(x,)``, ``(x, y)`` or
    ``(x, y, sample_weight)``; a mapping; a single array or tensor (it is ``x``).
    A list of 1 to 3 items becomes a tuple, as Keras does.

    Raises:
        ValueError: a tuple or list of length 0 or more than 3.
        TypeError: anything else (None, a string, a number, a set...).
    """
    if isinstance(batch, list) and 1 <= len(batch) <= 3:
        return tuple(batch)
    if isinstance(batch, Mapping) or _is_array(batch):
        return batch
    if isinstance(batch, tuple | list):
        if 1 <= len(batch) <= 3:
            return batch
        raise ValueError(
            f"batch {index}: __getitem__({index}) returned a {type(batch).__qualname__} of "
            f"length {len(batch)}; a batch must be {_BATCH_FORMS}"
        )
    raise TypeError(
        f"batch {index}: __getitem__({index}) returned a {type(batch).__qualname__} "
        f"({_REPR.repr(batch)}); a batch must be {_BATCH_FORMS}"
    )


def _is_array(value: Any) -> bool:
    if isinstance(value, np.ndarray | torch.Tensor):
        return True
    # Other frameworks' arrays (JAX, TensorFlow, CuPy) all carry a shape and a dtype.
    return not isinstance(value, str | bytes) and all(
        hasattr(value, attr) for attr in ("shape", "dtype")
    )


def _from_keras(cls: type) -> bool:
    return any(
        base.__name__ in _KERAS_BASE_NAMES and _is_accessor_module(base.__module__)
        for base in cls.__mro__
    )


def _is_accessor_module(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in _ACCESSOR_MODULES)


def _is_base_accessor(attribute: Any) -> bool:
    """Whether ``attribute`` is our or Keras's property in front of an ``_<name>`` field."""
    getter = getattr(attribute, "fget", None) if isinstance(attribute, property) else None
    return getter is not None and _is_accessor_module(getattr(getter, "__module__", "") or "")


def _read_option(obj: Any, name: str, *, inherited: bool) -> Any:
    if inherited:
        return getattr(obj, "_" + name, _DEFAULTS[name])
    for attribute in (name, "_" + name):
        value = getattr(obj, attribute, _MISSING)
        if value is not _MISSING:
            return value
    return _DEFAULTS[name]


def _read_num_batches(obj: Any) -> int | None:
    cls = type(obj)
    if inspect.getattr_static(obj, "num_batches", _MISSING) is not _MISSING:
        try:
            return obj.num_batches
        except NotImplementedError as error:
            raise TypeError(
                f"{cls.__qualname__} defines neither __len__ nor num_batches; define one "
                "(num_batches may be None for an endless dataset)"
            ) from error
    if callable(getattr(cls, "__len__", None)):
        return len(obj)
    raise TypeError(
        f"{cls.__qualname__} has neither num_batches nor __len__; define one to count its "
        "batches (num_batches may be None for an endless dataset)"
    )
