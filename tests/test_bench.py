"""The benchmark suite: deterministic workloads, delivery checks, the command line.

No test here asserts a timing: the machine is shared and timings are the
benchmark's output, not its contract.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from batchloader import DataLoader
from batchloader.__main__ import main
from batchloader._bench import checks, measure, report, runner, workloads
from batchloader._bench.checks import Checksum
from batchloader._bench.measure import Spec
from batchloader._bench.runner import BenchOptions, BenchResult, Cell, CellResult

pytestmark = pytest.mark.timeout(60)

REPO = Path(__file__).resolve().parent.parent
_JPEGS = 6


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bench-cache")
    workloads.prepare("jpeg", _JPEGS, path)
    return path


def _small(name: str, cache_dir: Path) -> Any:
    n = _JPEGS if name == "jpeg" else 40
    return workloads.build_dataset(name, n, cache_dir)


def _equal_samples(a: Any, b: Any) -> bool:
    return a[1] == b[1] and np.array_equal(a[0], b[0])


def _fast(name: str, dataset: Any) -> Any:
    if name == "io":
        dataset.latency_s = 0.0  # the sleep is the workload; its value is not under test
    return dataset


@pytest.mark.parametrize("name", list(workloads.WORKLOADS))
def test_workload_samples_are_a_function_of_the_index(name, cache_dir):
    """Two independently built datasets give identical samples, whatever the access order."""
    first, second = _fast(name, _small(name, cache_dir)), _fast(name, _small(name, cache_dir))
    indices = [3, 0, 5, 3, 1]
    forward = [first[i] for i in indices]
    backward = [second[i] for i in reversed(indices)][::-1]
    assert all(_equal_samples(a, b) for a, b in zip(forward, backward, strict=True))
    assert [sample[1] for sample in forward] == indices


@pytest.mark.parametrize("name", list(workloads.WORKLOADS))
def test_workload_datasets_pickle_to_equal_datasets(name, cache_dir):
    """A dataset survives pickling (spawn and forkserver workers receive it that way)."""
    dataset = _fast(name, _small(name, cache_dir))
    clone = pickle.loads(pickle.dumps(dataset))
    assert _equal_samples(dataset[2], clone[2])


def test_jpeg_cache_is_reused_not_rewritten(cache_dir):
    """Preparing the jpeg workload again leaves existing files untouched."""
    path = next(cache_dir.rglob("00000.jpg"))
    before = path.stat().st_mtime_ns
    workloads.prepare("jpeg", _JPEGS, cache_dir)
    assert path.stat().st_mtime_ns == before


def test_batched_tiny_dataset_holds_the_same_samples(cache_dir):
    """The ArrayDataset form of tiny has the per-sample form's data and labels."""
    plain = workloads.build_dataset("tiny", 50, cache_dir)
    batched = workloads.build_dataset("tiny", 50, cache_dir, batched=True)
    x, y = batched.get_batch([4, 9])
    assert np.array_equal(x.numpy(), np.stack([plain[4][0], plain[9][0]]))
    assert y.tolist() == [4, 9]


def label_hash(labels, start=0):
    """The order-sensitive label hash, written out: sum of (position + 1) * label."""
    total = 0
    for position, label in enumerate(labels, start):
        total = (total + (position + 1) * int(label)) % ((1 << 61) - 1)
    return total


def test_label_hash_formula_matches_the_running_hash():
    """The runner's closed form equals the measured hash of labels 0..n-1 in order."""
    for n in (1, 2, 65, 1000):
        assert checks.expected_label_hash(n) == label_hash(range(n))


def test_checksum_is_the_same_however_the_samples_are_batched():
    """Count, label hash and probe do not depend on how samples are split into batches."""
    x, y = torch.arange(12.0).reshape(6, 2), torch.arange(6)
    whole, split = Checksum(), Checksum()
    whole.add([x, y])
    split.add([x[:4], y[:4]])
    split.add([x[4:], y[4:]])
    assert (whole.count, whole.labels) == (split.count, split.labels) == (6, label_hash(range(6)))
    assert whole.probe == split.probe


class _Faulty:
    """Wraps our loader and corrupts what it delivers in one of several ways."""

    def __init__(self, inner: Any, fault: str):
        self.inner, self.fault = inner, fault

    def __iter__(self):
        batches = list(self.inner)
        match self.fault:
            case "drop":
                batches = batches[:-1]
            case "repeat":
                batches = [batches[0], *batches[:-1]]
            case "zero":
                batches[1] = [torch.zeros_like(batches[1][0]), batches[1][1]]
            case "rows":
                x, y = batches[1]
                batches[1] = [x.flip(0), y]
        return iter(batches)


def _faulty_factory(fault: str):
    def make(spec, dataset, collate, **kwargs):
        kwargs.pop("persistent_workers", None)
        return _Faulty(DataLoader(dataset, collate_fn=collate, **kwargs), fault)

    return make


def _measure_in_process(monkeypatch, loader: str, factory=None) -> dict:
    if factory is not None:
        monkeypatch.setitem(measure.LOADERS, loader, factory)
    return {"ok": True, **measure.measure(Spec("tiny", loader, size="smoke"))}


@pytest.mark.parametrize("fault", ["drop", "repeat", "zero", "rows"])
def test_checks_catch_a_loader_that_delivers_wrong_data(monkeypatch, capsys, fault):
    """Dropped, repeated, zeroed or misplaced samples each fail the delivery check."""
    reference = _measure_in_process(monkeypatch, "plain")
    wrong = _measure_in_process(monkeypatch, "faulty", _faulty_factory(fault))
    count = workloads.WORKLOADS["tiny"].size("smoke")
    problems = checks.check_run(wrong, count, reference["checksum"]["probe"])
    assert problems, f"a loader that does {fault!r} passed the checks"


