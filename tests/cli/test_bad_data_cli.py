"""Damaged data files and checkpoints through the CLI: exit status 2, one line naming the problem and
the way out, and nothing created or changed (tiny files in the real formats, written in tmp_path)."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rnd.cli import main
from rnd.models import build_model, save_checkpoint


def _idx(array: np.ndarray) -> bytes:
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return bytes([0, 0, 0x08, array.ndim]) + dims + array.astype(np.uint8).tobytes()


def _fmnist(folder: Path, n: int = 4) -> tuple[Path, Path]:
    """A tiny Fashion-MNIST test split: gzip-compressed IDX files, as Debian ships them."""
    folder.mkdir()
    images = np.random.default_rng(0).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    img, lab = folder / "t10k-images-idx3-ubyte.gz", folder / "t10k-labels-idx1-ubyte.gz"
    img.write_bytes(gzip.compress(_idx(images)))
    lab.write_bytes(gzip.compress(_idx(np.arange(n) % 10)))
    return img, lab


def _checkpoint(folder: Path, dataset: str = "fashion-mnist", shape=(1, 28, 28)) -> Path:
    folder.mkdir()
    model = build_model("small-cnn", shape, 10, dataset=dataset, width=4, hidden=8)
    save_checkpoint(model, folder / "m", dataset=dataset)
    return folder / "m"


def _snapshot(*roots: Path) -> dict[str, str]:
    """Every path under `roots` with the sha256 of each file (folders as 'dir')."""
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            out[str(p)] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


@pytest.fixture
def env(tmp_path):
    """A Fashion-MNIST folder, a checkpoint and an empty RND_HOME, all under tmp_path."""
    img, lab = _fmnist(tmp_path / "fmnist")
    ck = _checkpoint(tmp_path / "ck")
    (tmp_path / "home").mkdir()
    return {
        "tmp": tmp_path,
        "img": img,
        "lab": lab,
        "ck": ck,
        "vars": {"RND_FASHION_MNIST": str(img.parent), "RND_HOME": str(tmp_path / "home")},
    }


def _run(env, *args: str):
    """Run `rnd accuracy ARGS` on 4 images without noise; returns click's Result."""
    argv = ["accuracy", *args, "--nu", "0", "--draws", "1", "--images", "4", "--no-progress"]
    return CliRunner().invoke(main, argv, env=env["vars"])


def _assert_refused(env, args: tuple[str, ...], *words: str) -> None:
    before = _snapshot(env["tmp"])
    result = _run(env, *args)
    after = _snapshot(env["tmp"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    for word in words:
        assert word in lines[0], lines[0]
    assert "Traceback" not in result.output
    assert after == before  # nothing created, removed or changed


def test_intact_tiny_files_work(env):
    result = _run(env, str(env["ck"]))
    assert result.exit_code == 0, result.output
    assert "4 fashion-mnist test images" in result.output


def _bad_deflate(raw: bytes) -> bytes:
    return bytes([0x1F, 0x8B, 8, 0, 0, 0, 0, 0, 0, 0xFF]) + b"\x07" + raw[20:60]


@pytest.mark.parametrize(
    "which, damage, words",
    [
        ("img", _bad_deflate, ["invalid block type"]),  # zlib.error
        ("img", lambda raw: raw[:-20], ["ended before"]),  # EOFError
        ("img", lambda raw: raw[:-8] + bytes(8), ["CRC check failed"]),  # gzip.BadGzipFile
        ("img", lambda raw: gzip.compress(bytes([0, 0, 8, 3, 0, 0])), ["header needs 16 bytes"]),  # struct
        ("img", lambda raw: gzip.compress(gzip.decompress(raw)[:-10]), ["truncated", "3126 data bytes"]),
        ("lab", lambda raw: gzip.compress(_idx(np.array([0, 1, 10, 3]))), ["1 label(s) outside the 10"]),
    ],
)
def test_damaged_fashion_mnist_file(env, which, damage, words):
    path = env[which]
    path.write_bytes(damage(path.read_bytes()))
    _assert_refused(
        env, (str(env["ck"]),), str(path), *words, "apt-get install --reinstall dataset-fashion-mnist"
    )


@pytest.mark.parametrize(
    "data, words",
    [
        (bytes(3073 * 2 - 7), ["truncated", "6139 bytes"]),
        (bytes([10]) + bytes(3072), ["1 label(s) outside the 10 classes"]),
    ],
)
def test_damaged_cifar10_batch(env, data, words):
    ck = _checkpoint(env["tmp"] / "ck-cifar", dataset="cifar10", shape=(3, 32, 32))
    folder = env["tmp"] / "cifar"
    folder.mkdir()
    (folder / "test_batch.bin").write_bytes(data)
    env["vars"]["RND_CIFAR10"] = str(folder)
    _assert_refused(env, (str(ck),), str(folder / "test_batch.bin"), *words, "fresh download")


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"num_classes": -1}, ["num_classes must be in [2, 100000], got -1"]),
        ({"input_shape": [28, 28]}, ["input_shape must be a list of 3 integers"]),
        ({"width": 4096, "hidden": 65536}, ["GB of float32", "above the cap"]),
        ({"depth": 3}, ["no argument(s) depth"]),
    ],
)
def test_absurd_checkpoint_metadata(env, kwargs, words):
    meta_path = env["ck"].with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta["arch_kwargs"].update(kwargs)
    meta_path.write_text(json.dumps(meta))
    _assert_refused(env, (str(env["ck"]),), str(meta_path), *words, "restore the file, or retrain")


def test_missing_checkpoint_metadata_is_named(env):
    meta_path = env["ck"].with_suffix(".json")
    meta_path.unlink()
    _assert_refused(env, (str(env["ck"]),), f"checkpoint metadata {meta_path} is missing", "rnd train --out")


def test_weights_of_another_model_are_summarised(env):
    other = _checkpoint(env["tmp"] / "other")
    meta = json.loads(other.with_suffix(".json").read_text())
    meta["arch_kwargs"]["width"] = 8  # the weights are of width 4
    other.with_suffix(".json").write_text(json.dumps(meta))
    _assert_refused(
        env, (str(other),), "5 mis-shaped (e.g. body.0.weight [4, 1, 3, 3] vs [8, 1, 3, 3]", "retrain"
    )
