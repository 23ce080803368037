import json

import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from rnd.cli import main
from rnd.evaluation import accuracy
from rnd.models import read_meta, save_checkpoint
from tests.training.helpers import synthetic_parent


@pytest.fixture(scope="module")
def parent(tmp_path_factory):
    return synthetic_parent(tmp_path_factory.mktemp("p") / "syn")


@pytest.fixture(scope="module")
def fm_checkpoint(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("fm") / "tiny"
    save_checkpoint(tiny_model, path, dataset="fashion-mnist", recipe={"kind": "standard"})
    return path


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_finetune_writes_a_child_checkpoint(parent, tmp_path):
    out = tmp_path / "gf"
    result = run(
        "finetune", parent, "--sigma", 0.1, "-K", 2, "--train-images", 300, "--out", out, "--no-progress"
    )
    assert result.exit_code == 0, result.output
    assert "GF sigma=0.1 K=2: test accuracy" in result.output
    meta = read_meta(out)
    assert meta.parent["sha256"] == read_meta(parent).sha256
    assert meta.recipe["kind"] == "gaussian-finetune" and meta.recipe["samples"] == 2
    assert meta.recipe["train_images"] == 300


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--sigma", "-0.1"], "sigma must be >= 0"),
        (["--sigma", "0.1", "-K", "0"], "samples (K) must be >= 1"),
        (["--sigma", "0.1", "--arch", "vgg11"], "'small-cnn' model but 'vgg11' was requested"),
        (["--sigma", "0.1", "--dataset", "cifar10"], "trained on 'synthetic' but 'cifar10' was requested"),
    ],
)
def test_finetune_bad_input(parent, tmp_path, args, words):
    result = run("finetune", parent, *args, "--out", tmp_path / "x", "--no-progress")
    assert result.exit_code == 2 and words in result.output
    assert not list(tmp_path.iterdir())


def test_train_adversarial_from_scratch(tmp_path):
    out = tmp_path / "at"
    result = run(
        "train",
        "--dataset",
        "synthetic",
        "--adversarial",
        "--eps",
        0.1,
        "--pgd-steps",
        1,
        "--epochs",
        1,
        "--train-images",
        200,
        "--out",
        out,
        "--no-progress",
    )
    assert result.exit_code == 0, result.output
    assert "PGD-AT eps=0.1 steps=1" in result.output and "PGD accuracy" in result.output
    meta = read_meta(out)
    assert meta.recipe["kind"] == "adversarial" and meta.recipe["init"] == "random"
    assert meta.recipe["pgd"] == {"eps": 0.1, "steps": 1, "step_size": 0.25, "random_start": True}
    assert 0 <= meta.metrics["pgd_accuracy"] <= meta.metrics["test_accuracy"] + 0.05


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--eps", "0"], "eps must be > 0"),
        (["--eps", "-0.1"], "eps must be > 0"),
        (["--pgd-steps", "0"], "PGD steps must be >= 1"),
        (["--pgd-step-size", "0"], "PGD step size must be > 0"),
    ],
)
def test_train_adversarial_bad_input(tmp_path, args, words):
    result = run(
        "train", "--dataset", "synthetic", "--adversarial", *args, "--out", tmp_path / "x", "--no-progress"
    )
    assert result.exit_code == 2 and words in result.output
    assert not list(tmp_path.iterdir())


def test_accuracy_table_and_plot(fm_checkpoint, tiny_model, fmnist_test, tmp_path):
    png = tmp_path / "acc.png"
    result = run(
        "accuracy",
        fm_checkpoint,
        fm_checkpoint,
        "--name",
        "std",
        "--name",
        "copy",
        "--nu",
        "0,0.1",
        "--draws",
        2,
        "--images",
        200,
        "--plot",
        png,
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    rows = {line.split()[0]: line.split()[1:] for line in lines if line.startswith(("std", "copy"))}
    assert rows["std"] == rows["copy"] and len(rows["std"]) == 4  # mean, +-std for two nus
    with Image.open(png) as im:
        assert im.format == "PNG"
    as_json = json.loads(run("accuracy", fm_checkpoint, "--nu", 0, "--images", 100, "--json").output)
    # nu = 0: the clean accuracy of the checkpoint's model on the first 100 test images, exactly
    expected = 100 * accuracy(tiny_model, fmnist_test, indices=torch.arange(100))
    assert as_json["tiny"][0]["nu"] == 0.0 and as_json["tiny"][0]["mean"] == pytest.approx(expected, abs=1e-9)


def test_accuracy_refuses_mixed_data_sets_and_bad_plot(fm_checkpoint, parent, tmp_path):
    result = run("accuracy", fm_checkpoint, parent, "--nu", 0)
    assert result.exit_code == 2 and "different data sets" in result.output
    result = run("accuracy", fm_checkpoint, "--nu", "0,-0.1")
    assert result.exit_code == 2 and "must be a finite number >= 0" in result.output
    result = run("accuracy", fm_checkpoint, "--plot", tmp_path / "x.pdf")
    assert result.exit_code == 2 and "ending in .png" in result.output


def test_calibrate_prints_nu_and_drop(fm_checkpoint):
    result = run(
        "calibrate",
        fm_checkpoint,
        "--max-drop",
        3,
        "--grid",
        0.05,
        "--grid",
        0.3,
        "--grid",
        0.6,
        "--refine",
        0,
        "--draws",
        2,
        "--images",
        300,
        "--json",
    )
    assert result.exit_code == 0, result.output
    cal = json.loads(result.output)
    assert cal["chosen"]["upper"] <= 3 < cal["next_over"]["upper"]
    text = run(
        "calibrate",
        fm_checkpoint,
        "--max-drop",
        3,
        "--grid",
        0.05,
        "--grid",
        0.3,
        "--grid",
        0.6,
        "--refine",
        0,
        "--draws",
        2,
        "--images",
        300,
    ).output
    assert f"nu = {cal['nu']:.4g}: accuracy" in text and "upper 95 % bound" in text and "exceeds" in text
