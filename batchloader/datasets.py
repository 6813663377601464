"""Dataset base classes and adapters: what the loader reads samples or batches from.

Four kinds of data source, and what the loader does with each:

* map-style (:class:`Dataset`, :class:`ArrayDataset`): ``ds[i]`` is one sample;
  :meth:`ArrayDataset.get_batch` gathers a whole batch in one call per array;
* iterable (:class:`IterableDataset`, :class:`GeneratorDataset`): each worker
  iterates its own copy and must shard, or every sample repeats per worker;
* a plain generator or iterator: single-use, so
  only the main process or threads sharing it (:func:`threadsafe`) may read it;
* batch-level (:class:`BatchDataset`, Keras ``PyDataset``): ``ds[i]`` is batch ``i``.
"""

from __future__ import annotations

import collections.abc
import itertools
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
import torch
import torch.utils.data

from ._batch_dataset import (
    DEFAULT_MAX_QUEUE_SIZE,
    DEFAULT_USE_MULTIPROCESSING,
    DEFAULT_WORKERS,
    fill_missing_options,
    validate_option,
)
from ._generators import threadsafe
from ._typing import T_co

__all__ = [
    "ArrayDataset",
    "BatchDataset",
    "Dataset",
    "GeneratorDataset",
    "IterableDataset",
    "PyDataset",
    "Sequence",
    "TensorDataset",
    "threadsafe",
]

Array = np.ndarray | torch.Tensor
"""What :class:`ArrayDataset` holds: NumPy arrays and torch tensors, freely mixed."""


class Dataset(torch.utils.data.Dataset[T_co]):
    """A map-style dataset: ``len(ds)`` samples, sample ``i`` is ``ds[i]``.

    A subclass of ``torch.utils.data.Dataset``, so torch's loader accepts it
    and torch's datasets work wherever this one does. Subclasses define
    ``__getitem__`` and usually ``__len__``; defining ``__getitems__(indices)``
    (a list of samples) lets a loader fetch a batch in one call.

    Example::

        class Squares(Dataset):
            def __len__(self):
                return 10

            def __getitem__(self, i):
                return i * i
    """


class IterableDataset(torch.utils.data.IterableDataset[T_co]):
    """A stream of samples: ``iter(ds)`` yields them; there is no ``ds[i]``.

    A subclass of ``torch.utils.data.IterableDataset``. With ``num_workers=N``
    every worker gets its own copy and iterates it from the start.

    Trap: a dataset that ignores ``get_worker_info()`` yields every sample
    ``N`` times. The fix is two lines in ``__iter__``: ask which worker this is,
    and take every ``num_workers``-th item starting at its ``id``.

    Example::

        class Numbers(IterableDataset):
            def __init__(self, n):
                self.n = n

            def __iter__(self):
                info = torch.utils.data.get_worker_info()  # None in the main process
                start, step = (0, 1) if info is None else (info.id, info.num_workers)
                return iter(range(start, self.n, step))
    """


# --- array datasets ----------------------------------------------------------------------------


