"""Keras 3.15 (torch backend): fit, evaluate and predict take batchloader's loader."""

from __future__ import annotations

import os

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras
import numpy as np
import pytest
import torch

import batchloader

pytestmark = [
    pytest.mark.filterwarnings("ignore::UserWarning:keras"),
    # Keras's torch backend converts tensors with np.asarray(copy=False), whichever loader.
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]

X = torch.linspace(-1, 1, 40).reshape(40, 1)
Y = 3 * X + 1


class Batches(batchloader.PyDataset):
    """Keras-style: each item is a whole batch of 8."""

    def __len__(self):
        return 5

    def __getitem__(self, i):
        return X[8 * i : 8 * i + 8].numpy(), Y[8 * i : 8 * i + 8].numpy()


def _model() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((1,)), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    return model


def _run(loader) -> tuple[list[float], float, np.ndarray]:
    model = _model()
    history = model.fit(loader, epochs=3, verbose=0)
    return (
        history.history["loss"],
        model.evaluate(loader, verbose=0),
        model.predict(loader, verbose=0),
    )


def test_fit_evaluate_predict_match_torchs_loader():
    dataset = torch.utils.data.TensorDataset(X, Y)
    theirs = _run(torch.utils.data.DataLoader(dataset, batch_size=8))
    ours = _run(batchloader.DataLoader(dataset, batch_size=8, num_workers=2))
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-5)
    assert ours[1] == pytest.approx(theirs[1], rel=1e-5)
    np.testing.assert_allclose(ours[2], theirs[2], rtol=1e-5)


def test_a_loader_over_a_batch_dataset_trains_in_keras():
    dataset = torch.utils.data.TensorDataset(X, Y)
    theirs = _run(torch.utils.data.DataLoader(dataset, batch_size=8))
    ours = _run(batchloader.DataLoader(Batches(), batch_size=None))
    np.testing.assert_allclose(ours[0], theirs[0], rtol=1e-5)
    assert ours[2].shape == (40, 1)
