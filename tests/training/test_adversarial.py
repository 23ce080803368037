import pytest
import torch

from rnd.errors import CheckpointError, InputError
from rnd.evaluation import accuracy
from rnd.models import load_checkpoint, read_meta, save_checkpoint
from rnd.training.adversarial import adversarial_train
from rnd.training.loop import TrainConfig
from rnd.training.pgd import PGDConfig, pgd_accuracy, pgd_linf
from tests.training.helpers import Interrupted, InterruptedData, fmnist_slice, syn_data, synthetic_parent


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    return synthetic_parent(tmp_path_factory.mktemp("parent") / "p")


def test_pgd_stays_in_the_ball_and_fools_a_standard_model(tiny_model, attack_batch):
    x, y = attack_batch
    cfg = PGDConfig(eps=0.1, steps=5)
    grads = [None if p.grad is None else p.grad.clone() for p in tiny_model.parameters()]
    x_adv = pgd_linf(tiny_model, x, y, cfg, torch.Generator().manual_seed(0))
    assert float((x_adv - x).abs().max()) <= 0.1 + 1e-6
    assert float(x_adv.min()) >= 0 and float(x_adv.max()) <= 1
    with torch.no_grad():
        assert float((tiny_model(x_adv).argmax(1) == y).float().mean()) < 0.5  # all 20 were correct
    after = [None if p.grad is None else p.grad for p in tiny_model.parameters()]
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(grads, after, strict=True))
    assert cfg.alpha == pytest.approx(2.5 * 0.1 / 5)


def test_pgd_is_deterministic_under_its_generator_only(tiny_model, attack_batch):
    x, y = attack_batch
    cfg = PGDConfig(eps=0.1, steps=2)
    torch.manual_seed(1)
    expected = torch.rand(2)
    torch.manual_seed(1)
    a = pgd_linf(tiny_model, x, y, cfg, torch.Generator().manual_seed(3))
    b = pgd_linf(tiny_model, x, y, cfg, torch.Generator().manual_seed(3))
    c = pgd_linf(tiny_model, x, y, cfg, torch.Generator().manual_seed(4))
    assert torch.equal(torch.rand(2), expected)
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(InputError, match=r"explicit torch\.Generator"):
        pgd_linf(tiny_model, x, y, cfg, None)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"eps": 0}, "eps must be > 0"),
        ({"eps": -0.1}, "eps must be > 0"),
        ({"steps": 0}, "PGD steps must be >= 1"),
        ({"step_size": 0.0}, "PGD step size must be > 0"),
    ],
)
def test_bad_pgd_settings(kwargs, words):
    with pytest.raises(InputError, match=words):
        PGDConfig(**kwargs)


def test_at_is_more_robust_than_standard(tiny_model, fmnist_small_train, fmnist_test, tmp_path):
    save_checkpoint(tiny_model, tmp_path / "std", dataset="fashion-mnist")
    train, test = fmnist_slice(fmnist_small_train, 2000), fmnist_slice(fmnist_test, 200)
    pgd = PGDConfig(eps=0.1, steps=2, step_size=0.06)
    at, info = adversarial_train(
        "small-cnn",
        "fashion-mnist",
        tmp_path / "at",
        TrainConfig(epochs=1, batch_size=64, lr=2e-3),
        pgd,
        init_from=tmp_path / "std",
        train_data=train,
        test_data=test,
        robust_eval_images=100,
        progress=False,
    )
    check = PGDConfig(eps=0.1, steps=5)
    robust_std = pgd_accuracy(tiny_model, test, check, seed=1)
    robust_at = pgd_accuracy(at, test, check, seed=1)
    assert robust_at > robust_std + 0.08  # measured: 0.42 vs 0.265
    assert accuracy(at, test) > 0.5
    meta = read_meta(tmp_path / "at")
    assert meta.recipe["kind"] == "adversarial" and meta.recipe["pgd"]["eps"] == 0.1
    assert meta.recipe["pgd"]["step_size"] == 0.06 and meta.recipe["init"] == "parent"
    assert meta.parent["sha256"] == read_meta(tmp_path / "std").sha256
    assert meta.metrics["pgd_accuracy"] == info["metrics"]["pgd_accuracy"]


def test_at_then_gf_is_reproducible(parent, tmp_path):
    train, test = syn_data()
    cfg, pgd = TrainConfig(epochs=1, batch_size=50, seed=7), PGDConfig(eps=0.1, steps=1)
    runs = [
        adversarial_train(
            "small-cnn",
            "synthetic",
            tmp_path / name,
            cfg,
            pgd,
            gf_sigma=0.1,
            gf_samples=2,
            init_from=parent,
            train_data=train,
            test_data=test,
            robust_eval_images=50,
            progress=False,
        )[0].state_dict()
        for name in ("a", "b")
    ]
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])
    meta = read_meta(tmp_path / "a")
    assert meta.recipe["kind"] == "adversarial+gaussian-finetune"
    assert meta.recipe["gaussian_finetune"]["sigma"] == 0.1
    assert meta.sha256 == read_meta(tmp_path / "b").sha256


def test_parent_of_another_architecture_or_data_set(parent, tmp_path):
    train, test = syn_data()
    with pytest.raises(CheckpointError, match="'small-cnn' model but 'resnet8' was requested"):
        adversarial_train(
            "resnet8", "synthetic", tmp_path / "x", init_from=parent, train_data=train, test_data=test
        )
    with pytest.raises(CheckpointError, match="trained on 'synthetic' but 'fashion-mnist' was requested"):
        adversarial_train(
            "small-cnn", "fashion-mnist", tmp_path / "x", init_from=parent, train_data=train, test_data=test
        )
    assert not (tmp_path / "x.safetensors").exists()


def test_interrupted_at_leaves_no_checkpoint(parent, tmp_path):
    train, test = syn_data()
    broken = InterruptedData("synthetic", "train", train.images, train.labels, train.classes)
    with pytest.raises(Interrupted):
        adversarial_train(
            "small-cnn",
            "synthetic",
            tmp_path / "at",
            TrainConfig(epochs=1, batch_size=32),
            PGDConfig(steps=1),
            init_from=parent,
            train_data=broken,
            test_data=test,
            progress=False,
        )
    assert not list(tmp_path.iterdir())
    load_checkpoint(parent)