class ArrayDataset(Dataset[Any]):
    """Samples are rows of one or more arrays, gathered a whole batch at a time.

    MXNet's ``ArrayDataset`` and torch's ``TensorDataset``: sample ``i`` is
    ``(a[i], b[i], ...)``, or just ``a[i]`` when there is one array. NumPy
    arrays and torch tensors may be mixed; each keeps its own type.

    Args:
        *arrays: ``numpy.ndarray`` or ``torch.Tensor`` objects with the same
            length (first dimension).

    Raises:
        ValueError: no arrays, a 0-d array, or arrays of different lengths.
        TypeError: an argument that is neither a NumPy array nor a tensor.

    Batched fetch, for index list ``idx``:

    * :meth:`get_batch` returns the stacked batch in the structure of
      ``ds[i]``, a tuple of arrays (one array if there is one), each gathered
      with a single ``numpy.take`` or ``torch.index_select``;
    * ``__getitems__`` returns a ``list`` of samples, ``[ds[i] for i in idx]``,
      which torch's loader passes to ``collate_fn``; the samples are cut from
      one gathered batch instead of ``len(idx)`` separate lookups.

    Example::

        ds = ArrayDataset(np.zeros((100, 3), np.float32), torch.arange(100))
        x, y = ds[7]                  # ndarray shape (3,), tensor(7)
        xb, yb = ds.get_batch([0, 5, 9])  # ndarray shape (3, 3), tensor([0, 5, 9])
    """

    _always_tuple = False  # TensorDataset: a sample is always a tuple, errors in torch's words

    def __init__(self, *arrays: Array) -> None:
        self._arrays = _validate_arrays(type(self).__name__, arrays, torch_words=self._always_tuple)
        self._length = len(self._arrays[0])
        self._single = len(self._arrays) == 1 and not self._always_tuple
        # NumPy views of CPU tensors: np.take gathers a small batch several times
        # faster than torch.index_select's dispatch. A view is only used while
        # its tensor still lives at the address it was made from: share_memory_()
        # (also run when a tensor is pickled for a spawn/forkserver worker)
        # moves the data and frees the old storage under any view of it.
        self._views = [_NumpyView(a) for a in self._arrays]

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_views"] = None  # views are per process: remade on arrival
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._views = [_NumpyView(a) for a in self._arrays]

    @property
    def arrays(self) -> tuple[Array, ...]:
        """The arrays, in the order given."""
        return self._arrays

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> Any:
        if self._single:
            return self._arrays[0][index]
        return tuple(array[index] for array in self._arrays)

    def __getitems__(self, indices: collections.abc.Sequence[int]) -> list[Any]:
        """Samples ``[ds[i] for i in indices]``, cut from one gathered batch.

        torch's loader calls this and passes the list to ``collate_fn``; the
        samples are views into the gathered arrays, not copies of ``self``.
        """
        fields = [_unstack(field) for field in self._gather(indices, None)]
        if self._single:
            return fields[0]
        return list(zip(*fields, strict=True))

    def get_batch(
        self, indices: collections.abc.Sequence[int] | np.ndarray | torch.Tensor, *, out: Any = None
    ) -> Any:
        """The batch for ``indices``, stacked: a tuple holding one array per field.

        Equal to stacking ``ds[i]`` field by field (``np.stack``/``torch.stack``),
        each field keeping its own type, dtype and device. With one array (not
        :class:`TensorDataset`) the result is that array, not a 1-tuple.

        Args:
            indices: integers in ``[0, len(ds))``, as a sequence, 1-d
                NumPy array or tensor.
            out: optional preallocated destination (say, shared memory), in the
                same structure as the result, each of shape
                ``(len(indices), *array.shape[1:])`` and the array's dtype.

        Raises:
            IndexError: an index out of range. TypeError/ValueError: bad ``out``.

        To get what torch's ``default_collate`` makes of the same samples,
        convert each field with ``torch.as_tensor``: for numeric and bool
        arrays, ``default_collate(ds.__getitems__(idx))`` equals
        ``[torch.as_tensor(f) for f in ds.get_batch(idx)]`` (a list, as torch
        gives for tuple samples), or ``torch.as_tensor(ds.get_batch(idx))``
        with one array. String and object arrays do not collate to tensors.
        """
        fields = self._gather(indices, out)
        return fields[0] if self._single else fields

    def _gather(self, indices: Any, out: Any) -> tuple[Array, ...]:
        idx = _index_array(indices, self._length, type(self).__name__)
        if out is None:
            outs = (None,) * len(self._arrays)
        else:
            outs = _validate_out(self._arrays, len(idx), out, self._single)
        return tuple(
            _take(a, view.get(a), idx, o)
            for a, view, o in zip(self._arrays, self._views, outs, strict=True)
        )

    def __repr__(self) -> str:
        parts = ", ".join(_describe_array(a) for a in self._arrays)
        return f"{type(self).__name__}({parts})"


class TensorDataset(ArrayDataset):
    """torch's ``TensorDataset``: like :class:`ArrayDataset`, but samples are always tuples.

    ``ds.tensors`` is the tuple of arrays, as in torch. NumPy arrays are also
    accepted and stay NumPy arrays.

    Example::

        ds = TensorDataset(torch.randn(8, 2))
        (x,) = ds[0]                  # a 1-tuple, as torch returns
    """

    _always_tuple = True

    @property
    def tensors(self) -> tuple[Array, ...]:
        """The tensors (or arrays), in the order given; torch's attribute name."""
        return self._arrays


