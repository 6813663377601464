"""What a loader's ``state_dict`` holds, and putting it back: resuming mid-epoch exactly.

A state is plain data (ints, strings, lists, dicts)::

    {"version": 1,
     "config":   what must match to resume (batch size, last-batch mode, length, ...),
     "snapshot": what the epoch started from (below),
     "skip":     batches 0 .. skip-1 of that epoch were handed out,
     "done":     and these later ones too (out-of-order delivery)}

A snapshot holds the random state the epoch draws from (the loader's
``generator``, or torch's global one), the state of the (batch) sampler when
the epoch began (the rollover carry, a sampler's epoch), a persistent pool's
base seed and epoch count, an endless batch dataset's position, and the
dataset's own ``state_dict()`` if it has one (torchdata's protocol). Restoring
it and drawing the epoch again gives the same index lists and the same
per-batch seeds; the batches already handed out are left out without loading
a sample.
"""

from __future__ import annotations

import itertools
import random
import warnings
from collections.abc import Mapping, Sized
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from ._epoch import EndlessSampler, Epoch, Tracked
from ._generators import ThreadSafeIterator
from ._tuning import AutoCount

if TYPE_CHECKING:
    from ._pool import WorkerPool

__all__ = [
    "STATE_VERSION",
    "Resumable",
    "check_state",
    "config",
    "process_rng",
    "restore",
    "set_process_rng",
    "snapshot",
]

STATE_VERSION = 1


def _rng_state(generator: torch.Generator | None) -> dict[str, str]:
    state = torch.get_rng_state() if generator is None else generator.get_state()
    return {
        "of": "torch" if generator is None else "generator",
        "state": state.numpy().tobytes().hex(),
    }


def _set_rng_state(generator: torch.Generator | None, saved: Mapping[str, str]) -> None:
    state = torch.frombuffer(bytearray.fromhex(saved["state"]), dtype=torch.uint8).clone()
    if generator is None:
        torch.set_rng_state(state)
    else:
        generator.set_state(state)


def process_rng() -> dict[str, Any]:
    """The process's global generators (torch, NumPy, Python) as plain data.

    With ``num_workers=0`` a dataset's random augmentations come from these;
    saved with the position and put back after the resumed epoch has drawn
    its indices, the augmentations after the position repeat too.
    """
    numpy_state = np.random.get_state()
    if not isinstance(numpy_state, tuple):  # a dict: the global bit generator is not MT19937
        raise ValueError(
            "cannot save NumPy's global random state: it is not MT19937 "
            "(np.random.set_bit_generator was called)"
        )
    _, keys, pos, has_gauss, gauss = numpy_state
    version, internal, gauss_next = random.getstate()
    return {
        "torch": torch.get_rng_state().numpy().tobytes().hex(),
        "numpy": {"keys": keys.tobytes().hex(), "pos": int(pos), "has_gauss": int(has_gauss),
                  "gauss": float(gauss)},
        "random": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
    }  # fmt: skip


def set_process_rng(saved: Mapping[str, Any]) -> None:
    """Puts back what :func:`process_rng` returned."""
    torch.set_rng_state(
        torch.frombuffer(bytearray.fromhex(saved["torch"]), dtype=torch.uint8).clone()
    )
    numpy_state = saved["numpy"]
    keys = np.frombuffer(bytes.fromhex(numpy_state["keys"]), dtype=np.uint32).copy()
    np.random.set_state(
        ("MT19937", keys, numpy_state["pos"], numpy_state["has_gauss"], numpy_state["gauss"])
    )
    python = saved["random"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))


def _state_of(obj: Any) -> Any:
    state_dict = getattr(obj, "state_dict", None)
    return state_dict() if callable(state_dict) else None


def snapshot(
    *,
    generator: torch.Generator | None,
    index_sampler: Any,
    dataset: Any,
    pool: tuple[int, int] | None,
    endless_position: int | None,
) -> dict[str, Any]:
    """What the next epoch starts from; cheap enough for every epoch (a few microseconds)."""
    return {
        "rng": _rng_state(generator),
        "sampler": _state_of(index_sampler),
        "dataset": _state_of(dataset),
        "pool": None if pool is None else {"base_seed": pool[0], "epochs": pool[1]},
        "endless_position": endless_position,
    }


