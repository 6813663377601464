"""Every random seed the loader draws or derives, and what each worker kind reseeds.

The rules, in the order an epoch meets them:

1. **The iterator's base seed.** Each ``iter(loader)`` that starts workers
   draws one int64 from the loader's ``generator`` (or torch's global RNG),
   exactly where and as torch's loader does (:func:`draw_seed`), so a seeded
   training script consumes the same random numbers with either loader. A
   persistent pool keeps the base seed it was started with.
2. **A worker's seed.** Worker ``i`` has seed ``base_seed + i`` (torch's rule,
   :func:`worker_seed`; it is ``get_worker_info().seed``). A process worker
   seeds ``random`` and torch with it when it starts, and NumPy from
   ``SeedSequence([i, base_seed])``, as torch does (:func:`seed_process_worker`).
   Then ``worker_init_fn`` runs.
3. **An epoch's seed.** ``epoch_seed(base_seed, n)`` for the ``n``-th epoch a
   pool serves (always 0 for a pool made for one epoch).
4. **A batch's seed.** ``batch_seed(epoch_seed, batch_id)``, below 2**63. A
   process worker reseeds ``random``, torch's CPU generator and NumPy with it
   before it makes that batch (:func:`reseed_for_batch`), so a batch's random
   augmentations depend on the seed and its position in the epoch, not on which
   worker made it or on ``num_workers``. A generator that ``worker_init_fn``
   seeded or otherwise changed is the user's, as in torch: it is left alone
   (:class:`Reseeding`, found by :func:`generator_states` before and after).
5. **Thread workers reseed nothing**: they share the main process's
   generators, so any reseeding would be a race with the user's code.
6. **Samplers** with ``seed=`` use ``sampler_epoch_seed(seed, epoch)``; without
   a seed or generator they take one int64 from torch's global RNG when
   iteration starts, as torch's ``RandomSampler`` does
   (:func:`generator_from_global_rng`). ``DistributedSampler`` seeds with
   ``seed + epoch`` (torch's rule, :func:`distributed_sampler_seed`), so every
   rank draws the same permutation. An iterable datapipe's shufflers get one
   seed per epoch, drawn with :func:`draw_seed`, the same in every worker.

Everything is derived with splitmix64 (:func:`mix_seed`): cheap, portable, and
unrelated outputs for neighbouring inputs.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.random  # before any fork: NumPy 2 imports it lazily, ~9 ms in each worker
import torch

__all__ = [
    "RESEED_ALL",
    "Reseeding",
    "batch_seed",
    "distributed_sampler_seed",
    "draw_seed",
    "epoch_seed",
    "generator_from_global_rng",
    "generator_states",
    "mix_seed",
    "reseed_for_batch",
    "sampler_epoch_seed",
    "seed_process_worker",
    "seeds_an_accelerator",
    "untouched",
    "worker_seed",
]

_MASK_64 = (1 << 64) - 1
_MASK_63 = (1 << 63) - 1
_GOLDEN_GAMMA = 0x9E3779B97F4A7C15
"""splitmix64's increment: consecutive inputs land far apart."""
_MIX_START = 0x243F6A8885A308D3  # pi's fraction bits: any fixed odd start would do


def _splitmix64(x: int) -> int:
    x = (x + _GOLDEN_GAMMA) & _MASK_64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK_64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK_64
    return x ^ (x >> 31)


def mix_seed(*values: int) -> int:
    """A 64-bit seed that depends on every value, in order (one splitmix64 step each)."""
    h = _MIX_START
    for value in values:
        h = _splitmix64(h ^ (value & _MASK_64))
    return h


def draw_seed(generator: torch.Generator | None) -> int:
    """One int64 from ``generator`` (or torch's global RNG), drawn as torch's loader draws it."""
    return int(torch.empty((), dtype=torch.int64).random_(generator=generator).item())


def worker_seed(base_seed: int, worker_id: int) -> int:
    """A worker's seed, ``get_worker_info().seed``: torch's ``base_seed + worker_id``."""
    return (base_seed + worker_id) % 2**64


def epoch_seed(base_seed: int, pool_epoch: int) -> int:
    """The seed of the ``pool_epoch``-th epoch a pool serves."""
    return mix_seed(base_seed, pool_epoch)


