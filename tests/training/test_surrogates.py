"""The surrogate zoo: trained once into $RND_HOME/surrogates, loaded the next time without training;
its recipes are independent of the default model's (another seed, other architectures)."""

from __future__ import annotations

import pytest
import torch

from rnd.errors import UnknownNameError
from rnd.models import read_meta
from rnd.training import surrogates as zoo_module
from rnd.training.loop import TrainConfig
from rnd.training.surrogates import (
    DEFAULT_SEED,
    SURROGATES,
    SurrogateRecipe,
    default_surrogate_specs,
    load_or_train_surrogates,
)
from tests.training.helpers import fmnist_slice

TINY = {
    "tiny-cnn": SurrogateRecipe("small-cnn", TrainConfig(epochs=1, batch_size=50, lr=3e-3, seed=5),
                                {"width": 4, "hidden": 16}),
    "tiny-resnet": SurrogateRecipe("resnet8", TrainConfig(epochs=1, batch_size=50, lr=3e-3, seed=6),
                                   {"width": 4}),
}  # fmt: skip


@pytest.fixture
def tiny_zoo(monkeypatch, fmnist_small_train, fmnist_test):
    """The Fashion-MNIST zoo replaced by two tiny recipes trained on 300 images, tested on 200;
    `calls` records every training run."""
    calls: list[str] = []
    data = {"train": fmnist_slice(fmnist_small_train, 300), "test": fmnist_slice(fmnist_test, 200)}
    monkeypatch.setitem(SURROGATES, "fashion-mnist", TINY)
    monkeypatch.setattr(zoo_module, "load_dataset", lambda name, split: data[split])
    train = zoo_module.train_surrogate

    def counted(dataset, name, home=None, progress=True):
        calls.append(name)
        return train(dataset, name, home, progress)

    monkeypatch.setattr(zoo_module, "train_surrogate", counted)
    return calls


def test_the_zoo_trains_into_rnd_home_once_then_loads(tiny_zoo, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("RND_HOME", str(tmp_path))
    first = load_or_train_surrogates("fashion-mnist", progress=False)
    assert tiny_zoo == ["tiny-cnn", "tiny-resnet"]
    assert "training tiny-cnn" in caplog.text
    assert [p for _, p in first] == [tmp_path / "surrogates" / f"fashion-mnist-{n}" for n in TINY]
    meta = read_meta(first[1][1])
    assert meta.architecture == "resnet8" and meta.recipe["seed"] == 6
    assert meta.recipe["surrogate"] == "tiny-resnet" and meta.recipe["data"] == "public training split"
    assert meta.metrics["train_seconds"] >= 0

    again = load_or_train_surrogates("fashion-mnist", ["tiny-resnet"], progress=False)
    assert tiny_zoo == ["tiny-cnn", "tiny-resnet"]  # nothing trained the second time
    x = torch.rand(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(again[0][0](x), first[1][0](x))
    assert default_surrogate_specs("fashion-mnist") == [str(p) for _, p in first]
    assert tiny_zoo == ["tiny-cnn", "tiny-resnet"]


def test_training_is_deterministic(tiny_zoo, tmp_path):
    a = load_or_train_surrogates("fashion-mnist", ["tiny-cnn"], home=tmp_path / "a", progress=False)
    b = load_or_train_surrogates("fashion-mnist", ["tiny-cnn"], home=tmp_path / "b", progress=False)
    assert read_meta(a[0][1]).sha256 == read_meta(b[0][1]).sha256


def test_an_unknown_name_or_data_set_fails_before_any_training(tiny_zoo, tmp_path):
    with pytest.raises(UnknownNameError, match="tiny-cnn"):
        load_or_train_surrogates("fashion-mnist", ["tiny-cnn", "nope"], home=tmp_path, progress=False)
    with pytest.raises(UnknownNameError, match="surrogate zoo"):
        load_or_train_surrogates("cifar100", home=tmp_path, progress=False)
    assert tiny_zoo == [] and not (tmp_path / "surrogates").exists()


def test_the_real_zoo_is_independent_of_the_default_model():
    for recipes in SURROGATES.values():
        seeds = [r.config.seed for r in recipes.values()]
        assert DEFAULT_SEED not in seeds and len(set(seeds)) == len(seeds)
        assert len({(r.arch, tuple(sorted(r.arch_kwargs.items()))) for r in recipes.values()}) >= 3
        assert len({r.arch for r in recipes.values()}) >= 3  # different architectures
