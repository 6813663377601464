"""Records what MXNet Gluon 1.9.1 and GluonNLP 0.10.0 really do, for tests/test_reference.py.

Run it with the interpreter that has the real libraries (see docs/migrate-mxnet.md,
"Checked against the real libraries")::

    python3.11 -m venv /tmp/mxvenv
    /tmp/mxvenv/bin/pip install mxnet==1.9.1 'numpy<1.24' gluonnlp==0.10.0
    /tmp/mxvenv/bin/python tests/reference/record_gluon.py

It writes tests/reference/gluon.json: the library versions, this command, and
one record per case. The cases are fixed here, and the same description drives
the replay in tests/test_reference.py, which runs without MXNet.

Epoch scripts (for BatchSampler and DataLoader) are lists of steps:

* ``"full"``: iterate the epoch to its end (``list(bs)``);
* ``"abandon:K"``: take K batches from ``iter(bs)``, then drop the iterator;
* ``"islice-len"``: ``list(itertools.islice(bs, len(bs)))``, which stops after
  the last batch without asking for the next one.

Each epoch is recorded as ``[len_before, len_after_first, batches]``: ``len``
before it, ``len`` right after its first batch was taken (``null`` if it
yielded none) and the batches it yielded (lists of ints).
"""

from __future__ import annotations

import json
import pathlib
import platform
import sys
import warnings

import gluonnlp
import mxnet
import numpy as np
from epochs import run_epoch  # this folder is first on sys.path when run as a script
from gluonnlp.data import batchify as bf
from mxnet import gluon
from mxnet.gluon.contrib.data.sampler import IntervalSampler
from samples import build_data

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE / "gluon.json"
COMMAND = "/tmp/mxvenv/bin/python tests/reference/record_gluon.py"

LENGTHS = (0, 1, 5, 7, 10, 42)
BATCH_SIZES = (1, 2, 3, 4)
LOADER_BATCH_SIZES = (2, 3, 4)  # batch_size=1 has no last batch to treat; the sampler covers it
MODES = ("keep", "discard", "rollover")
SCRIPTS = (
    ("full", "full", "full"),
    ("full", "abandon:1", "full", "full"),
    ("full", "islice-len", "full"),
    ("full", "abandon:2", "abandon:0", "full"),
)
LOADER_SCRIPTS = (
    ("full", "full", "full"),
    ("full", "abandon:1", "full", "full"),
)
SEQUENTIAL = ((0, 0), (1, 0), (5, 0), (5, 3), (3, 10))
INTERVAL = (
    (10, 3, True),
    (10, 3, False),
    (13, 3, True),
    (13, 3, False),
    (7, 7, True),
    (7, 1, False),
    (6, 4, True),
    (6, 4, False),
    (1, 1, True),
    (5, 6, True),  # Gluon asserts interval <= length
)


# -- epoch scripts --------------------------------------------------------------------


def epoch_case(n, size, mode, script, epochs):
    """One BatchSampler or DataLoader record: its settings, its script, what each epoch did."""
    return {
        "n": n,
        "batch_size": size,
        "last_batch": mode,
        "script": list(script),
        "epochs": epochs,
    }


def record_batch_sampler():
    cases = []
    for n in LENGTHS:
        for size in BATCH_SIZES:
            for mode in MODES:
                for script in SCRIPTS:
                    bs = gluon.data.BatchSampler(gluon.data.SequentialSampler(n), size, mode)
                    epochs = [run_epoch(bs, step, list) for step in script]
                    cases.append(epoch_case(n, size, mode, script, epochs))
    return cases


def record_loader():
    cases = []
    for n in LENGTHS:
        for size in LOADER_BATCH_SIZES:
            for mode in MODES:
                for script in LOADER_SCRIPTS:
                    dataset = gluon.data.ArrayDataset(np.arange(n))
                    loader = gluon.data.DataLoader(
                        dataset, batch_size=size, last_batch=mode, num_workers=0
                    )
                    epochs = [
                        run_epoch(loader, step, lambda b: b.asnumpy().tolist()) for step in script
                    ]
                    cases.append(epoch_case(n, size, mode, script, epochs))
    return cases


