"""Resuming mid-epoch with state_dict()/load_state_dict(): the same batches, the same randomness."""

from __future__ import annotations

import io
import json
import warnings

import numpy as np
import pytest
import torch

from batchloader import ArrayDataset, DataLoader
from tests.helpers import EndlessBatches, RangeDataset


class Augmented(RangeDataset):
    """Sample i is (i, a random number drawn from torch's global generator): an augmentation."""

    def __getitem__(self, i):
        return i, torch.rand(())


class Counting(RangeDataset):
    """Counts the samples it loads (in the main process)."""

    def __init__(self, n):
        super().__init__(n)
        self.loaded = 0

    def __getitem__(self, i):
        self.loaded += 1
        return i


def _loader(dataset=None, **options):
    options.setdefault("batch_size", 4)
    options.setdefault("shuffle", True)
    return DataLoader(
        dataset or Augmented(42), generator=torch.Generator().manual_seed(7), **options
    )


def _as_lists(batches):
    return [[t.tolist() for t in b] if isinstance(b, list | tuple) else b.tolist() for b in batches]


def _run(options, epochs=3, stop_at=None):
    """Epochs of a loader; with stop_at=(epoch, k), also the state after k batches of that epoch."""
    loader = _loader(**options)
    seen, state = [], None
    for epoch in range(epochs):
        for k, batch in enumerate(loader):
            seen.append(batch)
            if stop_at == (epoch, k + 1):
                state = loader.state_dict()
    loader.close()
    return _as_lists(seen), state


def _resume(options, state, stop_at, epochs=3):
    loader = _loader(**options)
    loader.load_state_dict(state)
    seen = []
    for _ in range(epochs - stop_at[0]):
        seen.extend(loader)
    loader.close()
    return _as_lists(seen)


CONFIGS = {
    "w0": {"num_workers": 0},
    "w2": {"num_workers": 2},
    "w3": {"num_workers": 3},
    "threads": {"num_workers": 2, "thread_pool": True},
    "out-of-order": {"num_workers": 2, "in_order": False},
    "persistent": {"num_workers": 2, "persistent_workers": True},
    "discard": {"num_workers": 2, "last_batch": "discard"},
    "rollover": {"num_workers": 2, "last_batch": "rollover"},
    "rollover-w0": {"num_workers": 0, "last_batch": "rollover"},
}


# Per-batch seeds make process workers' augmentations repeat; the main process and thread
# workers draw from your process's generators, which a checkpoint of yours restores.
RESEEDED = {"w0", "rollover-w0", "w2", "w3", "out-of-order", "persistent", "discard", "rollover"}


def _indices(batches):
    return [b[0] for b in batches]


@pytest.mark.parametrize("name", CONFIGS)
def test_resumed_batches_equal_the_uninterrupted_run(name):
    options = CONFIGS[name]
    stop_at = (1, 4)  # after 4 batches of the second epoch (the first one's rollover carried)
    whole, state = _run(options, stop_at=stop_at)
    rest = _resume(options, state, stop_at)
    assert len(whole) - len(rest) == _batches_before(options, stop_at)
    tail = whole[len(whole) - len(rest) :]
    if not options.get("in_order", True):  # the same batches, in whichever order they finish
        rest, tail = sorted(rest), sorted(tail)
    if name in RESEEDED:
        assert rest == tail
    else:
        assert _indices(rest) == _indices(tail)


def _batches_before(options, stop_at):
    per_epoch = {"keep": 11, "discard": 10, "rollover": 10}[options.get("last_batch", "keep")]
    return per_epoch * stop_at[0] + stop_at[1]


def test_augmentations_are_bit_identical_after_resuming_with_process_workers():
    options = {"num_workers": 2}
    whole, state = _run(options, stop_at=(0, 3))
    rest = _resume(options, state, (0, 3))
    random_parts = [b[1] for b in rest]
    assert random_parts == [b[1] for b in whole[3:]]


def test_the_worker_count_may_change_between_save_and_resume():
    whole, state = _run({"num_workers": 2}, stop_at=(0, 5))
    assert _resume({"num_workers": 3}, state, (0, 5)) == whole[5:]


def test_batches_handed_out_before_the_state_are_not_loaded_again():
    dataset = Counting(400)
    loader = DataLoader(dataset, batch_size=4)
    it = iter(loader)
    for _ in range(90):
        next(it)
    state = loader.state_dict()
    fresh = Counting(400)
    resumed = DataLoader(fresh, batch_size=4)
    resumed.load_state_dict(state)
    rest = [b.tolist() for b in resumed]
    assert rest[0] == [360, 361, 362, 363] and len(rest) == 10
    assert fresh.loaded == 40  # only the 10 batches after the state


