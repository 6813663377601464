"""``loader.stats``: what an epoch did, and a verdict that names the bottleneck."""

from __future__ import annotations

import time

import pytest
import torch

from batchloader import DataLoader, LoaderStats
from batchloader._stats import Bottleneck, EpochRecorder, diagnose
from tests.helpers import RangeDataset, SlowDataset


class Spinning(RangeDataset):
    """Each sample takes ``spin_s`` of CPU."""

    def __init__(self, n: int, spin_s: float):
        super().__init__(n)
        self.spin_s = spin_s

    def __getitem__(self, i: int) -> int:
        start = time.thread_time()
        while time.thread_time() - start < self.spin_s:
            pass
        return i


def test_there_are_no_statistics_before_the_first_epoch():
    """loader.stats is None until iter() starts an epoch."""
    assert DataLoader(RangeDataset(4)).stats is None


def test_statistics_count_the_epochs_batches_and_samples():
    """Batches, samples, epoch number and settings are those of the latest epoch."""
    loader = DataLoader(RangeDataset(10), batch_size=4, num_workers=2)
    list(loader)
    list(loader)
    stats = loader.stats
    assert isinstance(stats, LoaderStats)
    assert (stats.epoch, stats.batches, stats.samples, stats.running) == (1, 3, 10, False)
    assert stats.settings["num_workers"] == 2 and stats.settings["workers"] == "process"
    assert 0 < stats.first_batch_s <= stats.wall_s
    assert stats.bytes > 0  # the label tensors came through the pool


def test_statistics_of_a_running_epoch_say_so():
    """During an epoch, loader.stats is that epoch's so far."""
    loader = DataLoader(RangeDataset(10), batch_size=2)
    iterator = iter(loader)
    next(iterator)
    assert loader.stats.running and loader.stats.batches == 1


def test_as_dict_is_flat_for_loggers():
    """as_dict() has only plain values, the settings under 'settings/', and the verdict."""
    loader = DataLoader(RangeDataset(8), batch_size=4)
    list(loader)
    flat = loader.stats.as_dict()
    assert all(isinstance(v, int | float | str | bool) for v in flat.values())
    assert flat["settings/num_workers"] == 0 and flat["batches"] == 2
    assert flat["verdict"] == loader.stats.verdict


def test_the_table_ends_with_the_verdict():
    """str(stats) is a readable table whose last line is the verdict."""
    loader = DataLoader(RangeDataset(8), batch_size=4)
    list(loader)
    text = str(loader.stats)
    assert "waiting for data" in text
    assert text.splitlines()[-1] == f"verdict: {loader.stats.verdict}"


def _second_epoch(dataset, **options):
    """The statistics of a second epoch, its workers already running (no start-up in it)."""
    with DataLoader(dataset, batch_size=4, persistent_workers=True, **options) as loader:
        list(loader)
        list(loader)
        return loader.stats


def test_a_cpu_bound_dataset_is_named_as_the_bottleneck():
    """Loader-bound: the loop waits, workers are busy on the CPU: __getitem__ is named."""
    stats = _second_epoch(Spinning(120, 0.002), num_workers=1)
    assert stats.diagnosis.bottleneck is Bottleneck.WORKERS_CPU, str(stats)
    assert "__getitem__" in stats.verdict


def test_an_io_bound_dataset_is_named_as_waiting_on_io():
    """I/O-bound: the loop waits, workers are busy but hardly use the CPU."""
    stats = _second_epoch(SlowDataset(120, 0.002), num_workers=1)
    assert stats.diagnosis.bottleneck is Bottleneck.WORKERS_IO, str(stats)
    assert "I/O" in stats.verdict and "more workers than cores" in stats.verdict


def test_a_slow_training_step_means_the_loader_is_not_the_bottleneck():
    """Consumer-bound: the loop hardly waits; the verdict says the loader is fine."""
    loader = DataLoader(RangeDataset(120), batch_size=4, num_workers=1, persistent_workers=True)
    with loader:
        list(loader)  # workers started; the measured epoch starts with them ready
        for _ in loader:
            time.sleep(0.01)
        stats = loader.stats
    assert stats.diagnosis.bottleneck is Bottleneck.NONE, str(stats)
    assert stats.verdict.startswith("the loader is not the bottleneck")


