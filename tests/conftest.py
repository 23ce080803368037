"""Shared fixtures: a small CNN trained on a slice of real Fashion-MNIST, in seconds."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rnd.data import load_fashion_mnist
from rnd.data.base import ImageDataset
from rnd.training import TrainConfig, fit
from rnd.training.standard import init_model

torch.set_num_threads(min(2, torch.get_num_threads()))


class CountingModel(nn.Module):
    """Counts images forwarded, independently of the oracle's own accounting."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.images = 0
        self.calls = 0
        self.input_shape = model.input_shape
        self.num_classes = model.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.images += x.shape[0]
        self.calls += 1
        return self.model(x)


@pytest.fixture(scope="session")
def fmnist_test() -> ImageDataset:
    return load_fashion_mnist("test")


@pytest.fixture(scope="session")
def fmnist_small_train() -> ImageDataset:
    full = load_fashion_mnist("train")
    return ImageDataset("fashion-mnist", "train", full.images[:6000], full.labels[:6000], full.classes)


@pytest.fixture(scope="session")
def tiny_model(fmnist_small_train: ImageDataset) -> nn.Module:
    """SmallCNN (narrow) trained for one epoch on 6,000 real images: about 80 % accuracy."""
    model = init_model("small-cnn", fmnist_small_train, seed=0, width=8, hidden=32)
    fit(model, fmnist_small_train, TrainConfig(epochs=2, batch_size=64, lr=3e-3, seed=0), progress=False)
    return model.eval()


@pytest.fixture(scope="session")
def attack_batch(tiny_model: nn.Module, fmnist_test: ImageDataset) -> tuple[torch.Tensor, torch.Tensor]:
    """20 test images the tiny model classifies correctly."""
    from rnd.evaluation import correctly_classified

    idx = correctly_classified(tiny_model, fmnist_test, 20)
    return fmnist_test.get(idx)


@pytest.fixture(scope="session")
def pg_cluster():
    """A throwaway PostgreSQL server for the session (tests/postgres.py); skipped without Debian's
    postgresql (CI installs it and sets RND_REQUIRE_POSTGRES, which fails instead)."""
    from tests.postgres import Cluster

    cluster = Cluster()
    yield cluster
    cluster.remove()
