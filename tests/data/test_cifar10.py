"""CIFAR-10 from files in the real binary format, written here (the data set itself is not bundled).

The format (https://www.cs.toronto.edu/~kriz/cifar.html, "binary version"): `cifar-10-batches-bin/`
holds data_batch_1.bin ... data_batch_5.bin and test_batch.bin, each a run of 3073-byte records:
1 label byte, then 1024 red, 1024 green and 1024 blue bytes, each plane row-major 32x32.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from rnd.data import load_cifar10, load_dataset
from rnd.data.cifar10 import CLASSES
from rnd.errors import DataError, DataNotFoundError

TRAIN_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)]


def write_cifar10(root: Path, train_per_file: int = 4, test: int = 6, seed: int = 0) -> Path:
    """Write a small CIFAR-10 in the binary format under `root/cifar-10-batches-bin`; return `root`.

    Images are learnable (class k: red near 25 k, green near 255 - 25 k, blue uniform noise), so a
    few epochs of a small model classify most of them right."""
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True)
    g = np.random.default_rng(seed)
    for name, n in [*((f, train_per_file) for f in TRAIN_FILES), ("test_batch.bin", test)]:
        labels = g.integers(0, 10, size=n)
        planes = g.integers(0, 256, size=(n, 3, 1024))
        planes[:, 0] = np.clip(25 * labels[:, None] + g.integers(-8, 9, size=(n, 1024)), 0, 255)
        planes[:, 1] = 255 - planes[:, 0]
        records = np.concatenate([labels[:, None], planes.reshape(n, 3072)], axis=1).astype(np.uint8)
        records.tofile(folder / name)
    return root


def _records(path: Path) -> np.ndarray:
    return np.fromfile(path, dtype=np.uint8).reshape(-1, 3073)


def test_pixels_labels_and_channel_order_match_the_records(tmp_path):
    write_cifar10(tmp_path, train_per_file=4, test=6)
    folder = tmp_path / "cifar-10-batches-bin"
    test = load_cifar10("test", tmp_path)
    raw = _records(folder / "test_batch.bin")
    assert test.name == "cifar10" and test.split == "test" and test.classes == CLASSES
    assert test.images.shape == (6, 3, 32, 32) and test.images.dtype == torch.uint8
    assert test.labels.tolist() == raw[:, 0].tolist()
    for i in range(6):
        for c in range(3):  # plane c of the record is channel c (R, G, B), row-major
            assert test.images[i, c].numpy().tobytes() == raw[i, 1 + 1024 * c : 1 + 1024 * (c + 1)].tobytes()
    # one pixel by hand: record 3, green plane, row 5, column 7
    assert int(test.images[3, 1, 5, 7]) == int(raw[3, 1 + 1024 + 5 * 32 + 7])
    x, y = test.get(torch.arange(6))
    assert x.dtype == torch.float32 and torch.allclose(x, test.images.float() / 255)
    assert torch.equal(y, test.labels)
    assert test.input_shape == (3, 32, 32) and test.num_classes == 10


def test_train_split_is_the_five_batches_in_order(tmp_path):
    write_cifar10(tmp_path, train_per_file=3, test=5)
    folder = tmp_path / "cifar-10-batches-bin"
    train = load_cifar10("train", tmp_path)
    assert len(train) == 15 and len(load_cifar10("test", tmp_path)) == 5
    raw = np.concatenate([_records(folder / f) for f in TRAIN_FILES])
    assert train.labels.tolist() == raw[:, 0].tolist()
    assert train.images.reshape(15, -1).numpy().tobytes() == raw[:, 1:].tobytes()
    # the inner folder itself, the parent, $RND_CIFAR10 and load_dataset all find the same files
    assert torch.equal(load_cifar10("train", folder).images, train.images)
    assert torch.equal(load_dataset("cifar10", "train", tmp_path).images, train.images)


def test_rnd_cifar10_environment_variable(tmp_path, monkeypatch):
    write_cifar10(tmp_path)
    monkeypatch.setenv("RND_CIFAR10", str(tmp_path))
    assert len(load_cifar10("test")) == 6


def test_missing_root_or_file_is_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.delenv("RND_CIFAR10", raising=False)
    with pytest.raises(DataNotFoundError) as info:
        load_cifar10("test")
    message = str(info.value)
    assert "\n" not in message and "RND_CIFAR10" in message and "binary version" in message
    with pytest.raises(DataNotFoundError) as info:
        load_cifar10("test", tmp_path / "nowhere")
    assert "\n" not in str(info.value) and "test_batch.bin" in str(info.value)
    write_cifar10(tmp_path)
    missing = tmp_path / "cifar-10-batches-bin" / "data_batch_3.bin"
    missing.unlink()
    assert len(load_cifar10("test", tmp_path)) == 6  # the test split does not need it
    with pytest.raises(DataNotFoundError) as info:
        load_cifar10("train", tmp_path)
    assert "\n" not in str(info.value) and str(missing) in str(info.value)


@pytest.mark.parametrize(
    ("cut", "words"),
    [
        (lambda raw: raw[:-1], "truncated"),  # last record one byte short
        (lambda raw: raw[: 3073 + 1024], "not a positive multiple"),  # cut inside a record
        (lambda raw: raw + b"\0" * 3072, "not a positive multiple"),  # a 3072-byte record (no label)
        (lambda raw: raw[:0], "0 bytes"),
    ],
)
def test_truncated_or_wrong_size_batch(tmp_path, cut, words):
    write_cifar10(tmp_path)
    path = tmp_path / "cifar-10-batches-bin" / "data_batch_2.bin"
    path.write_bytes(cut(path.read_bytes()))
    with pytest.raises(DataError) as info:
        load_cifar10("train", tmp_path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message and words in message
    assert "3073-byte record" in message and "fresh download" in message
