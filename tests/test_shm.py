"""Shared-memory batches: leases, reuse, one-off segments and release, in-process."""

from __future__ import annotations

import gc
import multiprocessing

import numpy as np
import pytest
import torch

from batchloader import _shm
from tests.helpers import shm_segments

BIG = (64, 1024)  # 256 KiB of float32: above the inline threshold


@pytest.fixture
def arena():
    """Plays a worker with worker id 0 in this process, then cleans up."""
    prefix = _shm.new_prefix()
    ctx = multiprocessing.get_context("fork")
    leases = _shm.new_leases(ctx, 1)
    names = _shm.Names(ctx, 1)
    _shm.enable_worker_allocation(prefix, leases, 0, names)
    yield leases
    _shm._arena = None
    gc.collect()
    names.unlink_all()


def _send(leases, value=1.0, shape=BIG):
    """Allocates and packs one batch in the 'worker', returns its handle."""
    t = _shm.empty(shape, torch.float32)
    t.fill_(value)
    return _shm.pack(t)


def test_small_tensors_travel_inline(arena):
    """Below the threshold a tensor is carried by value, not in a segment."""
    packed = _shm.pack(torch.arange(4))
    assert isinstance(packed, _shm._InlineArray)
    assert _shm.Receiver(arena).unpack(packed).tolist() == [0, 1, 2, 3]


def test_large_tensor_is_leased_until_its_last_view_dies(arena):
    """The lease byte stays set while any view of the batch is alive."""
    handle = _send(arena, 3.0)
    assert handle.slot == 0 and arena[0] == 1
    receiver = _shm.Receiver(arena)
    batch = receiver.unpack(handle)
    row = batch[5]
    del batch
    receiver.collect()
    assert arena[0] == 1 and float(row.sum()) == 3.0 * 1024
    del row
    receiver.collect()  # the iterator's next call: no garbage collection needed
    assert arena[0] == 0


def test_released_slot_is_reused_without_a_new_segment(arena):
    """A freed slot serves the next batch of the same size: same segment name."""
    receiver = _shm.Receiver(arena)
    first = _send(arena)
    receiver.unpack(first)  # dropped at once
    receiver.collect()
    second = _send(arena, 2.0)
    assert second.name == first.name
    assert float(receiver.unpack(second)[0, 0]) == 2.0


def test_held_batches_use_distinct_slots(arena):
    """Batches the user still holds are never overwritten."""
    receiver = _shm.Receiver(arena)
    held = [receiver.unpack(_send(arena, float(k))) for k in range(4)]
    assert [float(b[0, 0]) for b in held] == [0.0, 1.0, 2.0, 3.0]


def test_one_off_segments_when_every_slot_is_leased(arena):
    """Past the slot budget a one-off segment is used and unlinked when mapped."""
    receiver = _shm.Receiver(arena)
    held = [receiver.unpack(_send(arena)) for _ in range(_shm._SLOTS_PER_WORKER)]
    extra = _send(arena, 9.0)
    assert extra.slot is None
    before = shm_segments()
    value = receiver.unpack(extra)
    assert extra.name in before and extra.name not in shm_segments()
    assert float(value[0, 0]) == 9.0 and len(held) == _shm._SLOTS_PER_WORKER


def test_release_frees_an_unopened_batch(arena):
    """A batch that will never be handed out gives its slot back."""
    handle = _send(arena)
    _shm.Receiver(arena).release(handle)
    assert arena[0] == 0


def test_numpy_arrays_come_back_as_plain_ndarrays(arena):
    """A NumPy batch crosses via a segment and arrives as np.ndarray with its dtype."""
    array = np.arange(100_000, dtype=np.int32).reshape(100, 1000)
    out = _shm.Receiver(arena).unpack(_shm.pack({"a": array}))["a"]
    assert type(out) is np.ndarray and out.dtype == np.int32
    assert np.array_equal(out, array)


def test_bfloat16_tensors_cross_through_a_segment(arena):
    """Dtypes NumPy lacks still cross: the segment is viewed as bytes."""
    t = _shm.empty(BIG, torch.bfloat16)
    t.fill_(1.5)
    out = _shm.Receiver(arena).unpack(_shm.pack(t))
    assert out.dtype == torch.bfloat16 and float(out[0, 0]) == 1.5


def test_abandoned_allocation_is_given_back(arena):
    """Segments allocated for a batch that failed are freed by abandon()."""
    _shm.empty(BIG, torch.float32)
    _shm.abandon()
    assert arena[0] == 0


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_an_exited_workers_segments_go_and_its_records_are_freed_for_the_next(method):
    """unlink_worker removes one worker's recorded files and clears its records, no one else's."""
    names = _shm.Names(multiprocessing.get_context(method), 2)
    prefix = _shm.new_prefix()
    made = {worker: f"{prefix}-w{worker}" for worker in (0, 1)}
    for worker, name in made.items():
        names.record(worker, 0, name)
        open(f"/dev/shm/{name}", "wb").close()
    try:
        assert names.unlink_worker(1) == 1
        assert shm_segments() & set(made.values()) == {made[0]}
        assert names.all() == [made[0]]
    finally:
        names.unlink_all()


class _Holder:
    """A custom batch class: packing does not walk into it."""

    def __init__(self, tensor):
        self.tensor = tensor


def test_a_batch_of_plain_containers_pickles_plainly(arena):
    """Tensors in dicts and lists become handles: the result needs no torch pickling."""
    _shm.pack({"x": [torch.ones(BIG)], "label": 3, "name": "a"})
    assert not _shm.needs_torch_pickling()


def test_an_object_the_walk_leaves_whole_goes_by_torchs_pickling(arena):
    """A custom object may hold tensors the walk cannot reach: torch's pickler shares them."""
    holder = _Holder(torch.ones(BIG))
    assert _shm.pack([holder])[0] is holder
    assert _shm.needs_torch_pickling()
