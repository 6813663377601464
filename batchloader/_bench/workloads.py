"""The benchmark's workloads: deterministic, locally generated, picklable datasets.

Every dataset returns ``(data, index)`` for sample ``index``, and ``data`` is a
function of ``index`` alone (random crops and flips included), so what a loader
delivered can be checked against a checksum whatever its worker count.

Each workload's physical reference lives here too: :class:`PlainLoop`, the
loop ``dataset[i]`` for each index and ``np.stack`` (:func:`stack_collate`),
no loader; in one process, and (:func:`two_process_rate`) in two at once.

This module imports NumPy (and Pillow for ``jpeg``) but not torch, so the
runner can plan and prepare workloads cheaply; torch-dependent pieces import it
when called.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "AUTO_SUITE",
    "SIZES",
    "SUITE",
    "WORKLOADS",
    "BigDataset",
    "CpuDataset",
    "IoDataset",
    "JpegDataset",
    "PadDataset",
    "PlainLoop",
    "TinyDataset",
    "TrainDataset",
    "Workload",
    "build_collate",
    "build_dataset",
    "default_cache_dir",
    "memcpy_bandwidth",
    "overlap_rate",
    "prepare",
    "stack_collate",
    "two_process_rate",
]

SIZES = ("full", "quick", "smoke")
# What the suite runs by default, and the auto comparison (``--auto``; issue 22's list).
SUITE = ("tiny", "cpu", "big", "io", "jpeg", "pad")
AUTO_SUITE = ("tiny", "cpu", "big", "io", "jpeg", "train")

# Work per cpu sample: this many tanh passes over 2048 floats take ~0.5 ms on an idle 2020s core.
_CPU_ITERS = 80
_CPU_FLOATS = 2048
_IMAGE_SHAPE = (3, 224, 224)
# Latency of one io sample: a network or disk read, the regime where threads win.
_IO_LATENCY_S = 0.003
_JPEG_CROP = 224
_JPEG_QUALITY = 90
# Bumped whenever the generated images change, so stale caches are not reused.
_JPEG_VERSION = 1
_PAD_MIN_LEN, _PAD_MAX_LEN = 8, 512
_PAD_VOCAB = 30_000
_MEMCPY_REPEATS = 8
# The train workload: lighter per-sample work than cpu (~0.2 ms on an idle core), and a
# training step the consumer sleeps per batch (an accelerator step: the CPU is free meanwhile).
# One worker makes a 32-sample batch in ~7 ms, well inside the step: 1 worker suffices
# on an idle machine, 0 does not (load + step in turn), so "does auto take more than
# it needs" has an answer to compare with.
_TRAIN_ITERS = 32
_TRAIN_STEP_S = 0.020


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


class TinyDataset:
    """``n`` samples of 8 float32 values: measures per-sample overhead."""

    def __init__(self, n: int, dim: int = 8):
        self.x = _rng(1).standard_normal((n, dim), dtype=np.float32)

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.x[index], index


def tiny_arrays(n: int) -> Any:
    """The same samples as :class:`TinyDataset`, as a batched-fetch ``ArrayDataset``."""
    import torch

    import batchloader

    x = torch.from_numpy(TinyDataset(n).x)
    return batchloader.ArrayDataset(x, torch.arange(n))


class CpuDataset:
    """About 0.5 ms of NumPy work per sample: measures scaling with workers."""

    def __init__(self, n: int, iters: int = _CPU_ITERS):
        self.n, self.iters = n, iters

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        a = _rng(index).standard_normal(_CPU_FLOATS, dtype=np.float32)
        for _ in range(self.iters):
            a = np.tanh(a * np.float32(1.5) + np.float32(0.25))
        return a[:64].copy(), index


class TrainDataset(CpuDataset):
    """``cpu``'s work, lighter (~0.2 ms a sample); the consumer adds a training step per batch."""

    def __init__(self, n: int, iters: int = _TRAIN_ITERS):
        super().__init__(n, iters)


class BigDataset:
    """3x224x224 float32 samples (588 KiB each): measures moving large batches."""

    def __init__(self, n: int):
        self.n = n
        self.base = _rng(2).random(_IMAGE_SHAPE, dtype=np.float32)

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        return self.base + np.float32(index % 251), index


class IoDataset:
    """A few ms of sleep per sample: latency-bound, as reading from a network store."""

    def __init__(self, n: int, latency_s: float = _IO_LATENCY_S):
        self.n, self.latency_s = n, latency_s

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        time.sleep(self.latency_s)
        return np.full(16, index % 1009, dtype=np.float32), index


