"""Helpers for trainers that rebuild the loader they are given.

Lightning and Keras take a :class:`~batchloader.DataLoader` as it is (it is a
``torch.utils.data.DataLoader``), and Lightning rebuilds it as batchloader's
own under DDP. Accelerate's ``prepare`` instead builds a loader of its own
class around a new *torch* loader made from the attributes of the one it was
given: the batches come sharded and synchronised, but from torch's engine.
:func:`with_batchloader_engine` puts batchloader's engine back behind it.
"""

from __future__ import annotations

from typing import Any

from torch.utils.data import IterableDataset as _TorchIterableDataset

from .loader import DataLoader

__all__ = ["with_batchloader_engine"]

# The original loader's settings that say how to load, not what: they carry over.
_ENGINE_SETTINGS = (
    "num_workers",
    "collate_fn",
    "pin_memory",
    "timeout",
    "worker_init_fn",
    "multiprocessing_context",
    "prefetch_factor",
    "persistent_workers",
    "pin_memory_device",
    "in_order",
    "thread_pool",
)


def with_batchloader_engine(prepared: Any, original: DataLoader[Any]) -> Any:
    """Makes a loader that Accelerate prepared load its batches with batchloader's engine.

    ``prepared`` is what ``accelerator.prepare`` (or ``skip_first_batches``)
    returned for ``original``. Its torch loader is replaced by a
    :class:`~batchloader.DataLoader` over the same (sharded) dataset and batch
    sampler, with ``original``'s workers, collate function and other loading
    settings; Accelerate's sharding, device placement, RNG synchronisation and
    end-of-epoch flag are untouched. Returns ``prepared``.

    Example::

        model, optimizer, prepared = accelerator.prepare(model, optimizer, loader)
        prepared = with_batchloader_engine(prepared, loader)
    """
    base = getattr(prepared, "base_dataloader", None)
    if base is None:
        raise TypeError(
            "prepared should be a loader returned by accelerate's Accelerator.prepare or "
            f"skip_first_batches (it has a base_dataloader), got {type(prepared).__qualname__}"
        )
    if not isinstance(original, DataLoader):
        raise TypeError(
            "original should be the batchloader.DataLoader given to prepare, got "
            f"{type(original).__qualname__}"
        )
    settings = {name: getattr(original, name) for name in _ENGINE_SETTINGS}
    if isinstance(base.dataset, _TorchIterableDataset):
        batching = {"batch_size": base.batch_size, "drop_last": base.drop_last}
    else:
        batching = {"batch_sampler": base.batch_sampler}
    prepared.base_dataloader = DataLoader(
        base.dataset, generator=base.generator, **batching, **settings
    )
    return prepared