def outcome(make):
    """``make()``'s result as a record, or the error it raised."""
    try:
        return make()
    except Exception as error:  # recorded, not raised: the error is the reference
        return {"error": type(error).__name__, "message": str(error)}


def record_sequential():
    cases = []
    for length, start in SEQUENTIAL:

        def one(length=length, start=start):
            sampler = gluon.data.SequentialSampler(length, start)
            return {"indices": list(sampler), "len": len(sampler)}

        cases.append({"length": length, "start": start, **outcome(one)})
    return cases


def record_interval():
    cases = []
    for length, interval, rollover in INTERVAL:

        def one(length=length, interval=interval, rollover=rollover):
            sampler = IntervalSampler(length, interval, rollover=rollover)
            return {"indices": list(sampler), "len": len(sampler)}

        cases.append({"length": length, "interval": interval, "rollover": rollover, **outcome(one)})
    return cases


# -- batchify -------------------------------------------------------------------------
#
# A function is described as {"kind": "Stack"|"Pad", "args": [...], "kwargs": {...}},
# {"kind": "Tuple", "fns": [...]} (or "fns_list" for Tuple([...])),
# {"kind": "Dict", "fns": {...}} or {"kind": "List"}. An input sample that is a NumPy
# array is written {"__ndarray__": values, "dtype": name}; anything else is plain JSON.


def arr(values, dtype):
    return {"__ndarray__": values, "dtype": dtype}


def pad(*args, **kwargs):
    return {"kind": "Pad", "args": list(args), "kwargs": kwargs}


def stack(*args, **kwargs):
    return {"kind": "Stack", "args": list(args), "kwargs": kwargs}


INT_LISTS = [[1, 2, 3], [4], [5, 6]]
I64_1D = [arr([1, 2, 3], "int64"), arr([4], "int64"), arr([5, 6], "int64")]
F32_1D = [arr([1.5, 2.5], "float32"), arr([3.5], "float32")]
I32_1D = [arr([1, 2], "int32"), arr([3], "int32")]
U8_1D = [arr([1, 2], "uint8"), arr([3], "uint8")]
I64_2D_ROWS = [arr([[1, 2], [3, 4], [5, 6]], "int64"), arr([[7, 8]], "int64")]
F32_2D_COLS = [arr([[1, 2, 3], [4, 5, 6]], "float32"), arr([[7], [8]], "float32")]
I64_2D_COLS = [arr([[1, 2, 3], [4, 5, 6]], "int64"), arr([[7], [8]], "int64")]