class JpegDataset:
    """JPEG files decoded with Pillow, randomly cropped and flipped, as float32 CHW.

    The crop and flip are drawn from a generator seeded by the index, so they
    do not depend on which worker loads the sample.
    """

    def __init__(self, root: str | os.PathLike[str], n: int):
        self.paths = [_jpeg_path(Path(root), k) for k in range(n)]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        from PIL import Image

        rng = _rng(index)
        with Image.open(self.paths[index]) as image:
            rgb = image.convert("RGB")
        left = int(rng.integers(0, rgb.width - _JPEG_CROP + 1))
        top = int(rng.integers(0, rgb.height - _JPEG_CROP + 1))
        rgb = rgb.crop((left, top, left + _JPEG_CROP, top + _JPEG_CROP))
        if rng.random() < 0.5:
            rgb = rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        hwc = np.asarray(rgb, dtype=np.float32)
        hwc *= np.float32(1 / 255)
        return np.ascontiguousarray(hwc.transpose(2, 0, 1)), index


class PadDataset:
    """Token sequences of 8 to 511 int64 tokens, padded per batch by the collate function."""

    def __init__(self, n: int):
        self.lengths = _rng(3).integers(_PAD_MIN_LEN, _PAD_MAX_LEN, n)

    def __len__(self) -> int:
        return len(self.lengths)

    def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
        tokens = np.arange(self.lengths[index], dtype=np.int64) * 7919 + index
        return tokens % _PAD_VOCAB, index


def _jpeg_path(root: Path, k: int) -> Path:
    return root / f"{k:05d}.jpg"


def _jpeg_image(k: int) -> np.ndarray:
    """Image ``k``: a colour gradient plus noise, 256 to 319 pixels a side."""
    rng = _rng(10_000 + k)
    height, width = (int(s) for s in rng.integers(256, 320, 2))
    y = np.linspace(0, 1, height)[:, None, None]
    x = np.linspace(0, 1, width)[None, :, None]
    phase = rng.random(3) * 6
    base = 127.5 * (1 + np.sin(rng.uniform(2, 9) * x + rng.uniform(2, 9) * y + phase))
    noisy = base + rng.normal(0, 12, (height, width, 3))
    return np.clip(noisy, 0, 255).astype(np.uint8)


def _jpeg_dir(cache_dir: Path) -> Path:
    return cache_dir / f"jpeg-v{_JPEG_VERSION}"


def make_jpegs(cache_dir: Path, n: int) -> Path:
    """Writes images ``0..n-1`` that are missing from the cache; returns their folder."""
    from PIL import Image

    root = _jpeg_dir(cache_dir)
    root.mkdir(parents=True, exist_ok=True)
    for k in range(n):
        path = _jpeg_path(root, k)
        if path.exists():
            continue
        partial = path.with_suffix(".tmp")  # a killed run leaves no truncated JPEG behind
        Image.fromarray(_jpeg_image(k)).save(partial, "JPEG", quality=_JPEG_QUALITY)
        partial.replace(path)
    return root


def default_cache_dir() -> Path:
    """Where generated files live: ``$XDG_CACHE_HOME/batchloader-bench`` (or ``~/.cache``)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "batchloader-bench"


@dataclass(frozen=True, slots=True)
class Workload:
    """One dataset the benchmark loads, and how."""

    name: str
    summary: str
    batch_size: int
    sizes: dict[str, int]  # size level -> number of samples
    latency_batches: int = 6  # batches per epoch in the time-to-first-batch runs
    step_s: float = 0.0  # the consumer's simulated training step per batch
    auto_sizes: dict[str, int] | None = None  # in the auto comparison, if not ``sizes``

    def size(self, level: str, *, auto: bool = False) -> int:
        return (self.auto_sizes if auto and self.auto_sizes else self.sizes)[level]


WORKLOADS: dict[str, Workload] = {
    w.name: w
    for w in (
        Workload("tiny", "8 float32 per sample: per-sample overhead", 64,
                 {"full": 200_000, "quick": 60_000, "smoke": 2_048}),
        Workload("cpu", "~0.5 ms of NumPy per sample: scaling with workers", 32,
                 {"full": 3_200, "quick": 960, "smoke": 96}),
        Workload("big", "3x224x224 float32 samples: moving large batches", 32,
                 {"full": 1_536, "quick": 512, "smoke": 64}),
        # In the auto comparison io epochs are longer: auto doubles the workers once a
        # window (0.4 s) shows the loop waiting, and a window does not span epochs.
        Workload("io", "3 ms sleep per sample: latency-bound", 16,
                 {"full": 960, "quick": 320, "smoke": 48},
                 auto_sizes={"full": 1_920, "quick": 960, "smoke": 48}),
        Workload("jpeg", "Pillow decode, random crop and flip", 16,
                 {"full": 512, "quick": 160, "smoke": 32}),
        Workload("pad", "8-511 int64 tokens padded per batch", 32,
                 {"full": 20_000, "quick": 6_400, "smoke": 256}),
        Workload("train", "~0.2 ms of NumPy per sample, a 20 ms training step per batch", 32,
                 {"full": 6_400, "quick": 1_920, "smoke": 128}, step_s=_TRAIN_STEP_S),
    )
}  # fmt: skip


def prepare(name: str, n: int, cache_dir: Path) -> None:
    """Generates the files a workload reads (only ``jpeg`` has any), once."""
    if name == "jpeg":
        make_jpegs(cache_dir, n)


def build_dataset(name: str, n: int, cache_dir: Path, *, batched: bool = False) -> Any:
    """Workload ``name``'s dataset of ``n`` samples; ``batched``: its ArrayDataset form."""
    if batched:
        if name != "tiny":
            raise ValueError(f"only the tiny workload has a batched form; got {name!r}")
        return tiny_arrays(n)
    builders: dict[str, Callable[[], Any]] = {
        "tiny": lambda: TinyDataset(n),
        "cpu": lambda: CpuDataset(n),
        "big": lambda: BigDataset(n),
        "io": lambda: IoDataset(n),
        "jpeg": lambda: JpegDataset(_jpeg_dir(cache_dir), n),
        "pad": lambda: PadDataset(n),
        "train": lambda: TrainDataset(n),
    }
    if name not in builders:
        raise ValueError(f"unknown workload {name!r}; choose from {sorted(builders)}")
    return builders[name]()