def test_a_state_is_plain_data_that_json_and_torch_save_keep():
    loader = _loader(num_workers=2)
    it = iter(loader)
    next(it)
    state = loader.state_dict()
    assert json.loads(json.dumps(state)) == state
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    assert torch.load(buffer, weights_only=True) == state
    loader.close()


def test_a_state_from_a_loader_built_otherwise_is_refused_naming_what_differs():
    state = _loader().state_dict()
    with pytest.raises(ValueError, match=r"batch_size: saved 4, now 5"):
        _loader(batch_size=5).load_state_dict(state)
    with pytest.raises(ValueError, match="version"):
        _loader().load_state_dict({**state, "version": 99})


def test_a_finished_epoch_resumes_at_the_next_one():
    whole, _ = _run({"num_workers": 0}, epochs=2)
    loader = _loader(num_workers=0)
    list(loader)
    state = loader.state_dict()
    resumed = _loader(num_workers=0)
    resumed.load_state_dict(state)
    assert _indices(_as_lists(list(resumed))) == _indices(whole[11:])


def test_an_iterable_dataset_resumes_by_reading_past_what_was_delivered():
    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            return iter(range(10))

    loader = DataLoader(Stream(), batch_size=2)
    it = iter(loader)
    next(it), next(it)
    state = loader.state_dict()
    resumed = DataLoader(Stream(), batch_size=2)
    resumed.load_state_dict(state)
    with pytest.warns(UserWarning, match="reading and dropping the 2 batches"):
        rest = [b.tolist() for b in resumed]
    assert rest == [[4, 5], [6, 7], [8, 9]]


def test_a_generator_cannot_be_resumed():
    loader = DataLoader(iter(range(10)), batch_size=2)
    with pytest.raises(TypeError, match="generator cannot be"):
        loader.state_dict()


def test_an_endless_batch_dataset_resumes_at_the_next_batch():
    loader = DataLoader(EndlessBatches(), batch_size=None)
    for _, _batch in zip(range(5), loader, strict=False):
        pass
    state = loader.state_dict()
    resumed = DataLoader(EndlessBatches(), batch_size=None)
    resumed.load_state_dict(state)
    assert [int(x[0]) for _, (x,) in zip(range(3), resumed, strict=False)] == [5, 6, 7]


def test_an_array_dataset_resumes_through_its_batched_fetch():
    data = np.arange(50)
    loader = DataLoader(
        ArrayDataset(data), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(1)
    )
    whole = [b.tolist() for b in loader]
    loader = DataLoader(
        ArrayDataset(data), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(1)
    )
    it = iter(loader)
    next(it), next(it)
    resumed = DataLoader(
        ArrayDataset(data), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(99)
    )
    resumed.load_state_dict(loader.state_dict())
    assert [b.tolist() for b in resumed] == whole[2:]


def test_snapshot_every_n_steps_is_accepted_and_checked():
    assert DataLoader(range(4), snapshot_every_n_steps=5).snapshot_every_n_steps == 5
    with pytest.raises(ValueError, match="snapshot_every_n_steps=0"):
        DataLoader(range(4), snapshot_every_n_steps=0)


def test_state_dict_does_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _loader().state_dict()


class Positioned(torch.utils.data.IterableDataset):
    """torchdata's protocol: a stream that can say where it is and start from there."""

    def __init__(self, n=20):
        self.n, self.start, self.position = n, 0, 0

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        wid, count = (0, 1) if info is None else (info.id, info.num_workers)
        self.position = self.start
        for i in range(self.start, self.n):
            if i % count == wid:
                self.position = i + 1
                yield i

    def state_dict(self):
        return {"position": self.position}

    def load_state_dict(self, state):
        self.start = state["position"]


def test_a_stateful_iterable_dataset_resumes_each_worker_from_its_own_state():
    whole = [int(x) for x in DataLoader(Positioned(), batch_size=None, num_workers=2)]
    loader = DataLoader(Positioned(), batch_size=None, num_workers=2)
    it = iter(loader)
    first = [int(next(it)) for _ in range(5)]
    state = loader.state_dict()
    assert "streams" in state and json.loads(json.dumps(state)) == state
    resumed = DataLoader(Positioned(), batch_size=None, num_workers=2)
    resumed.load_state_dict(state)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no reading and dropping
        rest = [int(x) for x in resumed]
    assert first + rest == whole
