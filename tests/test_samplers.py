"""Tests for batchloader.samplers: contracts, equality with torch, errors, repr."""

from __future__ import annotations

import itertools
import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.utils.data as tud
from hypothesis import given
from hypothesis import strategies as st

from batchloader import samplers
from batchloader.samplers import (
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
from tests import strategies as sst

DOCS_PAGE = Path(__file__).resolve().parents[1] / "docs" / "samplers.md"
LAST_BATCH_MODES = ("keep", "discard", "rollover")


# --- contract helpers ---------------------------------------------------------


def drain(sampler: Any) -> list[Any]:
    """One epoch of ``sampler``, after checking that ``len()`` announced its size."""
    announced = len(sampler)
    yielded = list(sampler)
    assert len(yielded) == announced, f"{sampler!r}: len() {announced} but yielded {len(yielded)}"
    return yielded


def assert_permutation(indices: list[int], n: int) -> None:
    """``indices`` holds each of ``0..n-1`` exactly once."""
    assert sorted(indices) == list(range(n))


def two_epochs(sampler: Any) -> list[list[Any]]:
    """Two consecutive epochs, so a shared generator's advance is compared too."""
    return [list(sampler), list(sampler)]


def torch_and_ours_under_manual_seed(make_torch: Any, make_ours: Any, seed: int) -> tuple[Any, Any]:
    """Two epochs of each sampler, both started from ``torch.manual_seed(seed)``."""
    torch.manual_seed(seed)
    theirs = two_epochs(make_torch())
    torch.manual_seed(seed)
    ours = two_epochs(make_ours())
    return theirs, ours


def torch_and_ours_with_generators(make_torch: Any, make_ours: Any, seed: int) -> tuple[Any, Any]:
    """Two epochs of each sampler, each with its own generator seeded alike."""
    theirs = two_epochs(make_torch(torch.Generator().manual_seed(seed)))
    ours = two_epochs(make_ours(torch.Generator().manual_seed(seed)))
    return theirs, ours


def rollover_epochs(
    sampler: Any, batch_size: int, num_epochs: int
) -> tuple[list[int], list[int], BatchSampler]:
    """Run ``num_epochs`` rollover epochs; return the batched stream and the sampler's own orders."""
    batches = BatchSampler(sampler, batch_size, last_batch="rollover")
    stream: list[int] = []
    orders: list[int] = []
    for epoch in range(num_epochs):
        batches.set_epoch(epoch)
        orders.extend(sampler)
        for batch in batches:
            assert len(batch) == batch_size
            stream.extend(batch)
    return stream, orders, batches


@pytest.fixture
def process_group(tmp_path: Path):
    """A one-process gloo group, torn down afterwards."""
    store = os.path.join(tmp_path, "store")
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    yield
    dist.destroy_process_group()


# --- module surface -----------------------------------------------------------


def test_all_is_sorted():
    """``__all__`` is sorted."""
    assert samplers.__all__ == sorted(samplers.__all__)


def test_all_names_are_torch_samplers():
    """Every exported name is a subclass of torch's ``Sampler``."""
    for name in samplers.__all__:
        assert issubclass(getattr(samplers, name), tud.Sampler), name


def test_all_names_are_documented():
    """Every exported name appears on the docs page."""
    page = DOCS_PAGE.read_text()
    missing = [name for name in samplers.__all__ if f"`{name}" not in page]
    assert not missing


def test_base_sampler_is_abstract():
    """``Sampler`` without ``__iter__`` cannot be instantiated."""
    with pytest.raises(TypeError, match="abstract"):
        Sampler()  # type: ignore[abstract]


# --- SequentialSampler ----------------------------------------------------------


@given(n=sst.lengths())
def test_sequential_yields_range_in_order(n):
    """An int length yields ``0..n-1`` in order."""
    assert drain(SequentialSampler(n)) == list(range(n))


def test_sequential_follows_a_growing_data_source():
    """The length of a sized data source is read at each iteration, as torch does."""
    data = [1, 2]
    sampler = SequentialSampler(data)
    data.append(3)
    assert drain(sampler) == [0, 1, 2]


# --- RandomSampler ----------------------------------------------------------------


@given(n=sst.lengths(), seed=sst.seeds(), epoch=sst.epochs())
def test_random_without_replacement_is_a_permutation(n, seed, epoch):
    """Without replacement one epoch is a permutation of the indices."""
    sampler = RandomSampler(n, seed=seed)
    sampler.set_epoch(epoch)
    assert_permutation(drain(sampler), n)


@given(
    n=sst.lengths(min_value=1), copies=st.integers(1, 4), extra=st.integers(0, 10), seed=sst.seeds()
)
def test_random_num_samples_beyond_length_is_whole_permutations(n, copies, extra, seed):
    """``num_samples > n`` without replacement yields whole permutations, then a prefix of one."""
    extra = extra % n
    indices = drain(RandomSampler(n, num_samples=copies * n + extra, seed=seed))
    for start in range(0, copies * n, n):
        assert_permutation(indices[start : start + n], n)
    assert len(set(indices[copies * n :])) == extra


@given(n=sst.lengths(min_value=1), num_samples=st.integers(1, 100), seed=sst.seeds())
def test_random_with_replacement_stays_in_range(n, num_samples, seed):
    """With replacement it yields ``num_samples`` indices, all in ``[0, n)``."""
    indices = drain(RandomSampler(n, replacement=True, num_samples=num_samples, seed=seed))
    assert all(0 <= i < n for i in indices)


@given(config=sst.random_sampler_configs(), seed=sst.seeds())
def test_random_matches_torch_under_manual_seed(config, seed):
    """With no generator, ours and torch's yield the same indices after the same ``torch.manual_seed``."""
    theirs, ours = torch_and_ours_under_manual_seed(
        lambda: tud.RandomSampler(**config), lambda: RandomSampler(**config), seed
    )
    assert ours == theirs


@given(config=sst.random_sampler_configs(), seed=sst.seeds())
def test_random_matches_torch_with_generator(config, seed):
    """With equally seeded generators, ours and torch's yield the same indices epoch after epoch."""
    theirs, ours = torch_and_ours_with_generators(
        lambda g: tud.RandomSampler(**config, generator=g),
        lambda g: RandomSampler(**config, generator=g),
        seed,
    )
    assert ours == theirs


def test_random_takes_its_seed_when_iteration_starts():
    """The global RNG is read at the first ``next()``, not at ``iter()``, as in torch."""
    iterator = iter(RandomSampler(20))
    torch.manual_seed(7)
    ours = list(iterator)
    torch.manual_seed(7)
    assert ours == list(tud.RandomSampler(range(20)))


@given(n=sst.lengths(min_value=2), seed=sst.seeds(), epoch=sst.epochs(), replacement=st.booleans())
def test_random_seed_reproduces_the_order(n, seed, epoch, replacement):
    """Two samplers with one seed and epoch yield one order."""
    first, second = (
        RandomSampler(n, replacement, seed=seed),
        RandomSampler(n, replacement, seed=seed),
    )
    first.set_epoch(epoch)
    second.set_epoch(epoch)
    assert list(first) == list(second)


@given(seed=sst.seeds(), epoch=sst.epochs())
def test_random_seed_is_history_independent(seed, epoch):
    """``set_epoch(e)`` gives the same order whatever epochs ran before."""
    fresh, used = RandomSampler(30, seed=seed), RandomSampler(30, seed=seed)
    for earlier in (epoch + 3, 0, epoch + 1):
        used.set_epoch(earlier)
        list(used)
    fresh.set_epoch(epoch)
    used.set_epoch(epoch)
    assert list(fresh) == list(used)


@given(seed=sst.seeds())
def test_random_seed_epochs_differ(seed):
    """Different epochs of one seed give different orders."""
    sampler = RandomSampler(30, seed=seed)
    orders = set()
    for epoch in range(4):
        sampler.set_epoch(epoch)
        orders.add(tuple(sampler))
    assert len(orders) == 4


def test_random_seed_ignores_the_global_rng():
    """A seeded sampler neither reads nor advances torch's global RNG."""
    sampler = RandomSampler(30, seed=5)
    torch.manual_seed(1)
    first = list(sampler)
    after = torch.rand(1)
    torch.manual_seed(2)
    assert list(sampler) == first
    torch.manual_seed(1)
    assert torch.equal(torch.rand(1), after)


def test_random_neighbouring_seed_and_epoch_are_unrelated():
    """(seed=1, epoch=0) and (seed=0, epoch=1) give different orders, unlike ``seed + epoch``."""
    first, second = RandomSampler(30, seed=1), RandomSampler(30, seed=0)
    second.set_epoch(1)
    assert list(first) != list(second)


def test_random_empty_data_source_yields_nothing():
    """An empty data source gives an empty epoch and ``len() == 0``."""
    assert drain(RandomSampler([])) == []


def test_random_cannot_draw_from_an_empty_data_source():
    """Asking for samples from nothing is a ValueError naming ``num_samples``."""
    with pytest.raises(ValueError, match=r"num_samples=3 .* empty data_source"):
        list(RandomSampler(0, num_samples=3))


def test_random_state_dict_round_trip():
    """Loading a seeded sampler's state reproduces its next epoch."""
    sampler = RandomSampler(20, seed=3)
    sampler.set_epoch(4)
    restored = RandomSampler(20, seed=3)
    restored.load_state_dict(sampler.state_dict())
    assert list(restored) == list(sampler)


# --- SubsetRandomSampler and WeightedRandomSampler ------------------------------------


@given(indices=sst.index_subsets(), seed=sst.seeds())
def test_subset_yields_each_index_once(indices, seed):
    """One epoch is a permutation of the given indices."""
    sampler = SubsetRandomSampler(indices, torch.Generator().manual_seed(seed))
    assert sorted(drain(sampler)) == sorted(indices)


@given(indices=sst.index_subsets(), seed=sst.seeds())
def test_subset_matches_torch_under_manual_seed(indices, seed):
    """With no generator, ours and torch's agree after the same ``torch.manual_seed``."""
    theirs, ours = torch_and_ours_under_manual_seed(
        lambda: tud.SubsetRandomSampler(indices), lambda: SubsetRandomSampler(indices), seed
    )
    assert ours == theirs


@given(indices=sst.index_subsets(), seed=sst.seeds())
def test_subset_matches_torch_with_generator(indices, seed):
    """With equally seeded generators, ours and torch's agree epoch after epoch."""
    theirs, ours = torch_and_ours_with_generators(
        lambda g: tud.SubsetRandomSampler(indices, g),
        lambda g: SubsetRandomSampler(indices, g),
        seed,
    )
    assert ours == theirs


def test_subset_yields_python_ints():
    """Indices given as a tensor come back as Python ints."""
    assert all(type(i) is int for i in SubsetRandomSampler(torch.tensor([4, 5, 6])))


@given(config=sst.weighted_configs(), seed=sst.seeds())
def test_weighted_draws_only_weighted_indices(config, seed):
    """It yields ``num_samples`` indices, never one whose weight is zero."""
    sampler = WeightedRandomSampler(**config, generator=torch.Generator().manual_seed(seed))
    allowed = {i for i, w in enumerate(config["weights"]) if w > 0}
    assert set(drain(sampler)) <= allowed


@given(config=sst.weighted_configs(replacement=False), seed=sst.seeds())
def test_weighted_without_replacement_is_distinct(config, seed):
    """Without replacement no index repeats within an epoch."""
    indices = list(WeightedRandomSampler(**config, generator=torch.Generator().manual_seed(seed)))
    assert len(set(indices)) == len(indices)


@given(config=sst.weighted_configs(), seed=sst.seeds())
def test_weighted_matches_torch_under_manual_seed(config, seed):
    """With no generator, ours and torch's agree after the same ``torch.manual_seed``."""
    theirs, ours = torch_and_ours_under_manual_seed(
        lambda: tud.WeightedRandomSampler(**config), lambda: WeightedRandomSampler(**config), seed
    )
    assert ours == theirs


@given(config=sst.weighted_configs(), seed=sst.seeds())
def test_weighted_matches_torch_with_generator(config, seed):
    """With equally seeded generators, ours and torch's agree epoch after epoch."""
    theirs, ours = torch_and_ours_with_generators(
        lambda g: tud.WeightedRandomSampler(**config, generator=g),
        lambda g: WeightedRandomSampler(**config, generator=g),
        seed,
    )
    assert ours == theirs


# --- IntervalSampler and FilterSampler ------------------------------------------------


@given(config=sst.interval_configs())
def test_interval_with_rollover_is_strided_permutation(config):
    """With rollover it yields every index once, ordered by (offset, index)."""
    config = {**config, "rollover": True}
    expected = sorted(range(config["length"]), key=lambda i: (i % config["interval"], i))
    assert drain(IntervalSampler(**config)) == expected


@given(config=sst.interval_configs())
def test_interval_without_rollover_is_the_first_pass(config):
    """Without rollover it yields ``0, interval, 2*interval, ...`` only."""
    config = {**config, "rollover": False}
    assert drain(IntervalSampler(**config)) == list(range(0, config["length"], config["interval"]))


@given(data=st.lists(st.integers(-5, 5), max_size=30))
def test_filter_keeps_indices_where_fn_is_true(data):
    """It yields, in order, the indices whose sample passes ``fn``."""
    assert drain(FilterSampler(lambda x: x > 0, data)) == [i for i, x in enumerate(data) if x > 0]


def test_filter_calls_fn_once_per_sample():
    """``fn`` runs once per sample at construction, never again per epoch."""
    calls = Counter()
    sampler = FilterSampler(lambda x: calls.update([x]) or x % 2, list(range(6)))
    for _ in range(2):
        list(sampler)
    assert calls == Counter(range(6))


# --- BatchSampler -------------------------------------------------------------------


@given(n=sst.lengths(), batch_size=sst.batch_sizes(), seed=sst.seeds())
def test_batch_keep_concatenates_to_the_sampler_order(n, batch_size, seed):
    """'keep' yields full batches then one short one, concatenating to the sampler's order."""
    sampler = RandomSampler(n, seed=seed)
    batches = drain(BatchSampler(sampler, batch_size, last_batch="keep"))
    assert list(itertools.chain.from_iterable(batches)) == list(sampler)
    assert all(len(b) == batch_size for b in batches[:-1])


@given(n=sst.lengths(), batch_size=sst.batch_sizes(), seed=sst.seeds())
def test_batch_discard_yields_only_full_batches(n, batch_size, seed):
    """'discard' yields ``n // batch_size`` full batches, a prefix of the sampler's order."""
    sampler = RandomSampler(n, seed=seed)
    batches = drain(BatchSampler(sampler, batch_size, drop_last=True))
    assert len(batches) == n // batch_size
    assert (
        list(itertools.chain.from_iterable(batches)) == list(sampler)[: len(batches) * batch_size]
    )


@given(
    n=sst.lengths(), batch_size=sst.batch_sizes(), seed=sst.seeds(), num_epochs=st.integers(1, 6)
)
def test_batch_rollover_loses_and_duplicates_nothing(n, batch_size, seed, num_epochs):
    """Over k epochs the batches plus the final carry are exactly the k epochs' orders."""
    stream, orders, batches = rollover_epochs(RandomSampler(n, seed=seed), batch_size, num_epochs)
    carried = batches.state_dict()["carried"]
    assert stream + carried == orders
    assert len(carried) == (num_epochs * n) % batch_size


@given(n=sst.lengths(), batch_size=sst.batch_sizes(), num_epochs=st.integers(1, 6))
def test_batch_rollover_len_matches_each_next_epoch(n, batch_size, num_epochs):
    """With rollover ``len()`` before each epoch equals that epoch's batch count."""
    batches = BatchSampler(SequentialSampler(n), batch_size, last_batch="rollover")
    for _ in range(num_epochs):
        drain(batches)


def test_batch_rollover_carries_the_tail_to_the_next_epoch():
    """The incomplete tail starts the next epoch's first batch."""
    batches = BatchSampler(range(5), 2, last_batch="rollover")
    assert list(batches) == [[0, 1], [2, 3]]
    assert list(batches) == [[4, 0], [1, 2], [3, 4]]


def test_batch_rollover_abandoned_epoch_spends_the_carry():
    """As Gluon: an iteration spends the carry when it starts, so abandoning it carries nothing."""
    batches = BatchSampler(range(5), 2, last_batch="rollover")
    list(batches)
    assert next(iter(batches)) == [4, 0]
    assert batches.state_dict()["carried"] == []
    assert len(batches) == 2
    assert list(batches) == [[0, 1], [2, 3]]


def test_batch_rollover_carries_only_when_the_epoch_runs_to_its_end():
    """As Gluon: taking exactly ``len()`` batches without the final call leaves no carry."""
    batches = BatchSampler(range(5), 2, last_batch="rollover")
    list(batches)
    list(itertools.islice(batches, len(batches)))
    assert list(batches) == [[0, 1], [2, 3]]


def test_batch_rollover_len_during_an_epoch_counts_without_the_spent_carry():
    batches = BatchSampler(range(5), 2, last_batch="rollover")
    list(batches)
    epoch = iter(batches)
    assert len(batches) == 3
    next(epoch)
    assert len(batches) == 2


@given(n=sst.lengths(), batch_size=sst.batch_sizes(), drop_last=st.booleans())
def test_batch_matches_torch_batch_sampler(n, batch_size, drop_last):
    """For keep and discard, ours yields what torch's ``BatchSampler`` yields."""
    theirs = tud.BatchSampler(tud.SequentialSampler(range(n)), batch_size, drop_last)
    ours = BatchSampler(SequentialSampler(n), batch_size, drop_last)
    assert (len(ours), list(ours)) == (len(theirs), list(theirs))


def test_batch_accepts_a_torch_sampler():
    """torch's samplers work as the inner sampler."""
    ours = BatchSampler(tud.SequentialSampler(range(5)), 2, last_batch="rollover")
    assert drain(ours) == [[0, 1], [2, 3]]


def test_batch_len_needs_a_sized_sampler():
    """``len()`` over an unsized iterable is a TypeError naming the sampler's type."""
    with pytest.raises(TypeError, match=r"sized sampler.*generator"):
        len(BatchSampler((i for i in range(4)), 2))


def test_batch_state_dict_resumes_rollover():
    """A new BatchSampler loaded from a state yields what the original would next."""
    original = BatchSampler(RandomSampler(7, seed=1), 3, last_batch="rollover")
    original.set_epoch(0)
    list(original)
    original.set_epoch(1)
    restored = BatchSampler(RandomSampler(7, seed=1), 3, last_batch="rollover")
    restored.load_state_dict(original.state_dict())
    assert (restored.epoch, drain(restored)) == (1, drain(original))


def test_batch_load_state_dict_rejects_a_full_carry():
    """A carry as long as ``batch_size`` is a ValueError naming both."""
    batches = BatchSampler(range(5), 2, last_batch="rollover")
    with pytest.raises(ValueError, match=r"carried.*2 indices.*batch_size=2"):
        batches.load_state_dict({"epoch": 0, "carried": [1, 2]})


def test_batch_set_epoch_reaches_the_sampler():
    """``set_epoch`` is passed on to a sampler that has one."""
    inner = RandomSampler(4, seed=0)
    BatchSampler(inner, 2).set_epoch(5)
    assert inner.epoch == 5


@pytest.mark.parametrize(
    ("drop_last", "last_batch", "expected"),
    [
        (False, None, False),
        (True, None, True),
        (False, "discard", True),
        (False, "rollover", False),
    ],
)
def test_batch_drop_last_mirrors_last_batch(drop_last, last_batch, expected):
    """``drop_last`` reads True exactly when the mode is 'discard'."""
    assert BatchSampler(range(3), 2, drop_last, last_batch=last_batch).drop_last is expected


# --- DistributedSampler -----------------------------------------------------------------


def make_distributed(config: dict[str, Any], cls: type) -> Any:
    """A DistributedSampler (ours or torch's) built from a ``distributed_configs`` example."""
    options = {key: config[key] for key in ("num_replicas", "rank", "shuffle", "seed", "drop_last")}
    sampler = cls(range(config["size"]), **options)
    sampler.set_epoch(config["epoch"])
    return sampler


@given(config=sst.distributed_configs())
def test_distributed_matches_torch(config):
    """Ours yields torch's indices for any size, replicas, rank, shuffle, seed, epoch and drop_last."""
    theirs = make_distributed(config, tud.DistributedSampler)
    ours = make_distributed(config, DistributedSampler)
    assert (len(ours), drain(ours)) == (len(theirs), list(theirs))


@given(config=sst.distributed_configs())
def test_distributed_ranks_share_one_permutation(config):
    """All ranks together yield the epoch's order, padded or trimmed, and equally many each."""
    shares = [
        drain(make_distributed({**config, "rank": r}, DistributedSampler))
        for r in range(config["num_replicas"])
    ]
    assert len({len(share) for share in shares}) == 1
    dealt = Counter(itertools.chain.from_iterable(shares))
    if config["drop_last"]:
        assert max(dealt.values(), default=1) == 1
    else:
        assert set(dealt) == set(range(config["size"]))


def test_distributed_set_epoch_changes_the_shuffle():
    """Different epochs give different orders; the same epoch gives the same."""
    sampler = DistributedSampler(40, num_replicas=2, rank=0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_distributed_without_a_group_is_a_value_error():
    """Without a process group, missing ``num_replicas`` says how to fix it."""
    with pytest.raises(ValueError, match=r"num_replicas is None.*init_process_group"):
        DistributedSampler(10)


def test_distributed_defaults_from_the_process_group(process_group):
    """With a group initialized, ``num_replicas`` and ``rank`` come from it."""
    sampler = DistributedSampler(10)
    assert (sampler.num_replicas, sampler.rank) == (1, 0)


@pytest.mark.parametrize("last_batch", LAST_BATCH_MODES)
def test_distributed_under_batch_sampler(last_batch):
    """Our BatchSampler batches a rank's share in every last-batch mode."""
    sampler = DistributedSampler(11, num_replicas=2, rank=1, seed=3)
    batches = BatchSampler(sampler, 4, last_batch=last_batch)
    flat = list(itertools.chain.from_iterable(drain(batches)))
    assert flat == list(sampler)[: len(flat)]


# --- inside torch's DataLoader -----------------------------------------------------------


DETERMINISTIC_SAMPLERS = {
    "sequential": lambda: SequentialSampler(10),
    "random-seeded": lambda: RandomSampler(10, seed=4),
    "interval": lambda: IntervalSampler(10, 3),
    "filter": lambda: FilterSampler(lambda x: x % 3, list(range(10))),
    "distributed": lambda: DistributedSampler(10, num_replicas=3, rank=2),
}


@pytest.mark.parametrize("make", DETERMINISTIC_SAMPLERS.values(), ids=DETERMINISTIC_SAMPLERS)
def test_torch_dataloader_accepts_our_sampler(make):
    """``DataLoader(sampler=ours)`` yields our order, batched as our BatchSampler batches it."""
    loader = tud.DataLoader(list(range(10)), batch_size=3, sampler=make())
    assert [b.tolist() for b in loader] == list(BatchSampler(make(), 3))


@pytest.mark.parametrize("last_batch", LAST_BATCH_MODES)
def test_torch_dataloader_accepts_our_batch_sampler(last_batch):
    """``DataLoader(batch_sampler=ours)`` yields our batches, epoch after epoch."""
    ours = BatchSampler(SequentialSampler(7), 3, last_batch=last_batch)
    reference = BatchSampler(SequentialSampler(7), 3, last_batch=last_batch)
    loader = tud.DataLoader(list(range(7)), batch_sampler=ours)
    for _ in range(3):
        assert [b.tolist() for b in loader] == list(reference)


def test_torch_dataloader_with_random_sampler_matches_torch():
    """Under one ``manual_seed``, torch's loader yields the same batches with ours or torch's RandomSampler."""
    data = list(range(20))
    torch.manual_seed(11)
    theirs = [
        b.tolist() for b in tud.DataLoader(data, batch_size=4, sampler=tud.RandomSampler(data))
    ]
    torch.manual_seed(11)
    ours = [b.tolist() for b in tud.DataLoader(data, batch_size=4, sampler=RandomSampler(data))]
    assert ours == theirs


# --- argument errors ---------------------------------------------------------------------


INVALID_ARGUMENTS = {
    "batch_size zero": (
        lambda: BatchSampler(range(3), 0),
        ValueError,
        ["batch_size should be a positive integer, got 0"],
    ),
    "batch_size bool": (
        lambda: BatchSampler(range(3), True),
        TypeError,
        ["batch_size", "True", "bool"],
    ),
    "batch_size float": (
        lambda: BatchSampler(range(3), 2.0),
        TypeError,
        ["batch_size", "2.0", "float"],
    ),
    "last_batch unknown": (
        lambda: BatchSampler(range(3), 2, last_batch="foo"),
        ValueError,
        ["last_batch", "'keep'", "'discard'", "'rollover'", "'foo'"],
    ),
    "drop_last contradicts": (
        lambda: BatchSampler(range(3), 2, True, last_batch="keep"),
        ValueError,
        ["drop_last=True", "last_batch='keep'"],
    ),
    "drop_last not bool": (
        lambda: BatchSampler(range(3), 2, drop_last="yes"),
        TypeError,
        ["drop_last", "'yes'"],
    ),
    "sampler int": (lambda: BatchSampler(10, 2), TypeError, ["sampler", "10 (int)", "range(n)"]),
    "data_source negative": (
        lambda: SequentialSampler(-1),
        ValueError,
        ["data_source", "non-negative", "-1"],
    ),
    "data_source unsized": (
        lambda: SequentialSampler(object()),
        TypeError,
        ["data_source", "__len__"],
    ),
    "num_samples zero": (
        lambda: RandomSampler(5, num_samples=0),
        ValueError,
        ["num_samples", "positive", "0"],
    ),
    "replacement not bool": (
        lambda: RandomSampler(5, replacement=1),
        TypeError,
        ["replacement", "bool", "1 (int)"],
    ),
    "generator wrong type": (
        lambda: RandomSampler(5, generator=0),
        TypeError,
        ["generator", "torch.Generator"],
    ),
    "generator and seed": (
        lambda: RandomSampler(5, generator=torch.Generator(), seed=1),
        ValueError,
        ["generator", "seed", "not both"],
    ),
    "seed not int": (lambda: RandomSampler(5, seed="a"), TypeError, ["seed", "'a'"]),
    "epoch negative": (lambda: RandomSampler(5).set_epoch(-1), ValueError, ["epoch", "-1"]),
    "subset index not int": (
        lambda: SubsetRandomSampler([1, "x"]),
        TypeError,
        ["indices[1]", "'x'"],
    ),
    "weights 2-d": (
        lambda: WeightedRandomSampler([[1.0]], 1),
        ValueError,
        ["weights", "1-d", "(1, 1)"],
    ),
    "weights negative": (
        lambda: WeightedRandomSampler([-1.0, 1.0], 1),
        ValueError,
        ["weights", "non-negative"],
    ),
    "weights all zero": (
        lambda: WeightedRandomSampler([0.0, 0.0], 1),
        ValueError,
        ["weights", "positive"],
    ),
    "weights not numbers": (
        lambda: WeightedRandomSampler(["a"], 1),
        TypeError,
        ["weights", "numbers"],
    ),
    "weighted too many": (
        lambda: WeightedRandomSampler([1.0, 0.0], 2, replacement=False),
        ValueError,
        ["num_samples=2", "1 non-zero", "replacement=True"],
    ),
    "interval zero": (lambda: IntervalSampler(5, 0), ValueError, ["interval", "positive", "0"]),
    "filter fn": (lambda: FilterSampler(3, [1]), TypeError, ["fn", "callable"]),
    "filter dataset": (lambda: FilterSampler(bool, iter([1])), TypeError, ["dataset", "__len__"]),
    "rank too large": (
        lambda: DistributedSampler(10, 2, 2),
        ValueError,
        ["Invalid rank 2", "[0, 1]", "num_replicas=2"],
    ),
    "rank negative": (
        lambda: DistributedSampler(10, 2, -1),
        ValueError,
        ["Invalid rank -1", "[0, 1]"],
    ),
    "num_replicas zero": (
        lambda: DistributedSampler(10, 0, 0),
        ValueError,
        ["num_replicas", "positive", "0"],
    ),
}


@pytest.mark.parametrize(
    ("make", "error", "words"), INVALID_ARGUMENTS.values(), ids=INVALID_ARGUMENTS
)
def test_invalid_argument_is_named_in_the_error(make, error, words):
    """Each invalid argument raises the exact exception type, naming argument, value and what is allowed."""
    with pytest.raises(error) as info:
        make()
    assert type(info.value) is error
    for word in words:
        assert word in str(info.value)


# --- repr --------------------------------------------------------------------------------


REPRS = {
    "sequential": (
        lambda: SequentialSampler([1, 2, 3]),
        "SequentialSampler(data_source=<list of length 3>)",
    ),
    "random": (
        lambda: RandomSampler(10, num_samples=4, seed=2),
        "RandomSampler(data_source=10, replacement=False, num_samples=4, generator=None, seed=2, epoch=0)",
    ),
    "random-generator": (
        lambda: RandomSampler(3, True, generator=torch.Generator()),
        "RandomSampler(data_source=3, replacement=True, num_samples=3, generator=<torch.Generator>, seed=None, epoch=0)",
    ),
    "subset": (
        lambda: SubsetRandomSampler(range(3)),
        "SubsetRandomSampler(indices=[0, 1, 2], generator=None)",
    ),
    "subset-long": (
        lambda: SubsetRandomSampler(range(9)),
        "SubsetRandomSampler(indices=[0, 1, 2, 3, 4, ...] (length 9), generator=None)",
    ),
    "weighted": (
        lambda: WeightedRandomSampler([1, 2], 5),
        "WeightedRandomSampler(weights=[1.0, 2.0], num_samples=5, replacement=True, generator=None)",
    ),
    "interval": (
        lambda: IntervalSampler(7, 3, False),
        "IntervalSampler(length=7, interval=3, rollover=False)",
    ),
    "filter": (
        lambda: FilterSampler(bool, [0, 1, 2]),
        "FilterSampler(fn=bool, dataset=<list of length 3>, indices=[1, 2])",
    ),
    "distributed": (
        lambda: DistributedSampler(8, 4, 1, seed=9),
        "DistributedSampler(dataset=8, num_replicas=4, rank=1, shuffle=True, seed=9, drop_last=False, epoch=0)",
    ),
    "batch": (
        lambda: BatchSampler(SequentialSampler(5), 2, last_batch="rollover"),
        "BatchSampler(sampler=SequentialSampler(data_source=5), batch_size=2, last_batch='rollover', carried=[], epoch=0)",
    ),
}


@pytest.mark.parametrize(("make", "expected"), REPRS.values(), ids=REPRS)
def test_repr_lists_every_option(make, expected):
    """``repr`` shows the class and every option."""
    assert repr(make()) == expected


def test_repr_shows_the_rollover_carry():
    """A BatchSampler's repr shows the indices it carries into the next epoch."""
    batches = BatchSampler(range(5), 2, last_batch="rollover")
    list(batches)
    assert "carried=[4]" in repr(batches)


def test_distributed_sampler_accepts_a_negative_epoch_like_torch():
    """set_epoch(-1) is allowed and shuffles exactly as torch's does."""
    ours = DistributedSampler(5, num_replicas=2, rank=0)
    theirs = tud.DistributedSampler(range(5), num_replicas=2, rank=0)
    ours.set_epoch(-1)
    theirs.set_epoch(-1)
    assert list(ours) == list(theirs)
