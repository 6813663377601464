"""Records what Keras 3 really does with a ``PyDataset``, for tests/test_reference.py.

Run it with the project's environment, which has Keras and torch::

    KERAS_BACKEND=torch .venv/bin/python tests/reference/record_keras.py

It writes tests/reference/keras.json: the versions, this command, and one
record per case:

* ``finite_iteration``: a dataset of 3 batches (slices of ``np.arange(5)`` by
  2): ``list(itertools.islice(iter(ds), 6))`` and ``ds.num_batches``.
* ``fit_endless``: an endless dataset (``num_batches`` is None) in
  ``model.fit(ds, epochs=3, steps_per_epoch=3)``; ``fit_finite``: a dataset of
  4 batches in ``model.fit(ds, epochs=2)``. Both pass ``shuffle=False`` (fit's
  default ``True`` would shuffle the finite dataset's batch order). Each records, in order, every
  ``__getitem__(i)`` (as ``i``) and every ``"on_epoch_begin"`` /
  ``"on_epoch_end"``.
* ``options``: for ``workers`` in 0, 1, 2 and ``use_multiprocessing`` in
  False, True, 0, 1: whether the dataset constructs, and what Keras's
  ``PyDatasetAdapter`` makes of it (no enqueuer means batches are loaded in
  the main process).
"""

from __future__ import annotations

import itertools
import json
import os
import pathlib
import platform
import sys

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras
import numpy as np
import torch
from keras.src.trainers.data_adapters import py_dataset_adapter

HERE = pathlib.Path(__file__).resolve().parent
OUT = HERE / "keras.json"
COMMAND = "KERAS_BACKEND=torch .venv/bin/python tests/reference/record_keras.py"


class Slices(keras.utils.PyDataset):
    """3 batches: np.arange(5) in slices of 2."""

    def __len__(self):
        return 3

    def __getitem__(self, i):
        return np.arange(5)[2 * i : 2 * i + 2]


class Logged(keras.utils.PyDataset):
    """Batches (x, y) of 2 rows; logs every __getitem__ and epoch hook."""

    def __init__(self, count, **kwargs):
        super().__init__(**kwargs)
        self.count = count
        self.log = []

    @property
    def num_batches(self):
        return self.count

    def __getitem__(self, i):
        self.log.append(i)
        x = np.full((2, 3), i, dtype=np.float32)
        return x, np.zeros((2, 1), dtype=np.float32)

    def on_epoch_begin(self):
        self.log.append("on_epoch_begin")

    def on_epoch_end(self):
        self.log.append("on_epoch_end")


def fit_log(dataset, **fit_kwargs):
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    model.fit(dataset, verbose=0, **fit_kwargs)
    return dataset.log


class _SeenEnqueuer(py_dataset_adapter.OrderedEnqueuer):
    """Keras's enqueuer, remembering how the adapter configured it (it keeps no attributes)."""

    def __init__(self, py_dataset, workers=1, use_multiprocessing=False, **kwargs):
        super().__init__(py_dataset, workers, use_multiprocessing, **kwargs)
        self.seen = {"workers": workers, "use_multiprocessing": use_multiprocessing}


def record_options():
    py_dataset_adapter.OrderedEnqueuer = _SeenEnqueuer  # only for the adapters made below
    cases = []
    for workers in (0, 1, 2):
        for use_multiprocessing in (False, True, 0, 1):
            record = {"workers": workers, "use_multiprocessing": use_multiprocessing}
            try:
                ds = Logged(4, workers=workers, use_multiprocessing=use_multiprocessing)
            except Exception as error:  # recorded: the error is the reference
                record["error"] = f"{type(error).__name__}: {error}"
                cases.append(record)
                continue
            enqueuer = py_dataset_adapter.PyDatasetAdapter(ds).enqueuer
            record["constructs"] = True
            record["enqueuer"] = enqueuer is not None
            record["enqueuer_workers"] = None if enqueuer is None else enqueuer.seen["workers"]
            record["enqueuer_processes"] = (
                None if enqueuer is None else bool(enqueuer.seen["use_multiprocessing"])
            )
            cases.append(record)
    return cases


def main():
    ds = Slices()
    document = {
        "recorded_with": {
            "command": COMMAND,
            "python": platform.python_version(),
            "keras": keras.__version__,
            "backend": keras.backend.backend(),
            "torch": torch.__version__,
            "numpy": np.__version__,
        },
        "finite_iteration": {
            "batches": [b.tolist() for b in itertools.islice(iter(ds), 6)],
            "num_batches": ds.num_batches,
        },
        "fit_endless": {
            "fit": {"epochs": 3, "steps_per_epoch": 3, "shuffle": False},
            "log": fit_log(Logged(None), epochs=3, steps_per_epoch=3, shuffle=False),
        },
        "fit_finite": {
            "num_batches": 4,
            "fit": {"epochs": 2, "shuffle": False},
            "log": fit_log(Logged(4), epochs=2, shuffle=False),
        },
        "options": record_options(),
    }
    OUT.write_text(json.dumps(document, indent=1) + "\n")
    sys.stderr.write(f"wrote {OUT} ({OUT.stat().st_size} bytes)\n")


if __name__ == "__main__":
    main()