def test_checks_pass_our_loader_and_torchs(monkeypatch, capsys):
    """Both real loaders deliver exactly what the plain loop does."""
    reference = _measure_in_process(monkeypatch, "plain")
    count = workloads.WORKLOADS["tiny"].size("smoke")
    for loader in ("ours", "torch"):
        result = _measure_in_process(monkeypatch, loader)
        assert checks.check_run(result, count, reference["checksum"]["probe"]) == []


def test_a_failed_run_is_reported_with_its_error():
    """A run that crashed is a check failure naming the error."""
    problems = checks.check_run({"ok": False, "error": "KeyError: 3"}, 10, None)
    assert problems == ["failed: KeyError: 3"]


def test_quick_plan_keeps_every_cell_a_target_needs():
    """--quick still measures the cells that the issue's targets are stated on."""
    names = {cell.name for cell in runner.plan(BenchOptions(quick=True))}
    needed = {"tiny w0", "tiny w2", "tiny batched w0", "cpu w0", "cpu w2", "big w2", "big bs8 w2"}
    assert needed | {"io w0", "io w2", "io threads8", "jpeg w2", "pad w2"} <= names


def test_options_reject_an_unknown_workload_by_name():
    """An unknown workload is a ValueError that lists the known ones."""
    with pytest.raises(ValueError, match=r"unknown workloads \['video'\].*tiny"):
        BenchOptions(workloads=("tiny", "video"))


def test_paired_ratio_is_the_median_of_round_ratios():
    """Ratios pair runs of the same round; failed runs drop their pair."""
    ours = [{"ok": True, "rate": r} for r in (10.0, 30.0, 12.0)]
    theirs = [{"ok": True, "rate": 5.0}, {"ok": False}, {"ok": True, "rate": 4.0}]
    assert runner.paired_ratio(ours, theirs) == 2.5


def _synthetic_result() -> BenchResult:
    run = {"ok": True, "rate": 100.0, "ttfb_cold_s": 0.1, "cpu_per_batch_s": 0.001}
    slow = {**run, "rate": 50.0, "ttfb_cold_s": 0.2}
    cells = [
        CellResult(Cell("tiny", 0), {"ours": [run], "torch": [slow]}),
        CellResult(Cell("tiny", 2), {"ours": [run], "torch": [slow]}),
    ]
    options = BenchOptions(workloads=("tiny",), repeats=1)
    return BenchResult(options, cells, {"tiny": [{**run, "rate": 80.0}]}, [0.5, 0.7])


def test_report_table_shows_medians_ratios_and_targets():
    """The printed report has a row per cell with the ratio, and the target verdicts."""
    text = report.format_report(_synthetic_result())
    assert "| tiny w0 | 100 | 50 | 2.00 |" in text
    assert "tiny w2: ours/torch samples/s | 2.000 | ≥ 1.2 | pass" in text
    assert "tiny w2: first batch, ours/torch time | 0.500 | ≤ 1 | pass" in text


def test_report_json_round_trips():
    """The JSON document is strict JSON with the cells, ratios and targets."""
    result = _synthetic_result()
    result.cells[0].runs["ours"][0]["ttfb_s"] = float("nan")
    document = json.loads(json.dumps(report.to_json(result), allow_nan=False))
    assert [cell["name"] for cell in document["cells"]] == ["tiny w0", "tiny w2"]
    assert document["cells"][0]["ratio"] == 2.0
    assert {t["status"] for t in document["targets"]} == {"pass"}


def test_a_saved_run_reports_the_same_as_the_live_one():
    """--from-json rebuilds a run whose report equals the original's."""
    result = _synthetic_result()
    document = json.loads(json.dumps(report.to_json(result)))
    assert report.format_report(report.from_json(document)) == report.format_report(result)


def test_plot_writes_a_png(tmp_path):
    """--plot draws a PNG file."""
    path = tmp_path / "bench.png"
    report.plot(_synthetic_result(), path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_help_lists_bench_options_and_hides_smoke(capsys):
    """`bench --help` documents the options a user needs, not the test-only one."""
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "--help"])
    text = capsys.readouterr().out
    assert exit_info.value.code == 0
    for option in ("--quick", "--workloads", "--repeats", "--json", "--plot", "--workers"):
        assert option in text
    assert "--smoke" not in text


def test_measure_command_prints_one_json_line():
    """`python -m batchloader._bench.measure '<spec>'` ends with one JSON result line."""
    spec = Spec("pad", "ours", size="smoke").to_json()
    command = [sys.executable, "-m", "batchloader._bench.measure", spec]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=50)
    result = json.loads(done.stdout.splitlines()[-1])
    assert done.returncode == 0, result.get("traceback")
    assert result["checksum"]["count"] == workloads.WORKLOADS["pad"].size("smoke")


def test_bench_command_runs_end_to_end_and_writes_json(tmp_path, cache_dir):
    """A smoke-sized `python -m batchloader bench` prints the table and valid JSON."""
    out = tmp_path / "bench.json"
    command = [
        sys.executable, "-m", "batchloader", "bench", "--smoke", "--workloads", "tiny",
        "--repeats", "1", "--no-progress", "--json", str(out), "--cache-dir", str(cache_dir),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=55)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "| tiny w0 |" in done.stdout
    document = json.loads(out.read_text())
    assert document["ok"] is True
    assert {"tiny w0", "tiny w2", "tiny batched w0"} <= {c["name"] for c in document["cells"]}
    assert all(c["problems"] == [] for c in document["cells"])
