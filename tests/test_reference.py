"""batchloader against what MXNet Gluon, GluonNLP and Keras really do.

The expected values are not written from memory: tests/reference/record_gluon.py
ran the real MXNet 1.9.1 and GluonNLP 0.10.0, and tests/reference/record_keras.py
the real Keras 3, over fixed cases, and saved what they returned in
tests/reference/*.json (see the scripts for the commands). Here the same cases
are replayed on batchloader, which needs neither library.

Where batchloader differs on purpose, the test says so next to the case and
docs/migrate-mxnet.md lists the difference with its reason.
"""

from __future__ import annotations

import copy
import functools
import itertools
import json
import pathlib
import warnings
from typing import Any

import numpy as np
import pytest
import torch

import batchloader
from tests.reference.epochs import run_epoch
from tests.reference.samples import build_data

REFERENCE = pathlib.Path(__file__).resolve().parent / "reference"
GLUON = json.loads((REFERENCE / "gluon.json").read_text())
KERAS = json.loads((REFERENCE / "keras.json").read_text())


# -- epoch scripts (BatchSampler and DataLoader) ----------------------------------------


def _epoch_id(case: dict[str, Any]) -> str:
    script = "+".join(case["script"])
    return f"n{case['n']}-bs{case['batch_size']}-{case['last_batch']}-{script}"


@pytest.mark.parametrize("source", ["range", "SequentialSampler"])
@pytest.mark.parametrize("case", GLUON["batch_sampler"], ids=_epoch_id)
def test_batch_sampler_epochs_match_gluon(case, source):
    """Batches and len() before and during every epoch equal Gluon's BatchSampler."""
    n = case["n"]
    sampler = range(n) if source == "range" else batchloader.SequentialSampler(n)
    # last_batch is a keyword: the third positional argument is torch's drop_last.
    bs = batchloader.BatchSampler(sampler, case["batch_size"], last_batch=case["last_batch"])
    got = [run_epoch(bs, step, list) for step in case["script"]]
    assert got == case["epochs"]


@pytest.mark.parametrize("case", GLUON["data_loader"], ids=_epoch_id)
def test_data_loader_epochs_match_gluon(case):
    """A single-process loader yields Gluon DataLoader's batches, epoch by epoch."""
    loader = batchloader.DataLoader(
        batchloader.ArrayDataset(np.arange(case["n"])),
        batch_size=case["batch_size"],
        last_batch=case["last_batch"],
    )
    got = [run_epoch(loader, step, lambda b: b.tolist()) for step in case["script"]]
    assert got == case["epochs"]


# -- samplers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "case", GLUON["sequential_sampler"], ids=lambda c: f"length{c['length']}-start{c['start']}"
)
def test_sequential_sampler_with_start_is_a_range(case):
    """Gluon's SequentialSampler(length, start) is range(start, start + length).

    batchloader's SequentialSampler takes no start (it is torch's); the range
    itself is the sampler, in a BatchSampler or a DataLoader.
    """
    length, start = case["length"], case["start"]
    indices = range(start, start + length)
    assert list(indices) == case["indices"] and len(indices) == case["len"]
    if start == 0:
        sampler = batchloader.SequentialSampler(length)
        assert list(sampler) == case["indices"] and len(sampler) == case["len"]
    loader = batchloader.DataLoader(list(range(20)), sampler=indices, batch_size=None)
    assert [int(i) for i in loader] == case["indices"]


def _interval_id(case: dict[str, Any]) -> str:
    return f"length{case['length']}-interval{case['interval']}-rollover{case['rollover']}"


@pytest.mark.parametrize(
    "case", [c for c in GLUON["interval_sampler"] if "error" not in c], ids=_interval_id
)
def test_interval_sampler_matches_gluon(case):
    """The same indices as Gluon's IntervalSampler, in the same order."""
    sampler = batchloader.IntervalSampler(
        case["length"], case["interval"], rollover=case["rollover"]
    )
    assert list(sampler) == case["indices"]
    if case["rollover"]:
        assert len(sampler) == case["len"]
    else:
        # Deliberate: Gluon's len() is `length` even without rollover, more than one
        # iteration yields; batchloader's len() is what an iteration yields.
        assert len(sampler) == len(case["indices"])
        assert case["len"] == case["length"]


