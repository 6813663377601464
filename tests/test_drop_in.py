"""batchloader as a drop-in: the torch behaviours that torch's own test suite pins.

Each test here failed before batchloader's DataLoader became a torch
DataLoader; together they cover what ``../shared/torch-suite`` checks with
torch's own file, without that file.
"""

from __future__ import annotations

import os
import random
import signal

import pytest
import torch
import torch.utils.data

import batchloader
from batchloader import (
    DataLoader,
    DistributedSampler,
    LoaderTimeoutError,
    RandomSampler,
    TensorDataset,
    WorkerDiedError,
    default_collate,
)
from tests.helpers import RangeDataset, SlowDataset, assert_no_leaks, child_pids, shm_segments


class FailsAtTwo(RangeDataset):
    def __getitem__(self, i):
        if i == 2:
            raise KeyError(f"sample {i}")
        return i


class InitialSeed(RangeDataset):
    def __getitem__(self, i):
        return torch.initial_seed()


class Segfaults(RangeDataset):
    def __getitem__(self, i):
        os.kill(os.getpid(), signal.SIGSEGV)


class NestedSamples(RangeDataset):
    layout = torch.jagged

    def __getitem__(self, i):
        parts = [torch.full((i + 1,), float(i)), torch.zeros(2)]
        return torch.nested.nested_tensor(parts, layout=self.layout)


class StridedNestedSamples(NestedSamples):
    layout = torch.strided


class SelfIterating(torch.utils.data.IterableDataset):
    """An iterable dataset that is its own iterator, as in torch's tests."""

    def __init__(self, n):
        self.n, self.i = n, 0

    def __iter__(self):
        return self

    def __next__(self):
        if self.i >= self.n:
            raise StopIteration
        self.i += 1
        return torch.tensor(self.i)


def _seed_torch(worker_id):
    torch.manual_seed(12345)


def _add_thousand(worker_id):
    info = batchloader.get_worker_info()
    info.dataset.offset = 1000


class Offset(RangeDataset):
    offset = 0

    def __getitem__(self, i):
        return i + self.offset


def _skip_errors(iterator, error_type):
    seen = []
    while True:
        try:
            seen.append(int(next(iterator)))
        except error_type:
            continue
        except StopIteration:
            return seen


# -- it is a torch DataLoader ---------------------------------------------------------------


def test_loader_is_a_torch_dataloader_and_generic():
    loader = DataLoader(RangeDataset(3))
    assert isinstance(loader, torch.utils.data.DataLoader)
    assert DataLoader[int] is not None


