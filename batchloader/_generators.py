"""Plain generators and iterators as data sources: sharing one between threads, and refusing processes.

A generator is single-use and cannot be copied: threads may share it only
through a lock (:func:`threadsafe`), and process workers must not get it at all
(:func:`generator_with_processes_error` says what to use instead).
"""

from __future__ import annotations

import functools
import inspect
import itertools
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar, overload

from torch.utils.data import Dataset as _TorchDataset

__all__ = [
    "ThreadSafeIterator",
    "generator_with_processes_error",
    "is_generator_like",
    "threadsafe",
]

T = TypeVar("T")


class ThreadSafeIterator(Iterator[T], Generic[T]):
    """An iterator that many threads may consume: each item goes to exactly one of them.

    ``next()`` holds a lock while it asks the wrapped iterator, so a generator
    never runs in two threads at once (which would raise ``ValueError:
    generator already executing``). Made by :func:`threadsafe`.

    Trap: it is still single-use; once exhausted it stays exhausted.
    """

    def __init__(self, iterator: Iterator[T]) -> None:
        self._iterator = iterator
        self._lock = threading.Lock()
        self._epoch: object = None
        self._taken = 0

    def __iter__(self) -> ThreadSafeIterator[T]:
        return self

    def __next__(self) -> T:
        with self._lock:
            return next(self._iterator)

    def take(self, count: int, epoch: object = None) -> tuple[int, list[T]]:
        """Up to ``count`` consecutive items, taken under the lock, and their batch number.

        Thread workers take whole batches this way, so a batch is a run of
        consecutive items and only the stream's end makes a short one. Batches
        are numbered 0, 1, ... within each ``epoch`` (any value naming it).
        """
        with self._lock:
            if epoch != self._epoch:
                self._epoch, self._taken = epoch, 0
            items = list(itertools.islice(self._iterator, count))
            number = self._taken
            if items:
                self._taken += 1
        return number, items

    def close(self) -> None:
        """Closes the wrapped generator (runs its ``finally`` blocks), if it can be closed."""
        close = getattr(self._iterator, "close", None)
        if close is not None:
            with self._lock:
                close()

    def __repr__(self) -> str:
        return f"ThreadSafeIterator({self._iterator!r})"


@overload
def threadsafe(source: Iterable[T]) -> ThreadSafeIterator[T]: ...


@overload
def threadsafe(source: Callable[..., Iterable[T]]) -> Callable[..., ThreadSafeIterator[T]]: ...


def threadsafe(source: Any) -> Any:
    """Makes an iterator, or a generator function's generators, safe to share between threads.

    The fix for Keras's ``fit_generator`` with ``workers > 1``: several
    threads pulling from one generator each get different items, and none is
    lost or repeated.

    Args:
        source: an iterable or iterator (wrapped now), or a function returning
            one, such as a generator function (decorated: every call returns a
            new :class:`ThreadSafeIterator`).

    Raises:
        TypeError: ``source`` is neither iterable nor callable.

    Example::

        @threadsafe
        def batches():
            while True:
                yield make_batch()

        shared = batches()            # a ThreadSafeIterator
        shared = threadsafe(iter(rows))   # the wrapper form

    Trap: a generator is single-use; wrap the generator function, not a
    generator, if every epoch needs a fresh one.
    """
    if isinstance(source, ThreadSafeIterator):
        return source
    if isinstance(source, Iterator):
        return ThreadSafeIterator(source)
    if not isinstance(source, type) and isinstance(source, Iterable):
        return ThreadSafeIterator(iter(source))
    if callable(source):

        @functools.wraps(source)
        def make_threadsafe(*args: Any, **kwargs: Any) -> ThreadSafeIterator[Any]:
            return ThreadSafeIterator(iter(source(*args, **kwargs)))

        return make_threadsafe
    raise TypeError(
        f"threadsafe() needs an iterable, an iterator or a generator function; got a "
        f"{type(source).__qualname__}"
    )


def is_generator_like(obj: Any) -> bool:
    """Whether ``obj`` is a single-use stream: a generator or another plain iterator.

    True for generator objects, :class:`ThreadSafeIterator`, ``iter(list)``,
    ``map``/``zip``/``itertools`` objects and other objects with ``__next__``;
    False for torch's and our datasets (even one that defines ``__next__``;
    their iteration is their own), for re-iterable containers such as lists,
    and for generator *functions* (call them, or use ``GeneratorDataset``).
    """
    return isinstance(obj, Iterator) and not isinstance(obj, _TorchDataset)


def generator_with_processes_error(obj: Any, *, num_workers: int | None = None) -> TypeError:
    """The error a loader raises when a generator or iterator meets process workers.

    Returned, not raised, so the loader raises it where the user can see it.

    Args:
        obj: the generator or iterator given as the dataset.
        num_workers: the worker count, quoted in the message when given.
    """
    kind = "a generator" if inspect.isgenerator(obj) else "an iterator"
    workers = "process workers" if num_workers is None else f"num_workers={num_workers} processes"
    return TypeError(
        f"the dataset is {kind} ({type(obj).__qualname__}), which cannot be used with "
        f"{workers}: each process would get its own copy and yield the same items again, "
        "so every sample would appear once per worker (and generators cannot be pickled "
        "for the 'spawn' or 'forkserver' start methods). Use one of: thread_pool=True, "
        "so threads share the one iterator; GeneratorDataset(make_items), which calls the "
        "generator function afresh in each worker and shards its items; an IterableDataset "
        "whose __iter__ shards with torch.utils.data.get_worker_info(); or a BatchDataset "
        "(Keras PyDataset) that returns batch i from __getitem__(i)."
    )