@pytest.mark.parametrize(
    "case", [c for c in GLUON["interval_sampler"] if "error" in c], ids=_interval_id
)
def test_interval_sampler_accepts_interval_over_length(case):
    """Deliberate: Gluon asserts interval <= length; batchloader yields each index once."""
    assert case["error"] == "AssertionError"
    sampler = batchloader.IntervalSampler(
        case["length"], case["interval"], rollover=case["rollover"]
    )
    assert list(sampler) == list(range(case["length"])) and len(sampler) == case["length"]


# -- batchify -------------------------------------------------------------------------
#
# GluonNLP returns NDArrays; batchloader returns arrays (output="numpy") or tensors
# (output="torch"). Values must be GluonNLP's, and dtypes too, except for these
# deliberate differences (each listed in docs/migrate-mxnet.md):
#
# * Pad without dtype= on Python lists: the samples' own dtype (int64 for ints,
#   float64 for floats), where GluonNLP converts to MXNet's default float32.
# * Pad without dtype= on arrays of different dtypes: their common dtype
#   (np.result_type), where GluonNLP takes the first sample's and casts the rest.
# * Pad's lengths (ret_length=True) are int64, where GluonNLP's are int32.
# * A pad_val that the batch's dtype cannot hold is a ValueError, where GluonNLP
#   truncates or wraps it (0.5 -> 0 in int64, 300 -> 44 and -1 -> 255 in uint8).

PAD_VAL_DOES_NOT_FIT = {
    "pad-lists-pad-half": "0.5 in the int64 batch of Python ints (GluonNLP: float32 batch)",
    "pad-i64-pad-half": "0.5 in int64 (GluonNLP writes 0)",
    "pad-u8-pad-300": "300 in uint8 (GluonNLP writes 44)",
    "pad-u8-pad-minus1": "-1 in uint8 (GluonNLP writes 255)",
}
# Where keeping the samples' dtypes also changes values GluonNLP truncated.
VALUES_NOT_TRUNCATED = {
    # Python floats: GluonNLP fills an int64 array (from pad_val=0), then makes it float32.
    "pad-float-lists": [[0.5, 1.5], [2.5, 0.0]],
    # int64 then float32: GluonNLP casts 3.5 into the first sample's int64.
    "pad-mixed-i64-then-f32": [[1.0, 2.0], [3.5, 0.0]],
}


def _build_fn(spec: dict[str, Any], output: str) -> Any:
    kind = spec["kind"]
    if kind == "Stack":
        return batchloader.Stack(*spec["args"], **spec["kwargs"], output=output)
    if kind == "Pad":
        return batchloader.Pad(*spec["args"], **spec["kwargs"], output=output)
    if kind == "Tuple":
        if "fns_list" in spec:
            return batchloader.Tuple([_build_fn(s, output) for s in spec["fns_list"]])
        return batchloader.Tuple(*[_build_fn(s, output) for s in spec["fns"]])
    if kind == "Dict":
        return batchloader.Dict({k: _build_fn(s, output) for k, s in spec["fns"].items()})
    if kind == "List":
        return batchloader.List()
    raise ValueError(f"unknown batchify function {kind!r} in the reference")


def _encode(value: Any) -> Any:
    """batchloader's output in record_gluon.py's encoding."""
    if isinstance(value, torch.Tensor):
        return {"values": value.tolist(), "dtype": str(value.dtype).removeprefix("torch.")}
    if isinstance(value, np.ndarray):
        return {"values": value.tolist(), "dtype": value.dtype.name}
    if isinstance(value, tuple):
        return {"tuple": [_encode(v) for v in value]}
    if isinstance(value, dict):
        return {"dict": {k: _encode(v) for k, v in value.items()}}
    if isinstance(value, list):
        return {"list": [_encode(v) for v in value]}
    return {"value": value}


def _column(data: list[Any], spec: dict[str, Any]) -> list[list[Any]]:
    """The inputs each of a Tuple's or Dict's functions receives."""
    if spec["kind"] == "Tuple":
        count = len(spec.get("fns_list", spec.get("fns")))
        return [[sample[i] for sample in data] for i in range(count)]
    return [[sample[key] for sample in data] for key in spec["fns"]]


