"""Which indices, in which order, grouped how.

Every sampler is a deterministic function of its configuration, seed and
epoch; ``len()`` equals what one iteration yields; ``repr`` shows every option.
Each is a :class:`torch.utils.data.Sampler`, and the random ones consume
torch's random number generators exactly as torch's samplers of the same name
do: under one ``torch.manual_seed`` (or one ``torch.Generator``) both yield the
same indices.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence, Sized
from typing import Any

import torch
import torch.utils.data
from torch.utils.data import RandomSampler as _TorchRandomSampler
from torch.utils.data import SequentialSampler as _TorchSequentialSampler
from torch.utils.data import SubsetRandomSampler as _TorchSubsetRandomSampler
from torch.utils.data import WeightedRandomSampler as _TorchWeightedRandomSampler

from . import _seeding
from ._batch_sampler import BatchSampler
from ._distributed_sampler import DistributedSampler
from ._sampler_base import (
    Sampler,
    _check_bool,
    _check_generator,
    _check_int,
    _check_source,
    _check_weights,
    _describe,
    _draw_permutations,
    _draw_with_replacement,
    _EpochState,
    _length,
)
from ._typing import SizedDataset

__all__ = [
    "BatchSampler",
    "DistributedSampler",
    "FilterSampler",
    "IntervalSampler",
    "RandomSampler",
    "Sampler",
    "SequentialSampler",
    "SubsetRandomSampler",
    "WeightedRandomSampler",
]


class SequentialSampler(Sampler[int], _TorchSequentialSampler):
    """Yields ``0, 1, ..., len(data_source) - 1``, every epoch.

    Args:
        data_source: a sized dataset, or its length as an int. The length is
            read at each iteration, as torch does.

    Example::

        >>> list(SequentialSampler(4))
        [0, 1, 2, 3]
    """

    _repr_fields = ("data_source",)
    # torch types it Sized; a plain length is our addition.
    data_source: int | Sized  # type: ignore[assignment]

    def __init__(self, data_source: int | Sized) -> None:
        self.data_source = _check_source("data_source", data_source)

    def __iter__(self) -> Iterator[int]:
        return iter(range(_length(self.data_source)))

    def __len__(self) -> int:
        return _length(self.data_source)


class RandomSampler(_EpochState, Sampler[int], _TorchRandomSampler):
    """Yields a random permutation of the indices, or random draws with replacement.

    With ``seed=None`` it is torch's ``RandomSampler``, index for index, under
    the same ``torch.manual_seed`` (it takes one seed from the global RNG at
    the first ``next()``) or the same ``torch.Generator`` (advanced in place).
    With ``seed=int`` the order is a function of ``(seed, epoch)`` only. Trap:
    call :meth:`set_epoch` before each epoch, or every epoch repeats one order.

    Args:
        data_source: a sized dataset, or its length as an int.
        replacement: draw with replacement, so indices may repeat.
        num_samples: indices per epoch, default ``len(data_source)``; without
            replacement, more than the length gives permutations back to back.
        generator: a ``torch.Generator`` to draw from; excludes ``seed``.
        seed: a fixed seed (our addition); excludes ``generator``.

    Example::

        >>> sampler = RandomSampler(5, seed=0)
        >>> sorted(sampler)
        [0, 1, 2, 3, 4]
        >>> sampler.set_epoch(1)  # another order, the same on every run
    """

    _repr_fields = ("data_source", "replacement", "num_samples", "generator", "seed", "epoch")
    data_source: int | Sized  # type: ignore[assignment]  # as in SequentialSampler

    def __init__(
        self,
        data_source: int | Sized,
        replacement: bool = False,
        num_samples: int | None = None,
        generator: torch.Generator | None = None,
        *,
        seed: int | None = None,
    ) -> None:
        self.data_source = _check_source("data_source", data_source)
        self.replacement = _check_bool("replacement", replacement)
        if num_samples is not None:
            num_samples = _check_int("num_samples", num_samples, minimum=1)
        self._num_samples = num_samples
        self.generator = _check_generator(generator)
        self.seed = None if seed is None else _check_int("seed", seed)
        if generator is not None and seed is not None:
            raise ValueError("give generator or seed, not both: seed makes a generator per epoch")

    @property
    def num_samples(self) -> int:
        """Indices per epoch: ``num_samples`` if given, else the current length."""
        return _length(self.data_source) if self._num_samples is None else self._num_samples

    def __iter__(self) -> Iterator[int]:
        return self._iterate(self.epoch)

    def _iterate(self, epoch: int) -> Iterator[int]:
        n, count = _length(self.data_source), self.num_samples
        if count and not n:
            raise ValueError(f"cannot draw num_samples={count} indices from an empty data_source")
        if count:
            draw = _draw_with_replacement if self.replacement else _draw_permutations
            yield from draw(n, count, self._generator_for(epoch))

    def _generator_for(self, epoch: int) -> torch.Generator:
        if self.seed is not None:
            return torch.Generator().manual_seed(_seeding.sampler_epoch_seed(self.seed, epoch))
        return (
            self.generator if self.generator is not None else _seeding.generator_from_global_rng()
        )

    def __len__(self) -> int:
        return self.num_samples


class SubsetRandomSampler(Sampler[int], _TorchSubsetRandomSampler):
    """Yields the given indices in a random order, each once per epoch.

    Draws one ``torch.randperm`` from ``generator`` (or the global RNG) at the
    first ``next()``, as torch's ``SubsetRandomSampler`` does.

    Args:
        indices: the indices to permute, copied as ints.
        generator: a ``torch.Generator`` to draw from; default the global RNG.

    Example::

        >>> sorted(SubsetRandomSampler([7, 3, 5]))
        [3, 5, 7]
    """

    _repr_fields = ("indices", "generator")

    def __init__(self, indices: Sequence[int], generator: torch.Generator | None = None) -> None:
        if not isinstance(indices, Iterable):
            raise TypeError(f"indices should be a sequence of ints, got {_describe(indices)}")
        self.indices = tuple(_check_int(f"indices[{i}]", v, 0) for i, v in enumerate(indices))
        self.generator = _check_generator(generator)

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(len(self.indices), generator=self.generator).tolist()
        yield from (self.indices[i] for i in order)

    def __len__(self) -> int:
        return len(self.indices)


class WeightedRandomSampler(Sampler[int], _TorchWeightedRandomSampler):
    """Yields ``num_samples`` indices drawn with probability proportional to ``weights``.

    One ``torch.multinomial`` per epoch, at the first ``next()``, as torch's
    ``WeightedRandomSampler`` does.

    Args:
        weights: one non-negative weight per index, not necessarily summing to one.
        num_samples: indices per epoch.
        replacement: draw with replacement; without it ``num_samples`` may not
            exceed the count of non-zero weights.
        generator: a ``torch.Generator`` to draw from; default the global RNG.

    Example::

        >>> sampler = WeightedRandomSampler([0.0, 1.0, 3.0], num_samples=4)
        >>> len(sampler), set(sampler) <= {1, 2}
        (4, True)
    """

    _repr_fields = ("weights", "num_samples", "replacement", "generator")

    def __init__(
        self,
        weights: Sequence[float],
        num_samples: int,
        replacement: bool = True,
        generator: torch.Generator | None = None,
    ) -> None:
        self.weights = _check_weights(weights)
        self.num_samples = _check_int("num_samples", num_samples, minimum=1)
        self.replacement = _check_bool("replacement", replacement)
        self.generator = _check_generator(generator)
        nonzero = int(torch.count_nonzero(self.weights))
        if not replacement and self.num_samples > nonzero:
            raise ValueError(
                f"num_samples={self.num_samples} exceeds the {nonzero} non-zero weights, and without "
                "replacement an index is drawn at most once; lower it or pass replacement=True"
            )

    def __iter__(self) -> Iterator[int]:
        yield from torch.multinomial(
            self.weights, self.num_samples, self.replacement, generator=self.generator
        ).tolist()

    def __len__(self) -> int:
        return self.num_samples


class IntervalSampler(Sampler[int]):
    """Yields every ``interval``-th index, then, with rollover, the next offset's (MXNet).

    Args:
        length: how many indices, ``0 .. length - 1``.
        interval: the stride within one pass.
        rollover: after the pass from 0, make passes from ``1, ...,
            interval - 1`` so every index appears once; else stop after one pass.

    Example::

        >>> list(IntervalSampler(7, 3)), list(IntervalSampler(7, 3, rollover=False))
        ([0, 3, 6, 1, 4, 2, 5], [0, 3, 6])
    """

    _repr_fields = ("length", "interval", "rollover")

    def __init__(self, length: int, interval: int, rollover: bool = True) -> None:
        self.length = _check_int("length", length, minimum=0)
        self.interval = _check_int("interval", interval, minimum=1)
        self.rollover = _check_bool("rollover", rollover)

    def __iter__(self) -> Iterator[int]:
        passes = min(self.interval, self.length) if self.rollover else 1
        for start in range(passes):
            yield from range(start, self.length, self.interval)

    def __len__(self) -> int:
        return self.length if self.rollover else len(range(0, self.length, self.interval))


class FilterSampler(Sampler[int]):
    """Yields, in order, the indices ``i`` with ``fn(dataset[i])`` true (MXNet).

    ``fn`` runs once per sample, at construction; the kept indices are fixed.

    Args:
        fn: a predicate on one sample.
        dataset: a map-style dataset (``len`` and ``[i]``).

    Example::

        >>> list(FilterSampler(lambda x: x % 2 == 0, [5, 6, 7, 8]))
        [1, 3]
    """

    _repr_fields = ("fn", "dataset", "indices")

    def __init__(self, fn: Callable[[Any], object], dataset: SizedDataset[Any]) -> None:
        if not callable(fn):
            raise TypeError(f"fn should be a callable taking one sample, got {_describe(fn)}")
        if not isinstance(dataset, SizedDataset):
            raise TypeError(f"dataset should have __len__, __getitem__; got {_describe(dataset)}")
        self.fn, self.dataset = fn, dataset
        self.indices = tuple(i for i in range(len(dataset)) if fn(dataset[i]))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
