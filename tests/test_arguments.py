"""Invalid DataLoader arguments raise ValueError/TypeError naming the argument."""

from __future__ import annotations

import pytest
import torch

from batchloader import DataLoader
from tests.helpers import RangeDataset, ShardedIterable

DS = RangeDataset(10)


@pytest.mark.parametrize("batch_size", [0, -3, 2.5, True])
def test_batch_size_must_be_a_positive_int(batch_size):
    """batch_size=0 (or a float or bool) is rejected by name."""
    with pytest.raises(ValueError, match=f"batch_size={batch_size!r}"):
        DataLoader(DS, batch_size=batch_size)


def test_num_workers_must_not_be_negative():
    """A negative num_workers names the value and the fix."""
    with pytest.raises(
        ValueError,
        match=r"num_workers option should be non-negative; use num_workers=0.*num_workers=-1",
    ):
        DataLoader(DS, num_workers=-1)


def test_timeout_must_not_be_negative():
    """timeout<0 is rejected."""
    with pytest.raises(ValueError, match="timeout=-1"):
        DataLoader(DS, timeout=-1)


def test_shuffle_with_a_sampler_is_rejected():
    """shuffle and sampler are mutually exclusive, as in torch."""
    with pytest.raises(ValueError, match="sampler option is mutually exclusive with shuffle"):
        DataLoader(DS, shuffle=True, sampler=range(10))


@pytest.mark.parametrize(
    "extra",
    [
        {"batch_size": 2},
        {"shuffle": True},
        {"sampler": range(10)},
        {"drop_last": True},
        {"last_batch": "rollover"},
    ],
)
def test_batch_sampler_excludes_the_other_batching_options(extra):
    """batch_sampler with batch_size/shuffle/sampler/drop_last/last_batch is a ValueError."""
    with pytest.raises(ValueError, match="batch_sampler option is mutually exclusive"):
        DataLoader(DS, batch_sampler=[[0, 1]], **extra)


def test_unknown_last_batch_mode_lists_the_allowed_ones():
    """last_batch='foo' names the three modes."""
    with pytest.raises(ValueError, match=r"'keep', 'discard', 'rollover'.*last_batch='foo'"):
        DataLoader(DS, last_batch="foo")


def test_drop_last_contradicting_last_batch_is_rejected():
    """drop_last=True with last_batch='keep' is inconsistent."""
    with pytest.raises(ValueError, match="drop_last=True means last_batch='discard'"):
        DataLoader(DS, drop_last=True, last_batch="keep")


def test_drop_last_agreeing_with_last_batch_is_accepted():
    """drop_last=True with last_batch='discard' says the same thing twice."""
    loader = DataLoader(DS, batch_size=3, drop_last=True, last_batch="discard")
    assert len(loader) == 3


def test_prefetch_factor_without_workers_is_rejected():
    """prefetch_factor needs num_workers > 0."""
    with pytest.raises(ValueError, match="prefetch_factor=2 needs workers"):
        DataLoader(DS, prefetch_factor=2)


def test_prefetch_factor_auto_without_workers_is_rejected_in_the_users_words():
    """prefetch_factor='auto' with num_workers=0: the error shows 'auto', as it was given."""
    with pytest.raises(ValueError, match="prefetch_factor='auto' needs workers"):
        DataLoader(DS, prefetch_factor="auto")


def test_persistent_workers_without_workers_is_rejected():
    """persistent_workers needs num_workers > 0."""
    with pytest.raises(ValueError, match="persistent_workers option needs num_workers > 0"):
        DataLoader(DS, persistent_workers=True)


def test_batch_size_none_with_drop_last_is_rejected():
    """batch_size=None disables batching, so drop_last makes no sense."""
    with pytest.raises(ValueError, match="batch_size=None option disables auto-batching"):
        DataLoader(DS, batch_size=None, drop_last=True)


@pytest.mark.parametrize("name", ["shuffle", "sampler", "batch_sampler"])
def test_iterable_dataset_rejects_samplers_and_shuffle(name):
    """An IterableDataset chooses its own order: shuffle/sampler/batch_sampler are errors."""
    value = {"shuffle": True, "sampler": range(3), "batch_sampler": [[0]]}[name]
    kwargs = {name: value}
    if name == "batch_sampler":
        kwargs["batch_size"] = 1
    with pytest.raises(ValueError, match=f"expected unspecified {name} option"):
        DataLoader(ShardedIterable(5), **kwargs)


def test_unknown_start_method_is_rejected():
    """multiprocessing_context must name a start method."""
    with pytest.raises(
        ValueError,
        match=r"should specify a valid start method in .*multiprocessing_context='threads'",
    ):
        DataLoader(DS, num_workers=1, multiprocessing_context="threads")


def test_start_method_without_workers_is_rejected():
    """multiprocessing_context needs num_workers > 0, as in torch."""
    with pytest.raises(
        ValueError,
        match=r"num_workers > 0\), but got num_workers=0.*multiprocessing_context='spawn'",
    ):
        DataLoader(DS, multiprocessing_context="spawn")


def test_collate_fn_must_be_callable():
    """A non-callable collate_fn is a TypeError naming it."""
    with pytest.raises(TypeError, match="collate_fn should be callable"):
        DataLoader(DS, collate_fn="stack")


def test_generator_must_be_a_torch_generator():
    """generator must be a torch.Generator."""
    with pytest.raises(TypeError, match=r"generator should be a torch\.Generator"):
        DataLoader(DS, generator=42)


def test_shuffle_must_be_a_bool():
    """shuffle='yes' is a TypeError."""
    with pytest.raises(TypeError, match="shuffle should be a bool"):
        DataLoader(DS, shuffle="yes")


def test_valid_arguments_build_a_loader_with_torchs_attributes():
    """The loader exposes torch's public attributes."""
    loader = DataLoader(DS, batch_size=4, shuffle=True, generator=torch.Generator())
    assert loader.batch_size == 4 and loader.drop_last is False and loader.num_workers == 0
    assert loader.sampler is not None and loader.batch_sampler is not None
    assert "batch_size=4" in repr(loader)


@pytest.mark.parametrize("name", ["thread_pool", "in_order"])
def test_flags_must_be_bools(name):
    """'yes' or 'no' is a mistake, not a setting."""
    with pytest.raises(TypeError, match=f"{name} should be True or False, got {name}='no'"):
        DataLoader(DS, **{name: "no"})


def test_a_number_is_not_a_dataset():
    with pytest.raises(TypeError, match=r"dataset=5 .*pass range"):
        DataLoader(5)


def test_timeout_nan_is_refused():
    with pytest.raises(ValueError, match="timeout=nan"):
        DataLoader(DS, timeout=float("nan"))