def test_loader_construction_does_not_call_torchs_init(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("torch's DataLoader.__init__ was called")

    monkeypatch.setattr(torch.utils.data.DataLoader, "__init__", refuse)
    assert len(DataLoader(RangeDataset(4), batch_size=2)) == 2


# -- silent wrong results --------------------------------------------------------------------


@pytest.mark.parametrize("context", ["forkserver", "spawn"])
def test_tensor_dataset_batches_are_right_with_a_pickling_start_method(context):
    data = torch.randn(40, 2, 3)
    dataset = TensorDataset(data, torch.arange(40))
    loader = DataLoader(dataset, batch_size=4, num_workers=2, multiprocessing_context=context)
    for i, (x, y) in enumerate(loader):
        assert torch.equal(x, data[4 * i : 4 * i + 4]) and torch.equal(
            y, torch.arange(4 * i, 4 * i + 4)
        )
    assert torch.equal(dataset.get_batch([0, 1])[0], data[:2])  # the main process's copy too


def test_get_batch_follows_a_tensor_moved_into_shared_memory():
    data = torch.randn(10, 3)
    dataset = TensorDataset(data)
    data.share_memory_()  # moves the data and frees the storage a cached view would read
    torch.randn(1000, 1000)  # reuse freed memory
    assert torch.equal(dataset.get_batch([0, 1])[0], data[:2])


def test_a_temporary_persistent_loader_yields_every_batch():
    children, segments = child_pids(), shm_segments()
    batches = [int(b) for b in DataLoader(RangeDataset(10), num_workers=2, persistent_workers=True)]
    assert batches == list(range(10))
    assert_no_leaks(children, segments)


@pytest.mark.parametrize(
    "options",
    [
        {"num_workers": 0},
        {"num_workers": 2},
        {"num_workers": 2, "thread_pool": True},
        {"num_workers": 2, "in_order": False},
        {"num_workers": 2, "persistent_workers": True},
    ],
    ids=["main", "processes", "threads", "out-of-order", "persistent"],
)
def test_after_a_worker_error_the_epoch_goes_on(options):
    loader = DataLoader(FailsAtTwo(10), **options)
    assert sorted(_skip_errors(iter(loader), KeyError)) == [0, 1, 3, 4, 5, 6, 7, 8, 9]
    loader.close()


def test_after_an_iterable_worker_error_its_stream_ends_and_the_others_go_on():
    class Breaks(torch.utils.data.IterableDataset):
        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            for i in range(info.id, 8, 2):
                if i == 3:
                    raise ValueError("broken record")
                yield i

    assert sorted(
        _skip_errors(iter(DataLoader(Breaks(), batch_size=None, num_workers=2)), ValueError)
    ) == [0, 1, 2, 4, 6]


# -- seeding ---------------------------------------------------------------------------------


def test_a_seed_set_in_worker_init_fn_is_what_the_dataset_sees():
    loader = DataLoader(InitialSeed(8), batch_size=2, num_workers=2, worker_init_fn=_seed_torch)
    assert [batch.tolist() for batch in loader] == [[12345, 12345]] * 4


def test_seeds_a_dataset_can_see_fit_in_int64():
    for seed in range(20):
        loader = DataLoader(
            InitialSeed(6),
            batch_size=3,
            num_workers=2,
            generator=torch.Generator().manual_seed(seed),
        )
        for batch in loader:  # collating them would overflow at 2**63 and above
            assert batch.dtype == torch.int64 and bool((batch >= 0).all())


def test_generators_not_touched_by_worker_init_fn_are_still_reseeded_per_batch():
    class Draws(RangeDataset):
        def __getitem__(self, i):
            return random.random()

    def run(num_workers):
        loader = DataLoader(
            Draws(8),
            batch_size=2,
            num_workers=num_workers,
            worker_init_fn=_seed_torch,
            generator=torch.Generator().manual_seed(3),
        )
        return torch.cat(list(loader))

    assert torch.equal(run(1), run(2))


# -- tensors that cannot go through shared memory --------------------------------------------


@pytest.mark.filterwarnings("ignore:The PyTorch API of nested tensors:UserWarning")
@pytest.mark.parametrize("dataset", [NestedSamples, StridedNestedSamples])
def test_nested_tensors_travel_from_process_workers(dataset):
    batches = list(DataLoader(dataset(2), batch_size=None, num_workers=2))
    assert all(batch.is_nested for batch in batches)
    assert torch.equal(batches[1].unbind()[0], torch.ones(2))


def test_default_collate_refuses_nested_tensors_in_torchs_words():
    nested = NestedSamples(2)[0]
    with pytest.raises(RuntimeError, match="not currently supported by the default collate_fn"):
        default_collate([nested, nested])


# -- attributes after construction -----------------------------------------------------------


@pytest.mark.parametrize(
    "name",
    [
        "batch_size",
        "batch_sampler",
        "sampler",
        "drop_last",
        "dataset",
        "persistent_workers",
        "last_batch",
    ],
)
def test_fixed_attributes_cannot_be_set_after_construction(name):
    loader = DataLoader(RangeDataset(4), num_workers=1)
    with pytest.raises(
        ValueError, match=f"{name} attribute should not be set after DataLoader is initialized"
    ):
        setattr(loader, name, None)


def test_an_assigned_worker_init_fn_runs_at_the_next_epoch():
    loader = DataLoader(Offset(4), batch_size=None, num_workers=2)
    assert sorted(int(x) for x in loader) == [0, 1, 2, 3]
    loader.worker_init_fn = _add_thousand
    assert sorted(int(x) for x in loader) == [1000, 1001, 1002, 1003]


def test_an_assigned_worker_init_fn_restarts_persistent_workers():
    with DataLoader(Offset(4), batch_size=None, num_workers=2, persistent_workers=True) as loader:
        assert sorted(int(x) for x in loader) == [0, 1, 2, 3]
        loader.worker_init_fn = _add_thousand
        assert sorted(int(x) for x in loader) == [1000, 1001, 1002, 1003]


def test_an_assigned_collate_fn_and_worker_count_take_effect():
    loader = DataLoader(RangeDataset(4), batch_size=2)
    loader.collate_fn = lambda samples: tuple(samples)
    loader.num_workers = 2
    loader.thread_pool = True
    assert list(loader) == [(0, 1), (2, 3)]


def test_attributes_match_torchs_for_a_batch_sampler_and_an_iterable_dataset():
    ours = DataLoader(RangeDataset(4), batch_sampler=[[0, 1], [2, 3]])
    torchs = torch.utils.data.DataLoader(RangeDataset(4), batch_sampler=[[0, 1], [2, 3]])
    assert (
        (ours.batch_size, ours.drop_last) == (torchs.batch_size, torchs.drop_last) == (None, False)
    )
    stream = DataLoader(SelfIterating(3), batch_size=2)
    assert stream._auto_collation and type(stream.sampler).__name__ == "_InfiniteConstantSampler"


# -- torch's words ----------------------------------------------------------------------------


def test_a_segfaulting_worker_is_reported_in_torchs_words():
    with pytest.raises(
        WorkerDiedError,
        match=r"DataLoader worker \(pid \d+\) is killed by signal: Segmentation fault",
    ):
        list(DataLoader(Segfaults(4), num_workers=1))


def test_an_integer_timeout_is_reported_as_an_integer():
    with pytest.raises(LoaderTimeoutError, match=r"DataLoader timed out after 1 seconds"):
        next(iter(DataLoader(SlowDataset(2, delay_s=3), num_workers=1, timeout=1)))


def test_an_invalid_rank_is_reported_in_torchs_words():
    with pytest.raises(
        ValueError, match=r"Invalid rank 3, rank should be in the interval \[0, 2\]"
    ):
        DistributedSampler(range(10), num_replicas=3, rank=3)


def test_a_non_bool_replacement_is_reported_in_torchs_words():
    with pytest.raises(
        TypeError, match="replacement should be a boolean value, but got replacement=0"
    ):
        RandomSampler(range(10), replacement=0)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"num_workers": -1}, "num_workers option should be non-negative"),
        ({"timeout": -1}, "timeout option should be non-negative"),
        (
            {"prefetch_factor": 2},
            "prefetch_factor option could only be specified in multiprocessing",
        ),
        ({"persistent_workers": True}, "persistent_workers option needs num_workers > 0"),
        ({"sampler": [0], "shuffle": True}, "sampler option is mutually exclusive with shuffle"),
        (
            {"batch_sampler": [[0]], "drop_last": True},
            "batch_sampler option is mutually exclusive with batch_size, shuffle, sampler, and drop_last",
        ),
        (
            {"batch_size": None, "drop_last": True},
            "batch_size=None option disables auto-batching and is mutually exclusive with drop_last",
        ),
    ],
)
def test_constructor_checks_use_torchs_words(kwargs, words):
    with pytest.raises(ValueError, match=words):
        DataLoader(RangeDataset(4), **kwargs)


