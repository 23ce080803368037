import gzip
import shutil

import numpy as np
import pytest
import torch

from rnd.data import load_cifar10, load_dataset, load_fashion_mnist, load_image_folder, make_synthetic
from rnd.data.fashion_mnist import DEFAULT_ROOT
from rnd.errors import DataNotFoundError, InputError, UnknownNameError


def test_fashion_mnist_real_files():
    train = load_fashion_mnist("train")
    test = load_fashion_mnist("test")
    assert len(train) == 60000 and len(test) == 10000
    x, _ = test.get(torch.arange(100))
    assert torch.equal(test.get(range(5))[0], test.get([0, 1, 2, 3, 4])[0])
    assert x.shape == (100, 1, 28, 28) and x.dtype == torch.float32
    assert float(x.min()) >= 0.0 and float(x.max()) <= 1.0
    assert set(test.labels.tolist()) == set(range(10))
    assert torch.bincount(test.labels).tolist() == [1000] * 10
    assert test.classes[9] == "Ankle boot"


def test_missing_fashion_mnist_names_install_command(tmp_path):
    with pytest.raises(DataNotFoundError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist("test", root=tmp_path)


def test_truncated_idx_file(tmp_path):
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copy(DEFAULT_ROOT / name, tmp_path / name)
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz") as fh:
        raw = fh.read()
    with gzip.open(tmp_path / "t10k-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(raw[:-100])
    with pytest.raises(InputError, match="truncated"):
        load_fashion_mnist("test", root=tmp_path)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(InputError):
        load_fashion_mnist("test", root=tmp_path)


def test_bad_split_and_name():
    with pytest.raises(InputError, match="split"):
        load_fashion_mnist("validation")
    with pytest.raises(UnknownNameError, match="fashion-mnist"):
        load_dataset("mnist-typo")


def _write_cifar(folder, n_per_file=7):
    g = np.random.default_rng(0)
    for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
        rec = g.integers(0, 256, size=(n_per_file, 3073), dtype=np.uint8)
        rec[:, 0] = np.arange(n_per_file) % 10
        rec.tofile(folder / name)


def test_cifar10_binary(tmp_path):
    _write_cifar(tmp_path)
    test = load_cifar10("test", tmp_path)
    train = load_cifar10("train", tmp_path)
    assert len(test) == 7 and len(train) == 35
    assert test.images.shape == (7, 3, 32, 32)
    raw = np.fromfile(tmp_path / "test_batch.bin", dtype=np.uint8).reshape(7, 3073)
    assert test.images[2, 1].flatten().tolist() == raw[2, 1 + 1024 : 1 + 2048].tolist()
    assert test.labels.tolist() == raw[:, 0].tolist()
    (tmp_path / "test_batch.bin").write_bytes(raw.tobytes()[:-5])
    with pytest.raises(InputError, match="truncated"):
        load_cifar10("test", tmp_path)
    with pytest.raises(DataNotFoundError):
        load_cifar10("test", tmp_path / "nowhere")


def test_image_folder(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    for cls in ("cat", "dog"):
        (tmp_path / cls).mkdir()
        for i in range(3):
            arr = np.full((10, 12, 3), 40 * i + (100 if cls == "dog" else 0), dtype=np.uint8)
            pil.fromarray(arr).save(tmp_path / cls / f"{i}.png")
    data = load_image_folder(tmp_path)
    assert data.classes == ["cat", "dog"] and len(data) == 6
    assert data.images.shape == (6, 3, 10, 12)
    assert data.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert int(data.images[4, 0, 0, 0]) == 140
    with pytest.raises(DataNotFoundError):
        load_image_folder(tmp_path / "missing")


def test_synthetic_is_deterministic_and_shares_patterns():
    a, b = make_synthetic(n=50, seed=3), make_synthetic(n=50, seed=3)
    assert torch.equal(a.images, b.images)
    a, c = make_synthetic(n=500, seed=3), make_synthetic(n=500, seed=4)
    assert not torch.equal(a.images, c.images)
    # same class patterns across seeds: same-class means are closer than other-class means
    mean = lambda d, k: d.get()[0][d.labels == k].mean(0)  # noqa: E731
    same = (mean(a, 0) - mean(c, 0)).abs().mean()
    other = (mean(a, 0) - mean(c, 1)).abs().mean()
    assert same < other / 2