def _validate_arrays(
    owner: str, arrays: tuple[Any, ...], *, torch_words: bool = False
) -> tuple[Array, ...]:
    if not arrays:
        raise ValueError(f"{owner}() needs at least one array; got none")
    for position, array in enumerate(arrays):
        if not isinstance(array, np.ndarray | torch.Tensor):
            raise TypeError(
                f"{owner} argument {position} is a {type(array).__qualname__}; expected a "
                "numpy.ndarray or torch.Tensor (convert it with numpy.asarray or torch.as_tensor)"
            )
        if array.ndim == 0:
            raise ValueError(
                f"{owner} argument {position} is 0-d (shape ()); samples are rows along "
                "the first dimension, so every array needs at least one dimension"
            )
    lengths = [len(array) for array in arrays]
    if len(set(lengths)) > 1:
        if torch_words:
            # torch's type and words, which code and tests written against torch catch
            raise AssertionError(
                f"Size mismatch between tensors: every tensor needs the same first "
                f"dimension; got lengths {lengths}"
            )
        raise ValueError(
            f"{owner} arrays must all have the same length (first dimension); got lengths {lengths}"
        )
    return tuple(arrays)


def _index_array(indices: Any, length: int, owner: str) -> np.ndarray:
    """Indices as a fresh 1-d ``intp`` array, each in ``[0, length)``.

    A negative index is refused, not wrapped: from a sampler it is a bug, and
    wrapping would silently load the wrong sample.
    """
    if isinstance(indices, torch.Tensor):
        indices = indices.detach().cpu().numpy()
    idx = _checked_index_array(indices)
    if idx.size == 0:
        return np.empty(0, dtype=np.intp)
    if type(indices) is list:
        # The loader's case: on a short list of ints, Python's min and max beat NumPy's.
        low, high = min(indices), max(indices)
    else:
        low, high = int(idx.min()), int(idx.max())
    idx = idx.astype(np.intp, copy=False)
    if low < 0 or high >= length:
        bad = low if low < 0 else high
        raise IndexError(
            f"index {bad} is out of range for {owner} of length {length}; a batch's "
            f"indices must be in [0, {length})"
        )
    return idx


def _checked_index_array(indices: Any) -> np.ndarray:
    idx = np.array(indices)  # a fresh copy: torch.from_numpy needs it writable
    if idx.ndim != 1:
        raise ValueError(f"indices must be one-dimensional; got shape {idx.shape}")
    if idx.size and idx.dtype.kind not in "iu":
        raise TypeError(f"indices must be integers; got dtype {idx.dtype}")
    return idx


class _NumpyView:
    """A NumPy view of a CPU tensor, remade whenever the tensor's data moves."""

    __slots__ = ("_address", "_view")

    def __init__(self, array: Array):
        self._address = -1
        self._view: np.ndarray | None = None
        self.get(array)

    def get(self, array: Array) -> np.ndarray | None:
        """The view of ``array`` as it is now, or None where NumPy cannot index it."""
        if not isinstance(array, torch.Tensor):
            return None
        address = array.data_ptr()
        if address != self._address:
            self._address, self._view = address, _numpy_view(array)
        return self._view


def _numpy_view(array: torch.Tensor) -> np.ndarray | None:
    """A NumPy view of a CPU tensor that NumPy can index, else None."""
    if array.device.type != "cpu" or array.requires_grad:
        return None
    try:
        return array.numpy()
    except (TypeError, RuntimeError):  # bfloat16 and other dtypes NumPy lacks
        return None


def _take(array: Array, view: np.ndarray | None, idx: np.ndarray, out: Any) -> Array:
    if isinstance(array, np.ndarray):
        # Indices are already checked and wrapped, so "clip" changes nothing and,
        # unlike the default "raise", writes into `out` without a buffer copy.
        # The method, not np.take: the same call without NumPy's Python wrapper (0.5 µs).
        return array.take(idx, 0, out, "clip")
    if view is not None:
        if out is None:
            return torch.from_numpy(view.take(idx, 0, None, "clip"))
        view.take(idx, 0, out.numpy(), "clip")
        return out
    index = torch.from_numpy(idx).to(device=array.device, dtype=torch.int64)
    return torch.index_select(array, 0, index, out=out)