def _own_dtype(samples: list[Any], output: str) -> str:
    """The samples' common dtype, empty samples aside: what batchloader keeps.

    NumPy's promotion for NumPy output, torch's for tensors (int32 with float32
    is float64 in NumPy, float32 in torch), as ``default_collate`` does.
    """
    arrays = [s if isinstance(s, np.ndarray) else np.asarray(s) for s in samples]
    typed = [a for a in arrays if a.size] or arrays
    if output == "numpy":
        return np.result_type(*typed).name
    common = functools.reduce(torch.promote_types, (torch.from_numpy(a).dtype for a in typed))
    return torch.empty(0, dtype=common).numpy().dtype.name


def _expected(
    spec: dict[str, Any], data: list[Any], gluon: dict[str, Any], output: str
) -> dict[str, Any]:
    """GluonNLP's recorded output, with batchloader's deliberate dtype differences applied."""
    expected = copy.deepcopy(gluon)
    expected.pop("warnings", None)
    if spec["kind"] in ("Tuple", "Dict"):
        parts = expected["tuple"] if spec["kind"] == "Tuple" else list(expected["dict"].values())
        fns = spec.get("fns_list", spec.get("fns"))
        specs = list(fns.values()) if isinstance(fns, dict) else fns
        done = [
            _expected(s, col, part, output)
            for s, col, part in zip(specs, _column(data, spec), parts, strict=True)
        ]
        if spec["kind"] == "Tuple":
            return {"tuple": done}
        return {"dict": dict(zip(expected["dict"], done, strict=True))}
    samples = [build_data(s) for s in data]
    mixed = len({s.dtype for s in samples if isinstance(s, np.ndarray)}) > 1
    if spec["kind"] == "Stack":
        if mixed and not spec["kwargs"].get("dtype") and not spec["args"]:
            expected["dtype"] = _own_dtype(samples, output)
        return expected
    if spec["kind"] != "Pad":
        return expected
    batch = expected["tuple"][0] if "tuple" in expected else expected
    if "tuple" in expected:
        expected["tuple"][1]["dtype"] = "int64"  # lengths
    explicit_dtype = "dtype" in spec["kwargs"] or len(spec["args"]) > 3
    python_lists = not any(isinstance(s, np.ndarray) for s in samples)
    if not explicit_dtype and (python_lists or mixed):
        batch["dtype"] = _own_dtype(
            samples, output
        )  # values compare equal whatever their type: 1 == 1.0
    return expected


def _batchify_id(case: dict[str, Any]) -> str:
    return case["id"]


@pytest.mark.parametrize("output", ["numpy", "torch"])
@pytest.mark.parametrize(
    "case",
    [c for c in GLUON["batchify"] if c["id"] not in PAD_VAL_DOES_NOT_FIT],
    ids=_batchify_id,
)
def test_batchify_matches_gluonnlp(case, output):
    """Stack, Pad, Tuple, Dict and List give GluonNLP's values, and its dtypes where meant to."""
    assert "error" not in case["output"], case["output"]
    fn = _build_fn(case["fn"], output)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Pad() without pad_val does not warn, unlike GluonNLP
        got = _encode(fn(build_data(case["data"])))
    expected = _expected(case["fn"], case["data"], case["output"], output)
    if case["id"] in VALUES_NOT_TRUNCATED:
        expected["values"] = VALUES_NOT_TRUNCATED[case["id"]]
        expected["dtype"] = _own_dtype([build_data(s) for s in case["data"]], output)
    assert got == expected


@pytest.mark.parametrize("output", ["numpy", "torch"])
@pytest.mark.parametrize(
    "case",
    [c for c in GLUON["batchify"] if c["id"] in PAD_VAL_DOES_NOT_FIT],
    ids=_batchify_id,
)
def test_pad_val_that_does_not_fit_is_refused(case, output):
    """Deliberate: where GluonNLP silently truncates or wraps pad_val, batchloader raises."""
    gluon_values = case["output"]["values"]
    assert gluon_values, "GluonNLP returned a batch"
    fn = _build_fn(case["fn"], output)
    with pytest.raises(ValueError, match="pad_val"):
        fn(build_data(case["data"]))


def test_pad_default_warns_in_gluonnlp_only():
    """GluonNLP warns when Pad() gets no pad_val; batchloader pads with 0 silently."""
    (case,) = [c for c in GLUON["batchify"] if c["id"] == "pad-lists-default"]
    assert any("Padding value is not given" in w for w in case["output"]["warnings"])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        batchloader.Pad()([[1], [2, 3]])


