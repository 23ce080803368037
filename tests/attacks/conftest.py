"""Fixtures of the attack tests."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rnd.data.base import ImageDataset
from rnd.data.synthetic import make_synthetic
from rnd.models import build_model
from rnd.training import TrainConfig, fit
from rnd.training.standard import init_model


@pytest.fixture(scope="session")
def surrogate(fmnist_small_train: ImageDataset) -> nn.Module:
    """A second small CNN, its own seed and width, trained on the same 6,000 images as `tiny_model`
    (the attacker's surrogate of the transfer and hybrid tests)."""
    model = init_model("small-cnn", fmnist_small_train, seed=1, width=12, hidden=48)
    fit(model, fmnist_small_train, TrainConfig(epochs=2, batch_size=64, lr=3e-3, seed=1), progress=False)
    return model.eval()


@pytest.fixture
def one_thread():
    """One torch thread for the test, restored afterwards. Label-only attacks forward many small
    batches (binary searches), which two threads slow down tenfold on a loaded two-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# The Blacklight tests (blinding, OARS): an untrained narrow CNN and 8 synthetic images labelled by it.
@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("small-cnn", (1, 28, 28), 10, width=4, hidden=16).eval()


@pytest.fixture(scope="module")
def data(model):
    x, _ = make_synthetic(16, seed=3).get(torch.arange(16))
    with torch.no_grad():
        y = model(x).argmax(1)  # attack the model's own labels: every image starts correct
    return x[:8], y[:8]
