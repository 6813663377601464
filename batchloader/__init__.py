"""batchloader: a drop-in ``torch.utils.data.DataLoader`` with Gluon and Keras extras.

Every public name is importable from here, and reports this package as its
module (``batchloader.ShmFullError`` in a traceback, not the private module
that defines it). The submodules without an underscore are public too; each
one's ``__all__`` is a subset of this one.
"""

from __future__ import annotations

from ._errors import LoaderTimeoutError, WorkerDiedError, WorkerError
from ._pin_memory import pin_batch, pin_memory_supported
from ._sharing import LargeContainer, find_large_containers, share_dataset
from ._shm import ShmFullError
from ._stats import LoaderStats
from ._worker import get_worker_info
from .collate import (
    Dict,
    List,
    Pad,
    Stack,
    Tuple,
    default_collate,
    default_convert,
    numpy_collate,
)
from .datasets import (
    ArrayDataset,
    BatchDataset,
    Dataset,
    GeneratorDataset,
    IterableDataset,
    PyDataset,
    Sequence,
    TensorDataset,
    threadsafe,
)
from .device import DevicePrefetcher, to_device
from .distributed import ShardedIterableDataset, ShardInfo, shard_info, split_by_rank_and_worker
from .frameworks import with_batchloader_engine
from .loader import DataLoader
from .samplers import (
    BatchSampler,
    DistributedSampler,
    FilterSampler,
    IntervalSampler,
    RandomSampler,
    Sampler,
    SequentialSampler,
    SubsetRandomSampler,
    WeightedRandomSampler,
)
from .shared import SharedDict, SharedList

__version__ = "0.1.0"

__all__ = [
    "ArrayDataset",
    "BatchDataset",
    "BatchSampler",
    "DataLoader",
    "Dataset",
    "DevicePrefetcher",
    "Dict",
    "DistributedSampler",
    "FilterSampler",
    "GeneratorDataset",
    "IntervalSampler",
    "IterableDataset",
    "LargeContainer",
    "List",
    "LoaderStats",
    "LoaderTimeoutError",
    "Pad",
    "PyDataset",
    "RandomSampler",
    "Sampler",
    "Sequence",
    "SequentialSampler",
    "ShardInfo",
    "ShardedIterableDataset",
    "SharedDict",
    "SharedList",
    "ShmFullError",
    "Stack",
    "SubsetRandomSampler",
    "TensorDataset",
    "Tuple",
    "WeightedRandomSampler",
    "WorkerDiedError",
    "WorkerError",
    "default_collate",
    "default_convert",
    "find_large_containers",
    "get_worker_info",
    "numpy_collate",
    "pin_batch",
    "pin_memory_supported",
    "shard_info",
    "share_dataset",
    "split_by_rank_and_worker",
    "threadsafe",
    "to_device",
    "with_batchloader_engine",
]


def _report_public_module() -> None:
    """Names users import from here say so in reprs, tracebacks, pickles and docs (as httpx does)."""
    for name in __all__:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith(__name__ + "."):
            obj.__module__ = __name__


_report_public_module()