def test_more_workers_than_cores_warns_like_torch():
    with pytest.warns(
        UserWarning, match="excessive worker creation might get DataLoader running slow"
    ):
        DataLoader(RangeDataset(4), num_workers=1000)


# -- robust to patched names -----------------------------------------------------------------


@pytest.fixture
def torch_names_patched(monkeypatch):
    """What torch-suite's harness and some frameworks do: torch's names point at ours."""
    for name in ("Dataset", "IterableDataset", "Sampler"):
        monkeypatch.setattr(torch.utils.data, name, getattr(batchloader, name))


def test_torchs_chain_dataset_is_iterated_under_patched_names(torch_names_patched):
    from torch.utils.data.dataset import ChainDataset

    chain = ChainDataset([SelfIterating(2), SelfIterating(1)])
    assert [int(x) for x in DataLoader(chain, batch_size=None)] == [1, 2, 1]


def test_a_self_iterating_dataset_works_with_process_workers_under_patched_names(
    torch_names_patched,
):
    batches = list(DataLoader(SelfIterating(4), batch_size=2, num_workers=1))
    assert [b.tolist() for b in batches] == [[1, 2], [3, 4]]


def test_a_truthy_shuffle_meets_torchs_exclusivity_checks_first():
    with pytest.raises(ValueError, match="sampler option is mutually exclusive with shuffle"):
        DataLoader(RangeDataset(4), sampler=[0, 1], shuffle=3)


