import math

import pytest
import torch
import torch.nn.functional as F

from rnd.defense import RandomNoiseDefense
from rnd.errors import CheckpointError, InputError
from rnd.evaluation.strength import accuracy_vs_nu
from rnd.models import load_checkpoint, read_meta, save_checkpoint
from rnd.training.gaussian import finetune_gaussian, gaussian_loss, smoothed_log_probs
from tests.training.helpers import Interrupted, InterruptedData, fmnist_slice, syn_data, synthetic_parent


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    return synthetic_parent(tmp_path_factory.mktemp("parent") / "p")


def test_loss_is_log_of_the_mean_softmax(tiny_model, fmnist_test):
    x, y = fmnist_test.get(range(8))
    got = smoothed_log_probs(tiny_model, x, 0.2, 3, torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1)
    noise = torch.randn((3, *x.shape), generator=g)
    with torch.no_grad():
        probs = torch.stack([F.softmax(tiny_model((x + 0.2 * n).clamp(0, 1)), 1) for n in noise])
    assert torch.allclose(got, probs.mean(0).log(), atol=1e-5)
    # the expectation sits inside the log: -log E F  <=  E[-log F] (Jensen), strictly here
    loss = gaussian_loss(0.2, 3)(tiny_model, x, y, torch.Generator().manual_seed(1))
    mean_ce = -probs.log().gather(2, y.expand(3, -1)[..., None]).mean()
    assert float(loss.detach()) < float(mean_ce)
    # sigma = 0, K = 1 is plain cross-entropy
    plain = gaussian_loss(0.0, 1)(tiny_model, x, y, torch.Generator())
    assert math.isclose(float(plain), float(F.cross_entropy(tiny_model(x), y)), rel_tol=1e-5)


def test_gf_improves_accuracy_under_noise(tiny_model, fmnist_small_train, fmnist_test, tmp_path):
    parent = tmp_path / "parent"
    save_checkpoint(tiny_model, parent, dataset="fashion-mnist", recipe={"kind": "standard"})
    train, test = fmnist_slice(fmnist_small_train, 3000), fmnist_slice(fmnist_test, 1000)
    gf, info = finetune_gaussian(
        parent,
        sigma=0.3,
        K=2,
        epochs=1,
        lr=2e-3,
        seed=0,
        out=tmp_path / "gf",
        train_data=train,
        test_data=test,
        progress=False,
    )
    before = accuracy_vs_nu(tiny_model, test, [0, 0.5], draws=2, seed=5)
    after = accuracy_vs_nu(gf, test, [0, 0.5], draws=2, seed=5)
    assert after[1].mean > before[1].mean + 8  # percentage points under nu = 0.5 (measured: about +19)
    assert after[0].mean > before[0].mean - 5  # clean accuracy stays close (measured: about -2)
    meta = read_meta(tmp_path / "gf")
    assert meta.parent["sha256"] == read_meta(parent).sha256
    assert meta.parent["path"].endswith("parent.safetensors")
    assert meta.recipe["kind"] == "gaussian-finetune"
    assert meta.recipe["sigma"] == 0.3 and meta.recipe["samples"] == 2
    assert math.isclose(meta.metrics["test_accuracy"], info["metrics"]["test_accuracy"])


def test_reproducible_and_global_rng_untouched(parent, tmp_path):
    train, test = syn_data()
    torch.manual_seed(3)
    expected = torch.rand(2)
    torch.manual_seed(3)
    runs = [
        finetune_gaussian(
            parent, 0.1, 2, 1, 1e-3, seed, None, train_data=train, test_data=test, progress=False
        )[0].state_dict()
        for seed in (4, 4, 5)
    ]
    assert torch.equal(torch.rand(2), expected)
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    assert not all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


@pytest.mark.parametrize(
    ("kwargs", "error", "words"),
    [
        ({"sigma": -0.1}, InputError, "sigma must be >= 0"),
        ({"K": 0}, InputError, "samples (K) must be >= 1"),
        ({"epochs": 0}, InputError, "epochs"),
        ({"arch": "resnet8"}, CheckpointError, "'small-cnn' model but 'resnet8' was requested"),
        ({"dataset": "fashion-mnist"}, CheckpointError, "trained on 'synthetic' but 'fashion-mnist'"),
    ],
)
def test_bad_input_is_a_clear_error_and_writes_nothing(parent, tmp_path, kwargs, error, words):
    train, test = syn_data()
    args = {"sigma": 0.1, "K": 1, "epochs": 1, "lr": 1e-3, "seed": 0, "out": tmp_path / "child"} | kwargs
    with pytest.raises(error, match=words.replace("(", r"\(").replace(")", r"\)")):
        finetune_gaussian(parent, train_data=train, test_data=test, progress=False, **args)
    assert not list(tmp_path.iterdir())


def test_data_of_another_data_set_is_refused(tiny_model, tmp_path):
    save_checkpoint(tiny_model, tmp_path / "fm", dataset="fashion-mnist")
    train, test = syn_data()
    with pytest.raises(
        CheckpointError, match="trained on 'fashion-mnist' but the training data is 'synthetic'"
    ):
        finetune_gaussian(
            tmp_path / "fm", 0.1, 1, 1, 1e-3, 0, tmp_path / "x", train_data=train, test_data=test
        )


def test_interrupted_finetune_leaves_no_checkpoint(parent, tmp_path):
    train, test = syn_data()
    broken = InterruptedData("synthetic", "train", train.images, train.labels, train.classes)
    with pytest.raises(Interrupted):
        finetune_gaussian(
            parent,
            0.1,
            1,
            1,
            1e-3,
            0,
            tmp_path / "child",
            batch_size=32,
            train_data=broken,
            test_data=test,
            progress=False,
        )
    assert not list(tmp_path.iterdir())
    load_checkpoint(parent)  # the parent is untouched


def test_noise_of_the_loss_is_clipped_like_rnd(tiny_model, fmnist_test):
    x, _ = fmnist_test.get(range(4))
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    got = smoothed_log_probs(tiny_model, x, 0.3, 1, g1)
    defense = RandomNoiseDefense(tiny_model, nu=0.3, generator=g2)
    with torch.no_grad():
        assert torch.allclose(got, F.log_softmax(defense(x), 1), atol=1e-5)
