"""`rnd train --dataset cifar10` on a small data set in the real binary format, then `rnd attack` on it."""

import json

import pytest
from click.testing import CliRunner

from rnd.cli import main
from rnd.models import load_checkpoint, read_meta
from tests.data.test_cifar10 import write_cifar10


def run(*args, env=None):
    return CliRunner().invoke(main, [str(a) for a in args], env=env)


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    """80 training images (5 batches of 16) and 16 test images."""
    return write_cifar10(tmp_path_factory.mktemp("cifar"), train_per_file=16, test=16)


def test_train_on_cifar10_then_attack_the_checkpoint(cifar_root, tmp_path):
    out = tmp_path / "ck"
    result = run(
        "train", "--dataset", "cifar10", "--root", cifar_root, "--arch", "vgg-small", "--epochs", 6,
        "--batch-size", 16, "--lr", 3e-3, "--out", out, "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "vgg-small on cifar10: test accuracy" in result.output and str(out) in result.output
    meta = read_meta(out)
    assert meta.dataset == "cifar10" and meta.architecture == "vgg-small"
    assert meta.arch_kwargs["input_shape"] == [3, 32, 32]
    assert meta.metrics["test_size"] == 16 and meta.metrics["test_accuracy"] > 0.1  # chance is 0.1
    model, _ = load_checkpoint(out)
    assert model.input_shape == (3, 32, 32)

    result = run(
        "attack", "--checkpoint", out, "--dataset", "cifar10", "--data-root", cifar_root,
        "--attack", "square", "--images", 1, "--budget", 20, "--nu", 0.02, "--json", "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.output[result.output.index("{") :])
    assert report["dataset"] == "cifar10" and report["images"] == 1
    assert [r["defense"] for r in report["rows"]] == ["rnd:nu=0.02"]
    assert report["rows"][0]["images"] == 1 and report["budget"] == 20


def test_train_vgg16_on_cifar10_from_rnd_cifar10(cifar_root, tmp_path):
    out = tmp_path / "vgg16"
    env = {"RND_CIFAR10": str(cifar_root)}
    result = run(
        "train", "--dataset", "cifar10", "--arch", "vgg16", "--epochs", 1, "--train-images", 32,
        "--batch-size", 16, "--out", out, "--no-progress", env=env,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    meta = read_meta(out)
    assert meta.dataset == "cifar10" and meta.architecture == "vgg16"
    model, _ = load_checkpoint(out)
    assert sum(p.numel() for p in model.parameters()) == 14_728_266


def test_adversarial_training_reads_the_same_root(cifar_root, tmp_path):
    out = tmp_path / "at"
    result = run(
        "train", "--dataset", "cifar10", "--data-root", cifar_root, "--arch", "vgg-small", "--adversarial",
        "--eps", 0.03, "--pgd-steps", 1, "--epochs", 1, "--out", out, "--no-progress",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    meta = read_meta(out)
    assert meta.dataset == "cifar10" and meta.recipe["kind"] == "adversarial"
    assert meta.recipe["train_images"] == 80 and meta.metrics["test_size"] == 16


@pytest.mark.parametrize("where", ["unset", "empty folder"])
def test_without_the_data_one_line_and_exit_2(tmp_path, where):
    root = ["--data-root", tmp_path] if where == "empty folder" else []
    result = run(
        "train", "--dataset", "cifar10", "--arch", "vgg16", *root, "--out", tmp_path / "ck", "--no-progress",
        env={"RND_CIFAR10": None},
    )  # fmt: skip
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "--data-root" in lines[0], result.output
    assert "RND_CIFAR10" in lines[0] and "data_batch_1.bin" in lines[0]
    assert not list(tmp_path.glob("ck*"))  # nothing written
