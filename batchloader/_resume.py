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

import random
from collections.abc import Mapping, Sized
from typing import Any

import numpy as np
import torch

__all__ = [
    "STATE_VERSION",
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
    _, keys, pos, has_gauss, gauss = np.random.get_state()
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