def _unstack(batch: Array) -> list[Any]:
    return list(batch.unbind(0)) if isinstance(batch, torch.Tensor) else list(batch)


def _validate_out(arrays: tuple[Array, ...], count: int, out: Any, single: bool) -> tuple[Any, ...]:
    outs = (out,) if single else tuple(out)
    if len(outs) != len(arrays):
        raise ValueError(f"out has {len(outs)} entries; expected one per array ({len(arrays)})")
    for position, (array, dest) in enumerate(zip(arrays, outs, strict=True)):
        expected_shape = (count, *array.shape[1:])
        if not isinstance(dest, np.ndarray if isinstance(array, np.ndarray) else torch.Tensor):
            raise TypeError(
                f"out[{position}] is a {type(dest).__qualname__}; array {position} is a "
                f"{type(array).__qualname__}, so out[{position}] must be one too"
            )
        if tuple(dest.shape) != expected_shape or dest.dtype != array.dtype:
            raise ValueError(
                f"out[{position}] has shape {tuple(dest.shape)} and dtype {dest.dtype}; "
                f"expected shape {expected_shape} and dtype {array.dtype}"
            )
    return outs


def _describe_array(array: Array) -> str:
    kind = "Tensor" if isinstance(array, torch.Tensor) else "ndarray"
    return f"{kind}(shape={tuple(array.shape)}, dtype={array.dtype})"


# --- generators --------------------------------------------------------------------------------


class GeneratorDataset(IterableDataset[T_co]):
    """An iterable dataset made from a generator function, fresh every epoch.

    ``iter(ds)`` calls ``generator_fn(*args, **kwargs)`` anew, so unlike a
    generator object it can be iterated once per epoch and sent to process
    workers (``generator_fn`` must then be picklable: a module-level function).
    With ``shard=True`` each worker keeps every ``num_workers``-th item,
    starting at its own id, so every item is yielded once per epoch; each
    worker still runs the whole generator, so keep per-item work cheap or
    shard inside ``generator_fn`` with ``torch.utils.data.get_worker_info()``.

    Args:
        generator_fn: called with ``args`` and ``kwargs``; returns an iterable.
        args: positional arguments for ``generator_fn``.
        kwargs: keyword arguments for ``generator_fn``.
        shard: split the items between workers (default) or let every worker
            yield them all.

    Example::

        def read_lines(path):
            with open(path) as f:
                yield from f

        ds = GeneratorDataset(read_lines, args=("data.txt",))
    """

    def __init__(
        self,
        generator_fn: Callable[..., Iterable[T_co]],
        args: tuple[Any, ...] = (),
        kwargs: Mapping[str, Any] | None = None,
        *,
        shard: bool = True,
    ) -> None:
        if isinstance(generator_fn, Iterator) or not callable(generator_fn):
            raise TypeError(
                "GeneratorDataset needs a function that makes a new iterable each time it is "
                f"called; got a {type(generator_fn).__qualname__}. Pass the generator function "
                "itself (make_items), not its result (make_items())"
            )
        self.generator_fn = generator_fn
        self.args = tuple(args)
        self.kwargs = dict(kwargs or {})
        self.shard = shard

    def __iter__(self) -> Iterator[T_co]:
        items = iter(self.generator_fn(*self.args, **self.kwargs))
        info = torch.utils.data.get_worker_info() if self.shard else None
        if info is None or info.num_workers <= 1:
            return items
        return itertools.islice(items, info.id, None, info.num_workers)

    def __repr__(self) -> str:
        name = getattr(self.generator_fn, "__qualname__", repr(self.generator_fn))
        return f"GeneratorDataset({name}, args={self.args!r}, kwargs={self.kwargs!r}, shard={self.shard})"


# --- batch-level datasets (Keras PyDataset) ---------------------------------------------------