def restore(
    saved: Mapping[str, Any], *, generator: torch.Generator | None, index_sampler: Any, dataset: Any
) -> None:
    """Puts back the random state, the sampler's and the dataset's state of a snapshot."""
    _set_rng_state(generator, saved["rng"])
    if saved["sampler"] is not None and hasattr(index_sampler, "load_state_dict"):
        index_sampler.load_state_dict(saved["sampler"])
    if saved["dataset"] is not None and hasattr(dataset, "load_state_dict"):
        dataset.load_state_dict(saved["dataset"])


class Resumable:
    """``state_dict`` and ``load_state_dict`` of the DataLoader, kept beside its iteration.

    A mixin of :class:`~batchloader.DataLoader`: it reads the loader's
    settings and its current :class:`~batchloader._epoch.Epoch`, and leaves
    ``_resume_state`` (and ``_resume_pool``) for the next ``iter()``.
    """

    # Set by the DataLoader (annotations only: the mixin defines none of them).
    dataset: Any
    sampler: Any
    generator: torch.Generator | None
    num_workers: int
    thread_pool: bool
    persistent_workers: bool
    _index_sampler: Any  # a property of torch's DataLoader
    _iterable: bool
    _pool: WorkerPool | None
    _pool_epochs: int
    _epoch: Epoch | None
    _resume_state: dict[str, Any] | None
    _resume_pool: tuple[int, int] | None

    def state_dict(self) -> dict[str, Any]:
        """Where the loader is: after the last batch handed out, as plain data.

        A loader built with the same arguments continues from there after
        :meth:`load_state_dict`: the rest of the epoch is the same batches,
        index for index and with the same per-batch seeds, and the epochs after
        it are those of the uninterrupted run. torchdata's ``StatefulDataLoader``
        API; see docs/resume.md.

        Example::

            torch.save({"model": model.state_dict(), "loader": loader.state_dict()}, path)
            ...
            loader.load_state_dict(torch.load(path)["loader"])
            for batch in loader:  # goes on after the last batch handed out
                ...
        """
        if isinstance(self.dataset, ThreadSafeIterator):
            raise TypeError(
                "a loader over a generator cannot be resumed: the generator cannot be "
                "rewound or saved; use a map-style dataset, or an IterableDataset that "
                "can start from a position"
            )
        if self._resume_state is not None:  # loaded, not yet iterated
            return dict(self._resume_state)
        epoch = self._epoch
        if epoch is None or epoch.finished:
            snapshot, skip, done = self._snapshot(), 0, []
        else:
            snapshot, skip, done = epoch.snapshot, epoch.prefix, sorted(epoch.ahead)
        state = {
            "version": STATE_VERSION,
            "config": config(self),
            "snapshot": snapshot,
            "skip": skip,
            "done": done,
        }
        if self.num_workers == 0 and not self._iterable:
            # The main process loads: its generators are the augmentations' (see docs/resume.md).
            state["process_rng"] = process_rng()
        if isinstance(self.num_workers, AutoCount):
            # What num_workers="auto" settled on: the resumed loader starts there.
            state["auto"] = {"num_workers": int(self.num_workers)}
        if epoch is not None and not epoch.finished and epoch.worker_states:
            # A stateful iterable dataset: each process worker's state after its last batch.
            state["streams"] = {
                "num_workers": self.num_workers,
                "states": [[w, s] for w, s in sorted(epoch.worker_states.items())],
                "last_worker": epoch.last_worker,
            }
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Makes the next ``iter()`` continue from ``state_dict`` (see :meth:`state_dict`).

        Raises:
            ValueError: the state comes from another version of batchloader, or
                from a loader built otherwise (it says what differs).
        """
        check_state(state_dict, config(self))
        self._resume_state = dict(state_dict)
        auto = state_dict.get("auto")
        if auto is not None and isinstance(self.num_workers, AutoCount):
            self.num_workers = AutoCount(auto["num_workers"])

    def _snapshot(self) -> dict[str, Any]:
        pool = self._pool
        kept: tuple[int, int] | None = None  # a persistent pool the next epoch reuses
        if pool is not None and not (pool.closed or pool.broken) and self.persistent_workers:
            kept = (pool.base_seed, self._pool_epochs)
        return snapshot(
            generator=self.generator,
            index_sampler=self._index_sampler,
            dataset=self.dataset,
            pool=kept,
            endless_position=getattr(self.sampler, "position", None)
            if isinstance(self.sampler, EndlessSampler)
            else None,
        )

    def _restore(self, state: dict[str, Any]) -> None:
        snapshot = state["snapshot"]
        restore(
            snapshot,
            generator=self.generator,
            index_sampler=self._index_sampler,
            dataset=self.dataset,
        )
        if snapshot["endless_position"] is not None and isinstance(self.sampler, EndlessSampler):
            self.sampler.position = snapshot["endless_position"]
        pool = snapshot["pool"]
        if pool is not None and self.persistent_workers:
            if self._pool is not None:
                self._pool.close()
                self._pool = None
            self._resume_pool = (pool["base_seed"], pool["epochs"])

    def _resume_position(self, state: dict[str, Any] | None) -> tuple[int, frozenset[int]]:
        if state is None or self._iterable:  # a stream is resumed by reading (_epoch_iterator)
            return 0, frozenset()
        return state["skip"], frozenset(state["done"])

    def _resume_streams(self, epoch: Epoch, state: dict[str, Any] | None) -> None:
        """Gives a resumed epoch its workers' dataset states, where they can be used."""
        streams = None if state is None else state.get("streams")
        if streams is None or streams["num_workers"] != self.num_workers or self.thread_pool:
            return
        epoch.worker_states = {int(w): s for w, s in streams["states"]}
        epoch.last_worker = streams["last_worker"]

    def _epoch_iterator(self, source: Any, epoch: Epoch, state: dict[str, Any] | None) -> Any:
        iterator = Tracked(source, epoch)
        if state is not None and epoch.worker_states:  # each worker starts from its own state
            epoch.prefix = state["skip"]
            return iterator
        if state is not None and self._iterable and state["skip"]:
            warnings.warn(
                f"resuming an iterable dataset by reading and dropping the {state['skip']} "
                "batches already delivered (it has no position to restore)",
                UserWarning,
                stacklevel=3,
            )
            for _ in itertools.islice(iterator, state["skip"]):
                pass
        return iterator