# -- Keras ------------------------------------------------------------------------------
#
# model.fit first runs one extra epoch of one batch to build the model (its
# "peek": on_epoch_begin, __getitem__(0), on_epoch_end), then the real epochs.
# A plain training loop has no peek, so the comparison skips it.

KERAS_PEEK = ["on_epoch_begin", 0, "on_epoch_end"]


def _without_peek(log: list[Any]) -> list[Any]:
    assert log[: len(KERAS_PEEK)] == KERAS_PEEK, log
    return log[len(KERAS_PEEK) :]


class _Slices(batchloader.PyDataset):
    def __len__(self) -> int:
        return 3

    def __getitem__(self, i: int) -> np.ndarray:
        return np.arange(5)[2 * i : 2 * i + 2]


class _Logged(batchloader.PyDataset):
    def __init__(self, count: int | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.count = count
        self.log: list[Any] = []

    @property
    def num_batches(self) -> int | None:
        return self.count

    def __getitem__(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        self.log.append(i)
        return np.full((2, 3), i, dtype=np.float32), np.zeros((2, 1), dtype=np.float32)

    def on_epoch_begin(self) -> None:
        self.log.append("on_epoch_begin")

    def on_epoch_end(self) -> None:
        self.log.append("on_epoch_end")


def test_py_dataset_iterates_as_keras():
    """Iterating the dataset itself stops after num_batches, as Keras's PyDataset."""
    reference = KERAS["finite_iteration"]
    ds = _Slices()
    assert [b.tolist() for b in itertools.islice(iter(ds), 6)] == reference["batches"]
    assert ds.num_batches == reference["num_batches"]


def test_endless_dataset_epochs_match_keras_fit():
    """3 epochs of 3 steps over an endless dataset: Keras fit's batch indices and hooks."""
    reference = KERAS["fit_endless"]
    assert reference["fit"]["epochs"] == reference["fit"]["steps_per_epoch"] == 3
    ds = _Logged(None)
    loader = batchloader.DataLoader(ds, batch_size=None)
    for _epoch in range(3):
        for _step, _batch in zip(
            range(3), loader, strict=False
        ):  # range first: no extra batch is pulled
            pass
    loader.close()  # ends the last epoch, which was left early
    assert ds.log == _without_peek(reference["log"])
    epochs = [[i for i in part if isinstance(i, int)] for part in _split_epochs(ds.log)]
    assert epochs == [[0, 1, 2], [3, 4, 5], [6, 7, 8]]


def test_finite_dataset_epochs_match_keras_fit():
    """2 epochs over a dataset of 4 batches: Keras fit's batch indices and hooks."""
    reference = KERAS["fit_finite"]
    ds = _Logged(reference["num_batches"])
    loader = batchloader.DataLoader(ds)
    for _epoch in range(reference["fit"]["epochs"]):
        for _batch in loader:
            pass
    assert ds.log == _without_peek(reference["log"])


def _split_epochs(log: list[Any]) -> list[list[Any]]:
    """The log cut into epochs, checking that begin and end alternate."""
    epochs: list[list[Any]] = []
    for event in log:
        if event == "on_epoch_begin":
            assert not epochs or epochs[-1][-1] == "on_epoch_end", log
            epochs.append([event])
        else:
            epochs[-1].append(event)
    assert all(e[-1] == "on_epoch_end" for e in epochs), log
    return epochs


@pytest.mark.parametrize(
    "case",
    KERAS["options"],
    ids=lambda c: f"workers{c['workers']}-use_multiprocessing{c['use_multiprocessing']!r}",
)
def test_worker_options_read_as_keras(case):
    """workers=0 and use_multiprocessing=0/1 are accepted, and start what Keras starts."""
    assert case["constructs"]
    ds = _Logged(4, workers=case["workers"], use_multiprocessing=case["use_multiprocessing"])
    loader = batchloader.DataLoader(ds)
    if case["enqueuer"]:
        assert loader.num_workers == case["enqueuer_workers"]
        assert loader.thread_pool is not case["enqueuer_processes"]
    else:  # Keras loads in the main process
        assert loader.num_workers == 0