class _Counting(torch.utils.data.IterableDataset):
    """Yields 0..19 in every worker: not sharded, so two workers yield it twice."""

    def __iter__(self):
        return iter(range(20))

    def __len__(self):
        return 20


def test_an_iterable_dataset_longer_than_its_len_warns_like_torch():
    loader = DataLoader(_Counting(), num_workers=2)
    it = iter(loader)
    for _ in range(40):
        next(it)  # len() not asked yet: no warning (warnings are errors here)
    assert len(loader) == 20
    it = iter(loader)
    for _ in range(20):
        next(it)
    with pytest.warns(UserWarning, match=r"but 21 samples have been fetched\. For multiprocessing"):
        next(it)


@pytest.mark.filterwarnings("ignore::UserWarning:torch")
def test_a_datapipe_is_sharded_across_workers_and_shuffled_like_torch():
    from torch.utils.data.datapipes.iter import IterableWrapper

    pipe = IterableWrapper(range(10)).shuffle().sharding_filter()
    shuffled = [int(x) for x in DataLoader(pipe, shuffle=True, num_workers=2)]
    assert sorted(shuffled) == list(range(10))
    in_order = [int(x) for x in DataLoader(IterableWrapper(range(10)).shuffle(), shuffle=False)]
    assert in_order == list(range(10))


def test_tensor_dataset_size_mismatch_is_torchs_assertion_error():
    """Tensors of different first dimensions raise torch's AssertionError and words."""
    with pytest.raises(AssertionError, match="Size mismatch between tensors"):
        TensorDataset(torch.zeros(4), torch.zeros(3))


_START_METHOD_SCRIPT = """
import multiprocessing, sys
from batchloader import DataLoader
from tests.helpers import RangeDataset

if __name__ == "__main__":
    multiprocessing.set_start_method(sys.argv[1])
    loader = DataLoader(RangeDataset(4), batch_size=2, num_workers=2)
    iterator = iter(loader)
    print(type(iterator._workers[0]).__name__, [b.tolist() for b in iterator])
"""


@pytest.mark.parametrize(
    ("method", "process_type"), [("spawn", "SpawnProcess"), ("forkserver", "ForkServerProcess")]
)
def test_the_start_method_the_program_set_starts_the_workers(tmp_path, method, process_type):
    """With no multiprocessing_context, workers start as multiprocessing.set_start_method said."""
    import subprocess
    import sys

    from tests.helpers import child_env

    script = tmp_path / "set_start_method.py"
    script.write_text(_START_METHOD_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), method],
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[0] == process_type
    assert "[[0, 1], [2, 3]]" in done.stdout


def test_without_a_start_method_set_workers_are_forked():
    """No context given and none set: batchloader forks, whatever Python's default."""
    import multiprocessing

    assert multiprocessing.get_start_method(allow_none=True) in (None, "fork")
    iterator = iter(DataLoader(RangeDataset(4), batch_size=2, num_workers=2))
    assert all(type(w).__name__ == "ForkProcess" for w in iterator._workers)
    list(iterator)


def test_workers_are_listed_by_id_with_pid_and_liveness():
    """torch's iterator attribute _workers: worker i at index i, each with pid and is_alive()."""
    from tests.helpers import WorkerInfoDataset

    iterator = iter(DataLoader(WorkerInfoDataset(8), num_workers=2, batch_size=None))
    workers = iterator._workers
    assert len(workers) == 2 and all(w.is_alive() for w in workers)
    pids = [w.pid for w in workers]
    for sample in iterator:
        assert pids[int(sample["id"])] == int(sample["pid"])


def test_workers_told_to_stop_exit_with_status_zero():
    """After an epoch ends its workers exit by themselves, with exit code 0, as torch's do."""
    iterator = iter(DataLoader(RangeDataset(6), batch_size=2, num_workers=3))
    workers = iterator._workers
    assert len(list(iterator)) == 3
    del iterator
    for worker in workers:
        worker.join(10)
        assert not worker.is_alive()
        assert worker.exitcode == 0


def test_index_lists_larger_than_a_pipe_still_load():
    """Huge batches (torch's test_large_sampler_indices) need no more room than one task."""
    loader = DataLoader(RangeDataset(4 * 40_960), batch_size=40_960, num_workers=1)
    assert [int(b[-1]) for b in loader] == [40_959, 81_919, 122_879, 163_839]