def config(loader: Any) -> dict[str, Any]:
    """What a state depends on: a loader built otherwise cannot resume from it."""
    dataset = loader.dataset
    sized = isinstance(dataset, Sized) and not loader._iterable
    return {
        "dataset": type(dataset).__qualname__,
        "length": len(dataset) if sized else None,
        "batch_size": loader.batch_size,
        "last_batch": loader.last_batch,
        "drop_last": loader.drop_last,
        "sampler": type(loader.sampler).__qualname__,
        "batch_sampler": type(loader.batch_sampler).__qualname__,
        "generator": loader.generator is not None,
    }


def check_state(state: Any, expected_config: Mapping[str, Any]) -> None:
    """Refuses a state from another version or another loader configuration, naming what differs."""
    if not isinstance(state, Mapping) or "version" not in state:
        raise ValueError(
            "state_dict should be a dict made by DataLoader.state_dict(), got "
            f"{type(state).__qualname__}"
        )
    if state["version"] != STATE_VERSION:
        raise ValueError(
            f"state_dict is version {state['version']!r}; this batchloader reads version "
            f"{STATE_VERSION}"
        )
    saved = state.get("config", {})
    differ = [
        f"{key}: saved {saved.get(key)!r}, now {value!r}"
        for key, value in expected_config.items()
        if saved.get(key) != value
    ]
    if differ:
        raise ValueError(
            "state_dict comes from a loader built differently, so it cannot resume this one: "
            + "; ".join(differ)
        )
