"""``DataLoader``: a ``torch.utils.data.DataLoader`` with batchloader's engine.

The loader validates its arguments and builds the sampler chain once, keeps
every setting as the torch attribute of the same name (the one source of
truth: frameworks read, copy and assign them), and at each ``iter()`` turns
the attributes into two value objects (:class:`FetchSpec`, what workers
need; :class:`LoaderConfig`, how they run) for the iterator it picks.
"""

from __future__ import annotations

import functools
import warnings
import weakref
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
import torch.distributed
from torch.utils.data import DataLoader as _TorchDataLoader
from torch.utils.data import IterableDataset as _TorchIterableDataset
from torch.utils.data.dataloader import _DatasetKind, _InfiniteConstantSampler

from . import _arguments as args
from . import _datapipes, _loader_settings, _resume, _seeding, _tuning, _worker_memory
from ._batch_dataset import batch_dataset_options, is_batch_dataset
from ._batch_sampler import resolve_last_batch
from ._config import FetchSpec, LoaderConfig
from ._epoch import (
    EndlessSampler,
    Epoch,
    LengthCheck,
    SingleProcessIter,
    call_hook,
)
from ._generators import (
    generator_with_processes_error,
    is_generator_like,
    threadsafe,
)
from ._multiworker import MultiWorkerIter, StreamingIter
from ._pin_memory import PinMemoryIter, make_pin_fn
from ._pool import WorkerPool
from ._stats import EpochRecorder, LoaderStats
from ._typing import LastBatch, T_co
from .collate import default_collate, default_convert
from .samplers import BatchSampler, RandomSampler, SequentialSampler

__all__ = ["DataLoader"]

# torch's property: its setter checks a start method and turns a name into its context.
_TORCH_MP_CONTEXT: property = vars(_TorchDataLoader)["multiprocessing_context"]
_PIN_QUEUE_DEPTH = 2
# A setting fixed at construction beyond torch's own list (Gluon's: it is in the sampler).
_FROZEN_EXTRAS = frozenset(("last_batch",))


def _no_iterator() -> None:
    return None


def _identity(batch: Any) -> Any:
    return batch


def _weak_call(method: Callable[[], None]) -> Callable[[], None]:
    """Calls ``method`` while its object lives; afterwards, nothing."""
    ref = weakref.WeakMethod(method)

    def call() -> None:
        bound = ref()
        if bound is not None:
            bound()

    return call