BATCHIFY = [
    # Stack
    ("stack-ints", stack(), [0, 1, 2]),
    ("stack-floats", stack(), [0.5, 1.5]),
    ("stack-int-lists", stack(), [[1, 2], [3, 4]]),
    ("stack-i64-arrays", stack(), [arr([1, 2], "int64"), arr([3, 4], "int64")]),
    ("stack-f32-arrays", stack(), [arr([1, 2], "float32"), arr([3, 4], "float32")]),
    ("stack-i32-arrays", stack(), [arr([1, 2], "int32"), arr([3, 4], "int32")]),
    ("stack-mixed-arrays", stack(), [arr([1, 2], "int32"), arr([3.5, 4], "float32")]),
    ("stack-dtype-float32-ints", stack("float32"), [0, 1, 2]),
    (
        "stack-dtype-float32-kw",
        stack(dtype="float32"),
        [arr([1, 2], "int64"), arr([3, 4], "int64")],
    ),
    ("stack-dtype-int32-lists", stack(dtype="int32"), [[1, 2], [3, 4]]),
    (
        "stack-dtype-int32-floats",
        stack("int32"),
        [arr([1.7, 2], "float32"), arr([3, -4.2], "float32")],
    ),
    # Pad on lists of Python ints
    ("pad-lists-default", pad(), INT_LISTS),
    ("pad-lists-pad0", pad(pad_val=0), INT_LISTS),
    ("pad-lists-pad-1", pad(pad_val=-1), INT_LISTS),
    ("pad-lists-ret-length", pad(pad_val=0, ret_length=True), INT_LISTS),
    ("pad-lists-round-to", pad(pad_val=0, round_to=4), INT_LISTS),
    ("pad-lists-round-to-exact", pad(pad_val=0, round_to=3), INT_LISTS),
    ("pad-lists-dtype-int32", pad(pad_val=0, dtype="int32"), INT_LISTS),
    ("pad-lists-dtype-float32", pad(pad_val=0.5, dtype="float32"), INT_LISTS),
    ("pad-lists-pad-half", pad(pad_val=0.5), INT_LISTS),
    ("pad-lists-positional", pad(0, -1, True, "int32", 2), INT_LISTS),
    ("pad-lists-empty-sample", pad(pad_val=0), [[5, 6], []]),
    ("pad-lists-empty-first", pad(pad_val=7, ret_length=True), [[], [5, 6]]),
    ("pad-lists-all-equal", pad(pad_val=0), [[1, 2], [3, 4]]),
    ("pad-float-lists", pad(pad_val=0), [[0.5, 1.5], [2.5]]),
    # Pad on NumPy arrays
    ("pad-i64", pad(pad_val=0), I64_1D),
    ("pad-i64-ret-length", pad(pad_val=-1, ret_length=True), I64_1D),
    ("pad-i64-round-to", pad(pad_val=0, round_to=5), I64_1D),
    ("pad-i64-empty-sample", pad(pad_val=0), [arr([5, 6], "int64"), arr([], "int64")]),
    ("pad-i64-dtype-float32", pad(pad_val=0.25, dtype="float32"), I64_1D),
    ("pad-i64-pad-half", pad(pad_val=0.5), I64_1D),
    ("pad-f32", pad(pad_val=0), F32_1D),
    ("pad-f32-pad-half", pad(pad_val=0.5, ret_length=True), F32_1D),
    ("pad-f32-dtype-int32", pad(pad_val=0, dtype="int32"), F32_1D),
    ("pad-i32", pad(pad_val=-1), I32_1D),
    ("pad-u8", pad(pad_val=0), U8_1D),
    ("pad-u8-pad-300", pad(pad_val=300), U8_1D),
    ("pad-u8-pad-minus1", pad(pad_val=-1), U8_1D),
    ("pad-mixed-i32-then-i64", pad(pad_val=0), [arr([1, 2], "int32"), arr([3], "int64")]),
    ("pad-mixed-i64-then-f32", pad(pad_val=0), [arr([1, 2], "int64"), arr([3.5], "float32")]),
    ("pad-2d-axis0", pad(pad_val=0), I64_2D_ROWS),
    ("pad-2d-axis0-ret-length", pad(0, -1, True), I64_2D_ROWS),
    ("pad-2d-axis1", pad(axis=1, pad_val=-1), F32_2D_COLS),
    ("pad-2d-axis-1", pad(axis=-1, pad_val=-1, ret_length=True), F32_2D_COLS),
    ("pad-2d-axis-1-i64", pad(-1, 9), I64_2D_COLS),
    ("pad-2d-axis-1-round-to", pad(axis=-1, pad_val=0, round_to=4), I64_2D_COLS),
    # Tuple, Dict, List
    (
        "tuple-pad-stack",
        {"kind": "Tuple", "fns": [pad(pad_val=0), stack()]},
        [[[1, 2, 3], 0], [[4], 1]],
    ),
    (
        "tuple-pad-ret-length-stack-arrays",
        {"kind": "Tuple", "fns": [pad(pad_val=-1, ret_length=True), stack()]},
        [[arr([1, 2, 3], "int64"), 0], [arr([4], "int64"), 1]],
    ),
    (
        "tuple-as-list",
        {"kind": "Tuple", "fns_list": [stack(), pad(pad_val=0)]},
        [[0.5, [1, 2]], [1.5, [3]]],
    ),
    (
        "tuple-stack-list",
        {"kind": "Tuple", "fns": [stack(), {"kind": "List"}]},
        [[1, "a"], [2, "b"], [3, "c"]],
    ),
    (
        "dict-pad-stack",
        {"kind": "Dict", "fns": {"a": pad(pad_val=0), "b": stack()}},
        [{"a": [1, 2, 3], "b": 0}, {"a": [4], "b": 1}],
    ),
    (
        "dict-arrays-extra-key",
        {"kind": "Dict", "fns": {"a": pad(pad_val=0), "b": stack()}},
        [
            {"a": arr([1.5, 2.5], "float32"), "b": 0, "c": "x"},
            {"a": arr([3.5], "float32"), "b": 1, "c": "y"},
        ],
    ),
    ("list", {"kind": "List"}, [[1, 2], "text", 3]),
]


