"""Provenance of surrogates: the target against itself agrees on every image, a substitute reports
the queries it took, a public-data surrogate none, and the rows follow the table's columns."""

from __future__ import annotations

import pytest
import torch

from rnd.data.base import ImageDataset
from rnd.errors import InputError
from rnd.models import save_checkpoint
from rnd.models.predict import predict
from rnd.oracle import Oracle
from rnd.training.provenance import PROVENANCE_COLUMNS, provenance_rows, surrogate_provenance
from rnd.training.standard import init_model
from rnd.training.substitute import train_substitute
from tests.training.helpers import fmnist_slice


@pytest.fixture(scope="module")
def folder(tiny_model, fmnist_small_train, fmnist_test, tmp_path_factory):
    root = tmp_path_factory.mktemp("provenance")
    save_checkpoint(tiny_model, root / "target", dataset="fashion-mnist", recipe={"kind": "standard"},
                    metrics={"train_seconds": 3.25})  # fmt: skip
    other = init_model("resnet8", fmnist_small_train, seed=3, width=4).eval()
    save_checkpoint(
        other, root / "other", dataset="fashion-mnist", recipe={"kind": "standard", "train_images": 300}
    )
    x, _ = fmnist_test.get(torch.arange(9980, 10000))
    sub = train_substitute(Oracle(tiny_model, output="labels"), x, rounds=2, epochs=2, progress=False)
    sub.save(root / "sub")
    return root


def test_the_target_agrees_with_itself(folder, tiny_model, fmnist_test):
    test = fmnist_slice(fmnist_test, 500)
    (p,) = surrogate_provenance([folder / "target"], tiny_model, test)
    x, y = test.get()
    assert p.agreement == 1.0 and p.test_images == 500
    assert p.test_accuracy == pytest.approx(float((predict(tiny_model, x) == y).float().mean()))
    assert p.architecture == "small-cnn" and p.data == "fashion-mnist train split" and p.queries == 0
    assert p.parameters == sum(q.numel() for q in tiny_model.parameters()) and p.train_seconds == 3.25
    assert len(p.sha256) == 64


def test_each_surrogate_says_what_it_was_trained_on_and_what_it_cost(folder, tiny_model, fmnist_test):
    items = surrogate_provenance([folder / "other", folder / "sub"], tiny_model, fmnist_test, n=300)
    other, sub = items
    assert other.architecture == "resnet8" and other.data == "first 300 of fashion-mnist train"
    assert other.queries == 0 and other.train_seconds is None
    assert sub.data == "40 target labels" and sub.queries == 40
    assert all(0 <= p.agreement <= 1 and p.test_images == 300 for p in items)
    rows = provenance_rows(items)
    assert [len(r) for r in rows] == [len(PROVENANCE_COLUMNS)] * 2
    assert rows[1][6] == "40" and rows[0][7] == "-" and rows[0][8].endswith("...")


def test_no_surrogate_or_another_shape_is_an_input_error(folder, tiny_model, fmnist_test):
    with pytest.raises(InputError, match="at least one"):
        surrogate_provenance([], tiny_model, fmnist_test)
    colour = ImageDataset(
        "synthetic", "test", fmnist_test.images[:2].repeat(1, 3, 1, 1), fmnist_test.labels[:2]
    )
    save_checkpoint(init_model("small-cnn", colour, seed=0), folder / "rgb", dataset="synthetic")
    with pytest.raises(InputError, match="3x28x28"):
        surrogate_provenance([folder / "rgb"], tiny_model, fmnist_test, n=10)