class DataLoader(_resume.Resumable, _TorchDataLoader[T_co]):
    """Loads batches from a dataset; a drop-in for ``torch.utils.data.DataLoader``.

    It *is* a ``torch.utils.data.DataLoader`` (frameworks that check
    ``isinstance`` or rebuild a loader from its ``__init__`` arguments take it
    as one), with batchloader's engine behind ``__iter__``. Every torch
    argument means what it means in torch, and so does every attribute:
    ``batch_size``, ``sampler``, ``batch_sampler``, ``drop_last``, ``dataset``
    and ``persistent_workers`` cannot be set after construction; the others
    (``worker_init_fn``, ``collate_fn``, ``num_workers``, ``timeout``, ...)
    can, and take effect at the next ``iter()``.

    Beyond torch: ``last_batch`` ('keep', 'discard' or 'rollover', from MXNet
    Gluon) says what happens to an epoch's incomplete last batch, and
    ``thread_pool=True`` runs the ``num_workers`` workers as threads over the
    same dataset object.

    Example::

        loader = DataLoader(dataset, batch_size=32, shuffle=True, num_workers=2)
        for epoch in range(3):
            for images, labels in loader:
                ...
        loader.close()  # or use ``with DataLoader(...) as loader:``

    ``share_dataset=True`` gives worker processes one shared, read-only copy
    of the dataset's large Python containers (lists, tuples, dicts of plain
    objects) instead of letting each worker copy what it reads (see
    docs/memory.md); without it the loader warns, once, when such a dataset
    goes to process workers.

    Trap: with ``persistent_workers=False`` (torch's default) each epoch starts
    fresh workers; with ``True`` they live until :meth:`close`.
    """

    # torch's private attributes, which its own methods read (declared for the type checker)
    _DataLoader__multiprocessing_context: Any
    _IterableDataset_len_called: int | None  # type: ignore[assignment]  # torch types it None

    def __init__(
        self,
        dataset: Any,
        batch_size: int | None = 1,
        shuffle: bool | None = None,
        sampler: Iterable[Any] | None = None,
        batch_sampler: Iterable[list[int]] | None = None,
        num_workers: int = 0,
        collate_fn: Callable[[Any], Any] | None = None,
        pin_memory: bool = False,
        drop_last: bool = False,
        timeout: float = 0,
        worker_init_fn: Callable[[int], None] | None = None,
        multiprocessing_context: Any = None,
        generator: torch.Generator | None = None,
        *,
        prefetch_factor: int | None = None,
        persistent_workers: bool = False,
        pin_memory_device: str = "",
        in_order: bool = True,
        last_batch: str | None = None,
        thread_pool: bool = False,
        share_dataset: bool = False,
        snapshot_every_n_steps: int | None = None,
    ):
        args.check_dataset(dataset)
        args.check_flags(thread_pool=thread_pool, in_order=in_order, share_dataset=share_dataset)
        num_workers = args.resolve_auto(num_workers, "num_workers", _tuning.start_workers())
        prefetch_factor = args.resolve_auto(
            prefetch_factor, "prefetch_factor", _loader_settings.DEFAULT_PREFETCH_FACTOR
        )
        self._batch_dataset = is_batch_dataset(dataset)
        if self._batch_dataset:
            batch_size, num_workers, thread_pool, prefetch_factor = self._keras_defaults(
                dataset, batch_size, num_workers, thread_pool, prefetch_factor
            )
        iterable = isinstance(dataset, _TorchIterableDataset) or is_generator_like(dataset)
        args.check_workers(num_workers, timeout, prefetch_factor, persistent_workers)
        if _datapipes.is_iter_datapipe(dataset):
            # As torch: a datapipe's shufflers take the loader's shuffle.
            dataset, shuffle = _datapipes.set_shuffle(dataset, shuffle), None
            if num_workers > 0 and thread_pool:
                raise ValueError(
                    "a datapipe is sharded per worker process (sharding_filter), so it needs "
                    "process workers: got thread_pool=True with num_workers="
                    f"{num_workers}; use thread_pool=False or num_workers=0"
                )
        args.check_batching(
            iterable=iterable,
            batch_size=batch_size,
            shuffle=shuffle,
            sampler=sampler,
            batch_sampler=batch_sampler,
            drop_last=drop_last,
            last_batch=last_batch,
        )
        mode = resolve_last_batch(drop_last, last_batch)
        args.check_callables(collate_fn=collate_fn, worker_init_fn=worker_init_fn)
        args.check_generator(generator)
        args.check_snapshot_steps(snapshot_every_n_steps)
        if is_generator_like(dataset):
            if num_workers > 0 and not thread_pool:
                raise generator_with_processes_error(dataset)
            dataset = threadsafe(dataset)

        self.dataset = dataset
        self._iterable = iterable
        # torch's own attribute, which torch's helpers and frameworks read
        self._dataset_kind = _DatasetKind.Iterable if iterable else _DatasetKind.Map
        self.num_workers = num_workers
        if prefetch_factor is None and num_workers > 0:
            prefetch_factor = (
                _loader_settings.DEFAULT_PREFETCH_FACTOR
            )  # torch reports the default it uses
        self.prefetch_factor = prefetch_factor
        self.pin_memory = pin_memory
        self.pin_memory_device = pin_memory_device
        self.timeout = timeout
        self.worker_init_fn = worker_init_fn
        self.multiprocessing_context = multiprocessing_context  # torch's checking property
        self.in_order = in_order
        self.thread_pool = thread_pool
        self.share_dataset = share_dataset
        self._memory = _worker_memory.WorkerMemory()
        self._auto = _tuning.LoaderAuto()
        self.generator = generator
        self.sampler, self.batch_sampler = self._make_samplers(
            shuffle, sampler, batch_sampler, batch_size, mode
        )
        # As in torch: a batch_sampler decides the batches, so these say nothing.
        custom_batches = batch_sampler is not None
        self.batch_size = None if custom_batches else batch_size
        self.drop_last = False if custom_batches else mode == "discard"
        self.last_batch = last_batch if custom_batches else mode
        self.collate_fn = collate_fn or self._default_collate_fn()
        self.persistent_workers = persistent_workers
        self._pool: WorkerPool | None = None
        self._pool_epochs = 0
        self._current: Callable[[], Any] = _no_iterator
        self._iterator = None  # torch's attribute; frameworks reset it to None
        self._IterableDataset_len_called = None
        self._warned_unsharded = False
        # torchdata's argument, accepted: every state_dict() here is exact and cheap.
        self.snapshot_every_n_steps = snapshot_every_n_steps
        self._epoch: Epoch | None = None
        self._epochs_started = 0
        self._resume_state: dict[str, Any] | None = None
        self._resume_pool: tuple[int, int] | None = None
        self._DataLoader__initialized = True
        self._check_worker_count()

    @property
    def multiprocessing_context(self) -> Any:
        """The start method's context, or None: the one the program set, else ``'fork'``."""
        return self._DataLoader__multiprocessing_context

    @multiprocessing_context.setter
    def multiprocessing_context(self, value: Any) -> None:
        try:  # torch's checks and words, which turn a name into its context
            _TORCH_MP_CONTEXT.__set__(self, value)
        except (ValueError, TypeError) as e:
            raise type(e)(f"{e}; got multiprocessing_context={value!r}") from None

    def __setattr__(self, name: str, value: Any) -> None:
        if name in _FROZEN_EXTRAS and self._DataLoader__initialized:
            raise ValueError(
                f"{name} attribute should not be set after {type(self).__name__} is "
                f"initialized (it is part of the batch sampler); got {name}={value!r}"
            )
        super().__setattr__(name, value)  # torch's check of its own frozen attributes

    # -- construction -------------------------------------------------------------

    def _keras_defaults(
        self,
        dataset: Any,
        batch_size: Any,
        num_workers: int,
        thread_pool: bool,
        prefetch_factor: Any,
    ) -> tuple[Any, int, bool, Any]:
        """A batch dataset yields whole batches and brings its own worker options."""
        if batch_size not in (None, 1):
            raise ValueError(
                f"{type(dataset).__qualname__} yields whole batches, so batch_size must be "
                f"None, got batch_size={batch_size!r}; set the batch size inside the dataset"
            )
        options = batch_dataset_options(dataset)
        self._num_batches = options.num_batches
        if num_workers == 0 and options.num_workers > 0:
            num_workers = options.num_workers
            thread_pool = options.thread_pool
            if prefetch_factor is None:
                prefetch_factor = options.prefetch_factor
        return None, num_workers, thread_pool, prefetch_factor

    def _make_samplers(
        self, shuffle: Any, sampler: Any, batch_sampler: Any, batch_size: Any, mode: LastBatch
    ) -> tuple[Any, Any]:
        if self._iterable:
            # torch's placeholders: the dataset decides the order; they only say how it batches.
            sampler = _InfiniteConstantSampler()
            if batch_size is None:
                return sampler, None
            return sampler, BatchSampler(sampler, batch_size, last_batch=mode)
        if sampler is None:
            sampler = self._default_sampler(bool(shuffle))
        if batch_sampler is not None:
            return sampler, batch_sampler
        if batch_size is None:
            return sampler, None
        return sampler, BatchSampler(sampler, batch_size, last_batch=mode)

    def _default_sampler(self, shuffle: bool) -> Any:
        if self._batch_dataset:
            if self._num_batches is None:
                if shuffle:
                    raise ValueError("shuffle=True needs a finite batch dataset (num_batches=None)")
                return EndlessSampler()
            size = self._num_batches
            return (
                RandomSampler(size, generator=self.generator)
                if shuffle
                else SequentialSampler(size)
            )
        if shuffle:
            return RandomSampler(self.dataset, generator=self.generator)
        return SequentialSampler(self.dataset)

    def _default_collate_fn(self) -> Callable[[Any], Any]:
        if self._batch_dataset:
            return _identity
        return default_convert if self.batch_sampler is None else default_collate

    def _check_sharding(self) -> None:
        """Warns once if every rank of a process group would load the whole dataset."""
        if self._warned_unsharded:
            return
        message = _loader_settings.sharding_warning(self)
        if message is not None:
            self._warned_unsharded = True
            warnings.warn(message, UserWarning, stacklevel=3)

    def _check_worker_count(self) -> None:
        auto = isinstance(self.num_workers, _tuning.AutoCount)  # auto keeps to its own budget
        if self.num_workers > 0 and not self.thread_pool and not auto:
            self.check_worker_number_rationality()  # torch's warning, in torch's words

    # -- iteration ------------------------------------------------------------------

    # Our iterators are not torch's _BaseDataLoaderIter; callers only iterate them.
    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        auto_note = _loader_settings.auto_epoch_workers(self)
        spec, config = _loader_settings.settings(self)
        previous = self._current()
        if config.persistent_workers and previous is not None:
            previous.close()
        self._end_epoch()  # an epoch left early ends when the next one begins
        resume, self._resume_state = self._resume_state, None
        if resume is not None:
            self._restore(resume)
        epoch = Epoch(
            self._snapshot() if resume is None else resume["snapshot"],
            *self._resume_position(resume),
            hooks=self.dataset if self._batch_dataset else None,
            sampler=self.sampler,
        )
        epoch.stats = EpochRecorder(
            self._epochs_started, _loader_settings.stats_settings(self, config)
        )
        if auto_note:
            epoch.stats.decisions.append(f"0.00 s: {config.num_workers} workers ({auto_note})")
        self._epochs_started += 1
        self._epoch = epoch
        if self._batch_dataset:
            call_hook(self.dataset, "on_epoch_begin")  # before workers start on the epoch
        if config.num_workers > 0:
            self._check_worker_count()
        self._check_sharding()
        if self._iterable:
            self._resume_streams(epoch, resume)
        iterator = self._make_iterator(spec, config, epoch)
        if (
            resume is not None
            and "process_rng" in resume
            and isinstance(iterator, SingleProcessIter)
        ):
            iterator.draw_indices()  # the epoch's draws first, from the epoch's start state
            _resume.set_process_rng(resume["process_rng"])
        pin_fn = make_pin_fn(config.pin_memory_device, stacklevel=3) if config.pin_memory else None
        if pin_fn is not None:
            # The workers already keep max_in_flight batches ready; two pinned ones suffice.
            iterator = PinMemoryIter(iterator, pin_fn, queue_depth=_PIN_QUEUE_DEPTH)
        iterator = self._epoch_iterator(iterator, epoch, resume)
        if self._iterable and self._IterableDataset_len_called is not None:
            iterator = LengthCheck(iterator, self, config.num_workers)
        # Weakly: an abandoned epoch's iterator must be collectable, to free its workers.
        self._current = weakref.ref(iterator)
        return iterator

    def _reusable_pool(self, spec: FetchSpec, config: LoaderConfig) -> WorkerPool | None:
        """The persistent pool, if it is alive and made for these settings; else closes it."""
        pool = self._pool
        if pool is None:
            return None
        if not (pool.closed or pool.broken) and pool.serves(spec, config):
            return pool
        pool.close()
        self._pool = None
        return None

    def _new_pool(self, config: LoaderConfig, spec: FetchSpec, base_seed: int) -> WorkerPool:
        capacity = self._auto.capacity(config, iterable=self._iterable)
        # The iterator starts the workers, under its own failure handling (see _begin).
        return WorkerPool(config, spec, base_seed, capacity=capacity, start=False)

    def _make_iterator(self, spec: FetchSpec, config: LoaderConfig, epoch: Epoch) -> Any:
        pool = self._reusable_pool(spec, config) if config.persistent_workers else None
        resumed_pool, self._resume_pool = self._resume_pool, None
        if config.persistent_workers and pool is None and resumed_pool is not None:
            # As in the saved run: this epoch's pool already existed, so no seed is drawn.
            pool = self._pool = self._new_pool(config, spec, resumed_pool[0])
            self._pool_epochs = resumed_pool[1]
        shared_seed = None
        if _datapipes.is_iter_datapipe(spec.dataset):
            # torch's one seed per epoch for a datapipe's shufflers, the same in every worker.
            shared_seed = _seeding.draw_seed(self.generator)
        if pool is None:
            # torch draws the workers' base seed here, for every iterator.
            base_seed = _seeding.draw_seed(self.generator)
        if config.num_workers == 0:
            return SingleProcessIter(spec, self._index_sampler, shared_seed, epoch=epoch)
        if config.persistent_workers:
            if pool is None:
                pool = self._pool = self._new_pool(config, spec, base_seed)
                self._pool_epochs = 0
            owns = False
            epoch_seed = _seeding.epoch_seed(pool.base_seed, self._pool_epochs)
            self._pool_epochs += 1
        else:
            pool, owns = self._new_pool(config, spec, base_seed), True
            epoch_seed = _seeding.epoch_seed(base_seed, 0)
        if self._iterable:
            stream = StreamingIter(
                config,
                pool,
                owns_pool=owns,
                stats=epoch.stats,
                shared_seed=shared_seed,
                resume_states=dict(epoch.worker_states) or None,
                first_worker=0 if epoch.last_worker is None else epoch.last_worker + 1,
            )
            epoch.stream_log = stream.log
            return stream
        iterator = MultiWorkerIter(
            config,
            pool,
            iter(self._index_sampler),
            owns_pool=owns,
            epoch_seed=epoch_seed,
            skip=epoch.prefix,
            done=frozenset(epoch.ahead),
            stats=epoch.stats,
            tuner=self._auto.tuner(config, pool.num_workers, pool.prefetch),
            on_change=functools.partial(_loader_settings.remember_auto, weakref.ref(self)),
        )
        epoch.log = iterator.log
        if iterator.tunes:
            # Weakly: the loader keeps its latest epoch, and must not keep an abandoned
            # iterator (and so its workers) alive through it.
            epoch.tune = _weak_call(iterator.tune)
        return iterator

    @property
    def stats(self) -> LoaderStats | None:
        """What the running (or latest) epoch did, and whether the loop waited for data.

        ``None`` before the first ``iter()``. ``print(loader.stats)`` gives a
        table, ``loader.stats.as_dict()`` a flat dict for loggers, and
        ``loader.stats.verdict`` one line naming the bottleneck (docs/tuning.md).
        """
        return None if self._epoch is None else self._epoch.stats.snapshot()

    def __len__(self) -> int:
        if self._iterable:
            length = len(self.dataset)  # TypeError for unsized datasets, as in torch
            self._IterableDataset_len_called = length
            if self.batch_size is None:
                return length
            full, rest = divmod(length, self.batch_size)
            return full + (1 if rest and not self.drop_last else 0)
        return len(self._index_sampler)

    # -- lifetime -------------------------------------------------------------------

    def _end_epoch(self) -> None:
        if self._epoch is not None:
            self._epoch.end()

    def close(self) -> None:
        """Stops the current epoch's iterator and every worker; idempotent.

        For a batch dataset, also ends its epoch (``on_epoch_end``) if one was left early.
        """
        iterator = self._current()
        if iterator is not None:
            iterator.close()
        self._current = _no_iterator
        self._end_epoch()
        if self._pool is not None:
            self._pool.close()
            self._pool = None
        self._memory.close()

    def __enter__(self) -> DataLoader[T_co]:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        pool = getattr(self, "_pool", None)
        if pool is None or pool.closed:
            return
        iterator = self._current()
        if iterator is not None and iterator.adopt_pool():
            return  # a live epoch still uses the workers; it ends them when it ends
        warnings.warn(
            "DataLoader with persistent_workers=True was never closed; call close() or use "
            "it as a context manager",
            ResourceWarning,
            stacklevel=2,
        )
        self.close()

    def __repr__(self) -> str:
        return (
            f"DataLoader(dataset={type(self.dataset).__qualname__}, batch_size={self.batch_size}, "
            f"num_workers={self.num_workers}, last_batch={self.last_batch!r}, "
            f"thread_pool={self.thread_pool}, persistent_workers={self.persistent_workers})"
        )
