"""Which indices, in which order, grouped how.

Every sampler is a deterministic function of its configuration, seed and
epoch; ``len()`` equals what one iteration yields; ``repr`` shows every option.
Each is a :class:`torch.utils.data.Sampler`, and the random ones consume
torch's random number generators exactly as torch's samplers of the same name
do: under one ``torch.manual_seed`` (or one ``torch.Generator``) both yield the
same indices.
"""

from __future__ import annotations

import abc
import itertools
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Sized
from typing import Any

import torch
import torch.distributed as dist
import torch.utils.data

from ._typing import LastBatch, SizedDataset, T_co

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

_RANDINT_CHUNK = 32
"""torch's RandomSampler draws with-replacement indices 32 at a time; drawing
the same chunks keeps a shared generator's stream identical to torch's."""

_LAST_BATCH_MODES = ("keep", "discard", "rollover")
_REPR_ITEMS = 6  # a longer sequence shows only its head in a repr
_INT_KINDS = {None: "an integer", 0: "a non-negative integer", 1: "a positive integer"}

_MASK_64 = (1 << 64) - 1
_GOLDEN_GAMMA = 0x9E3779B97F4A7C15
"""splitmix64's increment: consecutive inputs land far apart."""


# --- validation ---------------------------------------------------------------


def _describe(value: object) -> str:
    text = repr(value)
    return f"{text if len(text) <= 60 else text[:57] + '...'} ({type(value).__name__})"


def _check_int(name: str, value: object, minimum: int | None = None, kind: str = "") -> int:
    kind = kind or _INT_KINDS[minimum]
    if isinstance(value, bool) or not hasattr(type(value), "__index__"):
        raise TypeError(f"{name} should be {kind}, got {_describe(value)}")
    try:
        number = operator.index(value)
    except TypeError as e:  # a float tensor has __index__ but refuses it
        raise TypeError(f"{name} should be {kind}, got {_describe(value)}") from e
    if minimum is not None and number < minimum:
        raise ValueError(f"{name} should be {kind}, got {number}")
    return number


def _check_bool(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} should be a bool (True or False), got {_describe(value)}")
    return value


def _check_source(name: str, value: object) -> int | Sized:
    if isinstance(value, Sized):
        return value
    return _check_int(name, value, 0, kind="a sized object (__len__) or a non-negative int")


def _check_generator(value: object) -> torch.Generator | None:
    if value is not None and not isinstance(value, torch.Generator):
        raise TypeError(f"generator should be a torch.Generator or None, got {_describe(value)}")
    return value


def _check_weights(weights: object) -> torch.Tensor:
    try:
        tensor = torch.as_tensor(weights, dtype=torch.double).clone()
    except (TypeError, ValueError, RuntimeError) as e:
        raise TypeError(
            f"weights should be a 1-d sequence of numbers, got {_describe(weights)}"
        ) from e
    if tensor.dim() != 1:
        raise ValueError(f"weights should be 1-d, got shape {tuple(tensor.shape)}")
    if not (bool(torch.isfinite(tensor).all()) and bool((tensor >= 0).all())):
        raise ValueError(f"weights should be finite and non-negative, got {_show(tensor)}")
    if not bool((tensor > 0).any()):
        raise ValueError(f"weights should include a positive weight, got {_show(tensor)}")
    return tensor


def _length(data_source: int | Sized) -> int:
    return data_source if isinstance(data_source, int) else len(data_source)


# --- seeding and drawing --------------------------------------------------------


def _splitmix64(x: int) -> int:
    x = (x + _GOLDEN_GAMMA) & _MASK_64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK_64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK_64
    return x ^ (x >> 31)


def _epoch_seed(seed: int, epoch: int) -> int:
    """A 64-bit torch seed for (seed, epoch), hashed so that (1, 0) and (0, 1) are unrelated."""
    return _splitmix64((_splitmix64(seed & _MASK_64) + epoch) & _MASK_64)


def _generator_from_global_rng() -> torch.Generator:
    # torch's RandomSampler takes one int64 from the global RNG when iteration
    # starts; taking it the same way keeps both streams equal.
    seed = int(torch.empty((), dtype=torch.int64).random_().item())
    return torch.Generator().manual_seed(seed)