def batch_seed(epoch_seed: int, batch_id: int) -> int:
    """The seed of one batch: below 2**63, so ``torch.initial_seed()`` fits in int64."""
    return mix_seed(epoch_seed, batch_id) & _MASK_63


def sampler_epoch_seed(seed: int, epoch: int) -> int:
    """A sampler's torch seed for (seed, epoch), hashed so that (1, 0) and (0, 1) are unrelated."""
    return _splitmix64((_splitmix64(seed & _MASK_64) + epoch) & _MASK_64)


def distributed_sampler_seed(seed: int, epoch: int) -> int:
    """``DistributedSampler``'s seed for an epoch: torch's ``seed + epoch``, the same on every rank."""
    return seed + epoch


def generator_from_global_rng() -> torch.Generator:
    """A generator seeded with one int64 from torch's global RNG, as torch's RandomSampler takes it."""
    return torch.Generator().manual_seed(draw_seed(None))


def seed_process_worker(seed: int, worker_id: int, base_seed: int) -> None:
    """Seeds a new process worker's ``random``, torch and NumPy as torch's workers are seeded."""
    random.seed(seed)
    if seeds_an_accelerator():
        torch.manual_seed(seed)
    else:  # the same effect, without a stack trace per lazily seeded device (see below)
        torch.default_generator.manual_seed(seed)
    np.random.seed(np.random.SeedSequence([worker_id, base_seed % 2**63]).generate_state(4))


def seeds_an_accelerator() -> bool:
    """Whether ``torch.manual_seed`` would seed more than the CPU generator in this process.

    It also seeds each accelerator backend built into torch (CUDA, XPU, MTIA,
    MPS, a registered custom one); one not yet initialized is seeded lazily,
    and each such lazy seeding records a stack trace, which reads the source
    of every frame: about 6 ms in a new worker, on its first batch's path. A
    backend that is not built, or that a forked child cannot use (torch's
    ``_is_in_bad_fork``), gets nothing, so a CPU-only torch seeds the CPU
    generator alone. Anything this torch does not let us check counts as seeded.
    """
    try:
        built = {
            "cuda": torch.backends.cuda.is_built(),
            "xpu": torch.xpu._is_compiled(),
            "mtia": torch.mtia._is_compiled(),
            "mps": torch.backends.mps.is_built(),
        }
        for name, is_built in built.items():
            if is_built and not getattr(torch, name)._is_in_bad_fork():
                return True
        return bool(torch._C._get_privateuse1_backend_name() != "privateuseone")
    except (AttributeError, RuntimeError):
        return True


@dataclass(frozen=True, slots=True)
class Reseeding:
    """Which global generators a process worker reseeds before each batch.

    A generator that ``worker_init_fn`` seeded (or otherwise changed) is the
    user's, as in torch: batchloader leaves it alone from then on.
    """

    python: bool = True
    torch: bool = True
    numpy: bool = True


RESEED_ALL = Reseeding()
"""What a worker reseeds unless its ``worker_init_fn`` changed a generator."""


def generator_states() -> tuple[Any, ...]:
    """Comparable snapshots of the ``random``, torch and NumPy global generators."""
    np_state: Any = np.random.get_state()
    return (
        random.getstate(),
        (torch.initial_seed(), bytes(torch.get_rng_state().numpy())),
        (np_state[1].tobytes(), *np_state[2:]),
    )


def untouched(before: tuple[Any, ...], after: tuple[Any, ...]) -> Reseeding:
    """Reseed the generators whose state :func:`generator_states` found unchanged."""
    return Reseeding(*(b == a for b, a in zip(before, after, strict=True)))


def reseed_for_batch(seed: int, which: Reseeding) -> None:
    """Seeds ``random``, torch and NumPy for one batch, whichever process worker makes it."""
    if which.python:
        random.seed(seed)
    if which.torch:
        # The CPU generator only: torch.manual_seed also queues a lazy CUDA seeding,
        # recording a stack trace each time (about 0.25 ms); workers do not use CUDA.
        torch.default_generator.manual_seed(seed)
    if which.numpy:
        np.random.seed([seed & 0xFFFFFFFF, seed >> 32])