class BatchDataset(Dataset[Any]):
    """A dataset whose items are whole batches: Keras's ``PyDataset`` (``Sequence``).

    ``ds[i]`` returns batch ``i``: a tuple ``(x,)``, ``(x, y)`` or
    ``(x, y, sample_weight)``, a dict, or a single array (taken as ``x``).
    ``__len__`` counts batches; or define the ``num_batches`` property instead,
    returning ``None`` for an endless dataset. The loader calls
    ``on_epoch_begin()`` and ``on_epoch_end()`` in the main process, so a
    reshuffle done there reaches workers only when they are restarted per epoch.

    Args:
        workers: how many workers load batches; ``1`` with
            ``use_multiprocessing=False`` loads them in the main process.
        use_multiprocessing: processes (the dataset must pickle) instead of
            threads; threads suit I/O-bound loading.
        max_queue_size: at most this many batches are prepared ahead.

    Subclasses must call ``super().__init__(**kwargs)``; if they do not, the
    defaults are used and a ``UserWarning`` says so, as Keras does.

    Example::

        class Batches(BatchDataset):
            def __init__(self, x, y, batch_size, **kwargs):
                super().__init__(**kwargs)
                self.x, self.y, self.batch_size = x, y, batch_size

            def __len__(self):
                return math.ceil(len(self.x) / self.batch_size)

            def __getitem__(self, i):
                rows = slice(i * self.batch_size, (i + 1) * self.batch_size)
                return self.x[rows], self.y[rows]
    """

    def __init__(
        self,
        workers: int = DEFAULT_WORKERS,
        use_multiprocessing: bool = DEFAULT_USE_MULTIPROCESSING,
        max_queue_size: int = DEFAULT_MAX_QUEUE_SIZE,
    ) -> None:
        self.workers = workers
        self.use_multiprocessing = use_multiprocessing
        self.max_queue_size = max_queue_size

    @property
    def workers(self) -> int:
        """How many workers load batches."""
        fill_missing_options(self, stacklevel=2)
        return self._workers

    @workers.setter
    def workers(self, value: int) -> None:
        self._workers = validate_option("workers", value)

    @property
    def use_multiprocessing(self) -> bool:
        """Whether the workers are processes rather than threads."""
        fill_missing_options(self, stacklevel=2)
        return self._use_multiprocessing

    @use_multiprocessing.setter
    def use_multiprocessing(self, value: bool) -> None:
        self._use_multiprocessing = validate_option("use_multiprocessing", value)

    @property
    def max_queue_size(self) -> int:
        """How many batches may be prepared ahead."""
        fill_missing_options(self, stacklevel=2)
        return self._max_queue_size

    @max_queue_size.setter
    def max_queue_size(self, value: int) -> None:
        self._max_queue_size = validate_option("max_queue_size", value)

    def __getitem__(self, index: int) -> Any:
        raise NotImplementedError(
            f"{type(self).__qualname__} must define __getitem__(index) returning batch `index`"
        )

    @property
    def num_batches(self) -> int | None:
        """How many batches there are, or ``None`` for an endless dataset; ``len(self)`` by default."""
        if hasattr(self, "__len__"):
            return len(self)
        raise NotImplementedError(
            f"{type(self).__qualname__} must define __len__ or the num_batches property "
            "(an int, or None for an endless dataset)"
        )

    def __iter__(self) -> Iterator[Any]:
        """Batches ``0 .. num_batches - 1`` in order, as Keras's ``PyDataset`` yields them.

        An endless dataset (``num_batches`` is None) yields batches for ever.
        """
        count = self.num_batches
        for index in itertools.count() if count is None else range(count):
            yield self[index]

    def on_epoch_begin(self) -> None:
        """Called in the main process before the first batch of every epoch."""

    def on_epoch_end(self) -> None:
        """Called in the main process after the last batch of every epoch."""

    def __repr__(self) -> str:
        # Read the fields, not the properties: repr must not warn or fill in defaults.
        options = ", ".join(
            f"{name}={getattr(self, '_' + name)!r}"
            if hasattr(self, "_" + name)
            else f"{name}=<unset>"
            for name in ("workers", "use_multiprocessing", "max_queue_size")
        )
        return f"{type(self).__qualname__}({options})"


PyDataset = BatchDataset
"""Keras 3's name for :class:`BatchDataset`."""

Sequence = BatchDataset
"""Keras's older name for :class:`BatchDataset`."""