def build_collate(name: str) -> Any:
    """The collate function both loaders get, or None for each loader's default."""
    if name != "pad":
        return None
    import batchloader

    return batchloader.Tuple(batchloader.Pad(pad_val=0, ret_length=True), batchloader.Stack())


# --- the plain loop: the physical reference ---------------------------------------------------


def stack_collate(samples: list[Any]) -> list[Any]:
    """The plain loop's collate: each field ``np.stack``-ed (labels ``np.asarray``), as tensors.

    ``torch.from_numpy`` wraps without copying: one copy per sample, into the batch.
    """
    import torch

    return [
        torch.from_numpy(np.stack(field) if isinstance(field[0], np.ndarray) else np.asarray(field))
        for field in zip(*samples, strict=True)
    ]


class PlainLoop:
    """The physical reference: ``collate([ds[i] for i in batch])``, in this process."""

    def __init__(
        self, dataset: Any, collate: Callable[[list[Any]], Any], batch_size: int, sampler: Any
    ):
        self.dataset, self.collate, self.batch_size = dataset, collate, batch_size
        self.sampler = range(len(dataset)) if sampler is None else sampler

    def __len__(self) -> int:
        return -(-len(self.sampler) // self.batch_size)

    def __iter__(self) -> Iterator[Any]:
        indices = list(self.sampler)
        for start in range(0, len(indices), self.batch_size):
            chunk = indices[start : start + self.batch_size]
            yield self.collate([self.dataset[i] for i in chunk])


def memcpy_bandwidth(nbytes: int) -> float:
    """Bytes/s of one large copy: the floor under moving a batch between buffers."""
    source = np.ones(nbytes // 4, dtype=np.float32)
    dest = np.zeros_like(source)
    np.copyto(dest, source)  # fault the pages in first
    start = time.perf_counter()
    for _ in range(_MEMCPY_REPEATS):
        np.copyto(dest, source)
    return nbytes * _MEMCPY_REPEATS / (time.perf_counter() - start)


def _plain_timeline(dataset: Any, collate: Any, batch_size: int, out: Any) -> None:
    """One of the two processes: the whole plain loop, sending ``(time, samples)`` per batch."""
    stamps = [(time.perf_counter(), 0)]
    for batch in PlainLoop(dataset, collate, batch_size, None):
        stamps.append((time.perf_counter(), len(batch[-1])))
    out.send(stamps)


def overlap_rate(timelines: list[list[tuple[float, int]]], warmup: float) -> float:
    """Samples/s that processes running at once delivered together, past their warm-up.

    Each timeline starts with ``(start, 0)`` and has ``(arrival, samples)`` per
    batch. The window runs from the last process's end of warm-up (its first
    ``warmup`` share of batches) to the first process's end, so every process ran
    throughout; batches arriving in it are counted (one straddles each edge).
    """
    starts, ends = [], []
    for stamps in timelines:
        batches = len(stamps) - 1
        warm = min(batches - 1, max(1, int(batches * warmup)))
        starts.append(stamps[warm][0])
        ends.append(stamps[-1][0])
    low, high = max(starts), min(ends)
    if high <= low:  # too few batches to overlap: the whole span instead
        total = sum(n for stamps in timelines for _, n in stamps)
        return total / (max(ends) - min(stamps[0][0] for stamps in timelines))
    inside = sum(n for stamps in timelines for at, n in stamps[1:] if low < at <= high)
    return inside / (high - low)


def two_process_rate(dataset: Any, collate: Any, batch_size: int, warmup: float) -> float:
    """Samples/s of the plain loop run in two processes at once, each over the whole dataset.

    What this machine gives two processes doing a loader's work with no loader
    at all: the ceiling for any loader's two-worker speed.
    """
    import multiprocessing

    ctx = multiprocessing.get_context("fork")
    pipes = [ctx.Pipe(duplex=False) for _ in range(2)]
    procs = [
        ctx.Process(target=_plain_timeline, args=(dataset, collate, batch_size, w))
        for _, w in pipes
    ]
    for p in procs:
        p.start()
    timelines = [r.recv() for r, _ in pipes]
    for p in procs:
        p.join()
    return overlap_rate(timelines, warmup)