def test_without_workers_the_main_process_is_named():
    """num_workers=0 and a loop that waits: the batches are made in the main process."""
    loader = DataLoader(SlowDataset(40, 0.002), batch_size=4)
    list(loader)
    assert loader.stats.diagnosis.bottleneck is Bottleneck.MAIN_PROCESS
    assert "num_workers=0" in loader.stats.verdict


@pytest.mark.parametrize(
    ("numbers", "expected"),
    [
        ({"wait_share": 0.01, "busy_share": 1.0}, Bottleneck.NONE),
        ({"first_batch_share": 0.3}, Bottleneck.STARTUP),
        ({"starved_share": 0.0}, Bottleneck.NONE),
        ({"busy_share": 0.95, "cpu_share": 0.9}, Bottleneck.WORKERS_CPU),
        ({"busy_share": 0.95, "cpu_share": 0.1}, Bottleneck.WORKERS_IO),
        ({"busy_share": 0.4, "cpu_share": 0.9}, Bottleneck.TRANSFER),
        ({"num_workers": 0}, Bottleneck.MAIN_PROCESS),
        ({"num_workers": 0, "first_batch_share": 0.3}, Bottleneck.MAIN_PROCESS),
    ],
)
def test_diagnose_reads_the_numbers(numbers, expected):
    """The one reading of the numbers, on synthetic cases."""
    values = {
        "wait_share": 0.5,
        "first_batch_share": 0.01,
        "starved_share": 0.5,
        "num_workers": 2,
        "busy_share": 0.9,
        "cpu_share": 0.9,
        "step_s": 0.001,
        "work_s": 0.004,
        "available_cores": 8,
    }
    values.update(numbers)
    assert diagnose(**values).bottleneck is expected


def test_more_workers_are_advised_up_to_what_keeps_the_loop_fed():
    """CPU-bound: workers needed = a worker's time per batch over the loop's, capped by cores."""
    common = {
        "wait_share": 0.5,
        "first_batch_share": 0.01,
        "starved_share": 0.5,
        "num_workers": 1,
        "busy_share": 1.0,
    }
    cpu = diagnose(**common, cpu_share=1.0, step_s=0.001, work_s=0.003, available_cores=8)
    assert cpu.workers_needed == 3
    capped = diagnose(**common, cpu_share=1.0, step_s=0.001, work_s=0.05, available_cores=8)
    assert capped.workers_needed == 8
    io = diagnose(**common, cpu_share=0.0, step_s=0.0, work_s=0.05, available_cores=2)
    assert io.workers_needed == 16


def test_percentiles_keep_a_bounded_sample():
    """Waits are kept as a bounded uniform sample: p50/p95 stay right for long epochs."""
    recorder = EpochRecorder(0, {})
    for i in range(20_000):
        recorder.delivered(0.0, (i % 100) / 1000)
    stats = recorder.snapshot()
    assert len(recorder.wait.values) == 4096 and stats.batches == 20_000
    assert stats.wait_p50_s == pytest.approx(0.050, abs=0.005)
    assert stats.wait_p95_s == pytest.approx(0.095, abs=0.005)


def test_statistics_work_with_an_iterable_dataset():
    """Streams are counted too (samples from the batch size)."""

    class Stream(torch.utils.data.IterableDataset):
        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            return iter(range(info.id, 12, info.num_workers) if info else range(12))

    loader = DataLoader(Stream(), batch_size=3, num_workers=2)
    assert len(list(loader)) == 4
    assert (loader.stats.batches, loader.stats.samples) == (4, 12)


def test_a_slow_start_with_persistent_workers_does_not_advise_them():
    """Waiting mostly for the first batch of persistent workers: no advice to set what is set."""
    with DataLoader(
        RangeDataset(8), batch_size=4, num_workers=1, persistent_workers=True
    ) as loader:
        list(loader)
        assert loader.stats.diagnosis.bottleneck is Bottleneck.STARTUP
        assert "persistent_workers=True" not in loader.stats.verdict