def _draw_with_replacement(n: int, count: int, generator: torch.Generator) -> Iterator[int]:
    # torch always makes the trailing (possibly empty) call; so do we.
    for size in [_RANDINT_CHUNK] * (count // _RANDINT_CHUNK) + [count % _RANDINT_CHUNK]:
        yield from torch.randint(n, (size,), dtype=torch.int64, generator=generator).tolist()


def _draw_permutations(n: int, count: int, generator: torch.Generator) -> Iterator[int]:
    # Whole permutations, then a prefix of one more, which torch draws even
    # when the prefix is empty: that draw advances a shared generator.
    for take in [n] * (count // n) + [count % n]:
        yield from torch.randperm(n, generator=generator).tolist()[:take]


# --- repr -------------------------------------------------------------------------


def _show(value: object) -> str:
    """How an option appears in a repr: short, and never a whole dataset."""
    if isinstance(value, torch.Generator):
        return "<torch.Generator>"
    if isinstance(value, torch.utils.data.Sampler):
        return repr(value)
    if isinstance(value, (tuple, torch.Tensor)):  # indices, weights, carried: ours to show
        return _show_items(value.tolist() if isinstance(value, torch.Tensor) else list(value))
    if isinstance(value, Sized) and not isinstance(value, str):
        return f"<{type(value).__name__} of length {len(value)}>"
    if callable(value):
        return getattr(value, "__qualname__", type(value).__name__)
    return repr(value)


def _show_items(items: list[Any]) -> str:
    if len(items) <= _REPR_ITEMS:
        return repr(items)
    return f"[{', '.join(map(repr, items[: _REPR_ITEMS - 1]))}, ...] (length {len(items)})"


# --- samplers ---------------------------------------------------------------------


class Sampler(torch.utils.data.Sampler[T_co], abc.ABC):
    """Base class of batchloader's samplers: an iterable of indices.

    A subclass implements ``__iter__`` and, where the count is known,
    ``__len__`` (equal to what one iteration yields), and names the
    attributes ``repr`` shows in ``_repr_fields``. Being a
    :class:`torch.utils.data.Sampler`, it works in torch's ``DataLoader``.
    """

    _repr_fields: tuple[str, ...] = ()

    @abc.abstractmethod
    def __iter__(self) -> Iterator[T_co]: ...

    def __repr__(self) -> str:
        options = ", ".join(f"{name}={_show(getattr(self, name))}" for name in self._repr_fields)
        return f"{type(self).__name__}({options})"


class _EpochState:
    """``set_epoch`` and a resumable state for samplers whose order is fixed by the epoch."""

    epoch: int = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch that the next iteration yields."""
        self.epoch = _check_int("epoch", epoch, minimum=0)

    def state_dict(self) -> dict[str, Any]:
        """The epoch: what the next iteration depends on."""
        return {"epoch": self.epoch}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if not isinstance(state, Mapping) or "epoch" not in state:
            raise ValueError(
                f"state should be a mapping with an 'epoch' key, got {_describe(state)}"
            )
        self.set_epoch(state["epoch"])


class SequentialSampler(Sampler[int]):
    """Yields ``0, 1, ..., len(data_source) - 1``, every epoch.

    Args:
        data_source: a sized dataset, or its length as an int. The length is
            read at each iteration, as torch does.

    Example::

        >>> list(SequentialSampler(4))
        [0, 1, 2, 3]
    """

    _repr_fields = ("data_source",)

    def __init__(self, data_source: int | Sized) -> None:
        self.data_source = _check_source("data_source", data_source)

    def __iter__(self) -> Iterator[int]:
        return iter(range(_length(self.data_source)))

    def __len__(self) -> int:
        return _length(self.data_source)


class RandomSampler(_EpochState, Sampler[int]):
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
            return torch.Generator().manual_seed(_epoch_seed(self.seed, epoch))
        return self.generator if self.generator is not None else _generator_from_global_rng()

    def __len__(self) -> int:
        return self.num_samples


class SubsetRandomSampler(Sampler[int]):
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
        self.indices = tuple(_check_int(f"indices[{i}]", v) for i, v in enumerate(indices))
        self.generator = _check_generator(generator)

    def __iter__(self) -> Iterator[int]:
        order = torch.randperm(len(self.indices), generator=self.generator).tolist()
        yield from (self.indices[i] for i in order)

    def __len__(self) -> int:
        return len(self.indices)


class WeightedRandomSampler(Sampler[int]):
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


class DistributedSampler(_EpochState, Sampler[int]):
    """Yields this rank's share of the indices; the same indices as torch's ``DistributedSampler``.

    All ranks draw one permutation seeded with ``seed + epoch`` (torch's
    arithmetic), pad it by repeating its start until each rank gets
    ``ceil(n / num_replicas)`` (or trim to ``n // num_replicas`` each with
    ``drop_last``), and deal it out. Trap: call :meth:`set_epoch` before each
    epoch on every rank, or every epoch repeats one order::

        n=7, num_replicas=3, order p0..p6, padded with p0 p1
        rank 0: p0 p3 p6      rank 1: p1 p4 p0      rank 2: p2 p5 p1

    Args:
        dataset: a sized dataset, or its length as an int; read once.
        num_replicas: number of ranks; default the process group's world size.
        rank: this rank, ``0 .. num_replicas - 1``; default the group rank.
        shuffle: permute before dealing, else deal ``0 .. n-1`` in order.
        seed: the seed all ranks share.
        drop_last: trim instead of pad.

    Example::

        >>> [list(DistributedSampler(5, 2, rank, shuffle=False)) for rank in (0, 1)]
        [[0, 2, 4], [1, 3, 0]]
    """

    _repr_fields = ("dataset", "num_replicas", "rank", "shuffle", "seed", "drop_last", "epoch")

    def __init__(
        self,
        dataset: int | Sized,
        num_replicas: int | None = None,
        rank: int | None = None,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = False,
    ) -> None:
        self.dataset = _check_source("dataset", dataset)
        self.num_replicas = _check_int("num_replicas", _from_group("num_replicas", num_replicas), 1)
        self.rank = _check_int("rank", _from_group("rank", rank), minimum=0)
        if self.rank >= self.num_replicas:
            raise ValueError(
                f"rank should be in [0, {self.num_replicas - 1}] for "
                f"num_replicas={self.num_replicas}, got {self.rank}"
            )
        self.shuffle = _check_bool("shuffle", shuffle)
        self.seed = _check_int("seed", seed)
        self.drop_last = _check_bool("drop_last", drop_last)
        self._n = _length(self.dataset)
        padded = self._n if drop_last else self._n + self.num_replicas - 1
        self.num_samples = padded // self.num_replicas
        self.total_size = self.num_samples * self.num_replicas

    def __iter__(self) -> Iterator[int]:
        if self.shuffle:
            generator = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(self._n, generator=generator).tolist()
        else:
            order = list(range(self._n))
        # Position k of the padded order holds order[k % n]; a rank takes every
        # num_replicas-th position from its own.
        positions = range(self.rank, self.total_size, self.num_replicas)
        return iter([order[k % self._n] for k in positions])

    def __len__(self) -> int:
        return self.num_samples


def _from_group(name: str, value: int | None) -> object:
    if value is not None:
        return value
    if not (dist.is_available() and dist.is_initialized()):
        raise ValueError(
            f"{name} is None and no torch.distributed process group is initialized: pass "
            "num_replicas= and rank=, or call torch.distributed.init_process_group() first"
        )
    return dist.get_world_size() if name == "num_replicas" else dist.get_rank()


def _resolve_last_batch(drop_last: object, last_batch: object) -> LastBatch:
    _check_bool("drop_last", drop_last)
    if last_batch is None:
        return "discard" if drop_last else "keep"
    if not isinstance(last_batch, str) or last_batch not in _LAST_BATCH_MODES:
        raise ValueError(
            f"last_batch should be 'keep', 'discard' or 'rollover', got {last_batch!r}"
        )
    if drop_last and last_batch != "discard":
        raise ValueError(
            f"drop_last=True means last_batch='discard' and contradicts last_batch={last_batch!r}; "
            "give one of them"
        )
    return last_batch  # type: ignore[return-value]


class BatchSampler(Sampler[list[int]]):
    """Groups a sampler's indices into lists of ``batch_size``.

    ``last_batch`` says what happens to an epoch's incomplete last batch:
    ``'keep'`` yields it short, ``'discard'`` drops it, ``'rollover'``
    carries it to the front of the next epoch's first batch (MXNet Gluon)::

        batch_size=4, 10 indices per epoch (a0..a9, then b0..b9), 'rollover'

        epoch 0: [a0 a1 a2 a3] [a4 a5 a6 a7]  a8 a9 ──┐ carried, len 2
                                                      ▼
        epoch 1: [a8 a9 b0 b1] [b2 b3 b4 b5] [b6 b7 b8 b9]    len 3, nothing carried

    With rollover, ``len()`` is what the next iteration yields, so it depends
    on the carry. The carry is replaced when an iteration hands out its last
    batch (the sampler is read one batch ahead to know which is last); an
    iteration abandoned earlier leaves it. Keep one rollover iteration live.

    Args:
        sampler: any iterable of indices (ours, torch's, a list or range);
            ``len()`` needs it sized. A one-shot iterator serves one epoch.
        batch_size: indices per batch.
        drop_last: torch's flag; True means ``last_batch='discard'``.
        last_batch: ``'keep'``, ``'discard'`` or ``'rollover'``; default from
            ``drop_last``, which it may not contradict.

    Example::

        >>> batches = BatchSampler(range(5), 2, last_batch="rollover")
        >>> list(batches), len(batches), list(batches)
        ([[0, 1], [2, 3]], 3, [[4, 0], [1, 2], [3, 4]])
    """

    _repr_fields = ("sampler", "batch_size", "last_batch", "carried", "epoch")

    def __init__(
        self,
        sampler: Iterable[int],
        batch_size: int,
        drop_last: bool = False,
        *,
        last_batch: LastBatch | None = None,
    ) -> None:
        if not (hasattr(sampler, "__iter__") or hasattr(sampler, "__getitem__")):
            raise TypeError(
                f"sampler should be an iterable of indices (a Sampler, list or range), "
                f"got {_describe(sampler)}; to batch 0..n-1 pass range(n)"
            )
        self.sampler = sampler
        self.batch_size = _check_int("batch_size", batch_size, minimum=1)
        self.last_batch: LastBatch = _resolve_last_batch(drop_last, last_batch)
        self.epoch = 0
        self.carried: tuple[int, ...] = ()
        """The rollover remainder that will start the next epoch."""

    @property
    def drop_last(self) -> bool:
        """torch's view of ``last_batch``: True for ``'discard'``."""
        return self.last_batch == "discard"

    def __iter__(self) -> Iterator[list[int]]:
        if self.last_batch == "rollover":
            return self._iter_rollover()
        return self._iter_plain(keep_tail=self.last_batch == "keep")

    def _iter_plain(self, keep_tail: bool) -> Iterator[list[int]]:
        indices = iter(self.sampler)
        while batch := list(itertools.islice(indices, self.batch_size)):
            if len(batch) == self.batch_size or keep_tail:
                yield batch

    def _iter_rollover(self) -> Iterator[list[int]]:
        stream = itertools.chain(self.carried, self.sampler)
        batch = list(itertools.islice(stream, self.batch_size))
        while len(batch) == self.batch_size:
            following = list(itertools.islice(stream, self.batch_size))
            if len(following) < self.batch_size:
                self.carried = tuple(following)  # before the epoch's last batch goes out
            yield batch
            batch = following
        self.carried = tuple(batch)

    def __len__(self) -> int:
        if not isinstance(self.sampler, Sized):
            raise TypeError(
                f"len() needs a sized sampler; {type(self.sampler).__name__} has no __len__"
            )
        n, size = len(self.sampler), self.batch_size
        if self.last_batch == "keep":
            return -(-n // size)
        return (n + len(self.carried)) // size  # nothing is carried unless rolling over

    def set_epoch(self, epoch: int) -> None:
        """Record the epoch and pass it on to the sampler if it has ``set_epoch``."""
        self.epoch = _check_int("epoch", epoch, minimum=0)
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(self.epoch)

    def state_dict(self) -> dict[str, Any]:
        """The epoch, the carried remainder, and the sampler's state if it has one."""
        state: dict[str, Any] = {"epoch": self.epoch, "carried": list(self.carried)}
        if hasattr(self.sampler, "state_dict"):
            state["sampler"] = self.sampler.state_dict()
        return state

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""
        if not isinstance(state, Mapping) or not {"epoch", "carried"} <= state.keys():
            raise ValueError(
                f"state should be a mapping with 'epoch', 'carried'; got {_describe(state)}"
            )
        carried = tuple(state["carried"])
        if len(carried) >= self.batch_size or (carried and self.last_batch != "rollover"):
            raise ValueError(
                f"state['carried'] holds {len(carried)} indices, but must be shorter than "
                f"batch_size={self.batch_size}, and empty unless last_batch='rollover' (is {self.last_batch!r})"
            )
        epoch = _check_int("state['epoch']", state["epoch"], minimum=0)
        if "sampler" in state and hasattr(self.sampler, "load_state_dict"):
            self.sampler.load_state_dict(state["sampler"])
        self.epoch, self.carried = epoch, carried