def build_fn(spec):
    kind = spec["kind"]
    if kind == "Stack":
        return bf.Stack(*spec["args"], **spec["kwargs"])
    if kind == "Pad":
        return bf.Pad(*spec["args"], **spec["kwargs"])
    if kind == "Tuple":
        if "fns_list" in spec:
            return bf.Tuple([build_fn(s) for s in spec["fns_list"]])
        return bf.Tuple(*[build_fn(s) for s in spec["fns"]])
    if kind == "Dict":
        return bf.Dict({key: build_fn(s) for key, s in spec["fns"].items()})
    if kind == "List":
        return bf.List()
    raise ValueError(kind)


def encode_output(value):
    if isinstance(value, mxnet.nd.NDArray):
        return {"values": value.asnumpy().tolist(), "dtype": np.dtype(value.dtype).name}
    if isinstance(value, tuple):
        return {"tuple": [encode_output(v) for v in value]}
    if isinstance(value, dict):
        return {"dict": {key: encode_output(v) for key, v in value.items()}}
    if isinstance(value, list):
        return {"list": [encode_output(v) for v in value]}
    if isinstance(value, np.ndarray):
        return {"values": value.tolist(), "dtype": value.dtype.name}
    return {"value": value}


def record_batchify():
    cases = []
    for case_id, spec, data in BATCHIFY:

        def one(spec=spec, data=data):
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                fn = build_fn(spec)
                result = encode_output(fn(build_data(data)))
            result["warnings"] = sorted({str(w.message)[:60] for w in caught})
            return result

        cases.append({"id": case_id, "fn": spec, "data": data, "output": outcome(one)})
    return cases


# -- output -----------------------------------------------------------------------------


def dump(document):
    """JSON with one case per line: small, and readable in a diff."""
    lines = ["{"]
    items = list(document.items())
    for i, (key, value) in enumerate(items):
        comma = "," if i < len(items) - 1 else ""
        if isinstance(value, list):
            lines.append(f"  {json.dumps(key)}: [")
            rows = [json.dumps(v, separators=(",", ":")) for v in value]
            lines.extend(f"    {row}," for row in rows[:-1])
            lines.extend(f"    {row}" for row in rows[-1:])
            lines.append(f"  ]{comma}")
        else:
            lines.append(f"  {json.dumps(key)}: {json.dumps(value)}{comma}")
    lines.append("}")
    return "\n".join(lines) + "\n"


def main():
    document = {
        "recorded_with": {
            "command": COMMAND,
            "python": platform.python_version(),
            "mxnet": mxnet.__version__,
            "gluonnlp": gluonnlp.__version__,
            "numpy": np.__version__,
        },
        "epoch_format": "[len_before, len_after_first (null if no batch), batches]",
        "scripts": {
            "full": "list(bs): the epoch runs to its end",
            "abandon:K": "take K batches from iter(bs), then drop the iterator",
            "islice-len": "list(itertools.islice(bs, len(bs))): stops after the last batch",
        },
        "batch_sampler": record_batch_sampler(),
        "data_loader": record_loader(),
        "sequential_sampler": record_sequential(),
        "interval_sampler": record_interval(),
        "batchify": record_batchify(),
    }
    OUT.write_text(dump(document))
    sys.stderr.write(f"wrote {OUT} ({OUT.stat().st_size} bytes)\n")


if __name__ == "__main__":
    main()
