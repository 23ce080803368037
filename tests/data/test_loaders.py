import gzip
import shutil

import numpy as np
import pytest
import torch

from rnd.data import load_cifar10, load_dataset, load_fashion_mnist, load_image_folder, make_synthetic
from rnd.data.base import ImageDataset
from rnd.data.fashion_mnist import DEFAULT_ROOT
from rnd.errors import DataError, DataNotFoundError, InputError, UnknownNameError


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


# -- damaged data files: one DataError naming the file and the way out, never a traceback ----------
def _idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of uint8 `array` (magic 0, 0, 0x08, ndim; big-endian dims; data)."""
    dims = b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return bytes([0, 0, 0x08, array.ndim]) + dims + array.astype(np.uint8).tobytes()


def _write_fmnist(folder, n=4, labels=None):
    """A tiny Fashion-MNIST test split in the real format (gzip-compressed IDX)."""
    images = np.random.default_rng(0).integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = np.arange(n) % 10 if labels is None else np.asarray(labels)
    (folder / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(images)))
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(labels)))
    return folder / "t10k-images-idx3-ubyte.gz", folder / "t10k-labels-idx1-ubyte.gz"


def _assert_one_line(exc_info, path, *words):
    message = str(exc_info.value)
    assert "\n" not in message, message
    assert str(path) in message, message
    for word in words:
        assert word in message, message


def test_tiny_fashion_mnist_files_load(tmp_path):
    _write_fmnist(tmp_path, n=4)
    data = load_fashion_mnist("test", root=tmp_path)
    assert len(data) == 4 and data.labels.tolist() == [0, 1, 2, 3]


def _bad_deflate(data: bytes) -> bytes:
    # a gzip header followed by a deflate block of the reserved type 3: zlib.error "invalid block type"
    return bytes([0x1F, 0x8B, 8, 0, 0, 0, 0, 0, 0, 0xFF]) + b"\x07" + data[20:60]


def _bad_crc(data: bytes) -> bytes:
    raw = bytearray(data)
    raw[-8] ^= 0xFF  # the CRC32 trailer: gzip.BadGzipFile "CRC check failed"
    return bytes(raw)


@pytest.mark.parametrize(
    "damage, reason",
    [
        (_bad_deflate, "invalid block type"),  # zlib.error
        (lambda data: data[:-20], "ended before"),  # EOFError
        (_bad_crc, "CRC check failed"),  # gzip.BadGzipFile
        (lambda data: b"not gzip at all", "Not a gzipped file"),  # gzip.BadGzipFile
    ],
)
def test_damaged_gzip_stream_names_file_and_fix(tmp_path, damage, reason):
    images, _ = _write_fmnist(tmp_path)
    images.write_bytes(damage(images.read_bytes()))
    with pytest.raises(DataError) as info:
        load_fashion_mnist("test", root=tmp_path)
    _assert_one_line(info, images, reason, "apt-get install --reinstall dataset-fashion-mnist")


@pytest.mark.parametrize(
    "raw, words",
    [
        (bytes([0, 0, 8, 3]) + (4).to_bytes(4, "big"), ["truncated", "header needs 16 bytes"]),  # cut header
        (bytes([0, 0, 8]), ["bad magic number"]),
        (bytes([0, 0, 8, 3]) + b"".join(d.to_bytes(4, "big") for d in (4, 28, 28)) + b"\0" * 100, ["3136"]),
    ],
)
def test_malformed_idx_header_or_size(tmp_path, raw, words):
    images, _ = _write_fmnist(tmp_path)
    images.write_bytes(gzip.compress(raw))
    with pytest.raises(DataError) as info:
        load_fashion_mnist("test", root=tmp_path)
    _assert_one_line(info, images, *words, "reinstall")


def test_idx_of_wrong_shape_or_count(tmp_path):
    images, labels = _write_fmnist(tmp_path)
    images.write_bytes(gzip.compress(_idx_bytes(np.zeros((4, 10, 10), np.uint8))))
    with pytest.raises(DataError) as info:
        load_fashion_mnist("test", root=tmp_path)
    _assert_one_line(info, images, "28 x 28", "reinstall")
    _write_fmnist(tmp_path)
    labels.write_bytes(gzip.compress(_idx_bytes(np.zeros(3, np.uint8))))
    with pytest.raises(DataError) as info:
        load_fashion_mnist("test", root=tmp_path)
    _assert_one_line(info, labels, "not 4", "reinstall")


def test_fashion_mnist_labels_outside_the_classes(tmp_path):
    _, labels = _write_fmnist(tmp_path, labels=[0, 3, 10, 255])
    with pytest.raises(DataError) as info:
        load_fashion_mnist("test", root=tmp_path)
    _assert_one_line(info, labels, "2 label(s) outside the 10 classes", "[0, 255]", "reinstall")


def test_cifar10_damaged_batches(tmp_path):
    _write_cifar(tmp_path)
    path = tmp_path / "test_batch.bin"
    raw = path.read_bytes()
    for data, words in [
        (raw[:-5], ["truncated", str(len(raw) - 5)]),
        (b"", ["0 bytes"]),
        (raw + b"\0" * 3073 * 2 + b"\1", ["not a positive multiple"]),
    ]:
        path.write_bytes(data)
        with pytest.raises(DataError) as info:
            load_cifar10("test", tmp_path)
        _assert_one_line(info, path, *words, "fresh download")
    bad = bytearray(raw)
    bad[3073 * 2] = 10  # the third record's label byte
    path.write_bytes(bytes(bad))
    with pytest.raises(DataError) as info:
        load_cifar10("test", tmp_path)
    _assert_one_line(info, path, "1 label(s) outside the 10 classes", "fresh download")


def test_image_folder_unreadable_image(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    (tmp_path / "cat").mkdir()
    pil.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "cat" / "0.png")
    good = (tmp_path / "cat" / "0.png").read_bytes()
    bad = tmp_path / "cat" / "1.png"
    for data in (b"this is no image", good[: len(good) // 2]):  # UnidentifiedImageError, truncated
        bad.write_bytes(data)
        with pytest.raises(DataError) as info:
            load_image_folder(tmp_path)
        _assert_one_line(info, bad, "remove or replace the file")


def test_image_folder_bad_mode(tmp_path):
    with pytest.raises(InputError, match="mode"):
        load_image_folder(tmp_path, mode="CMYK")


def test_dataset_labels_outside_its_classes():
    images = torch.zeros(3, 1, 2, 2, dtype=torch.uint8)
    with pytest.raises(DataError, match="outside the 2 classes"):
        ImageDataset("x", "test", images, torch.tensor([0, 1, 2]), ["a", "b"])
    with pytest.raises(InputError, match="integers"):
        ImageDataset("x", "test", images, torch.tensor([0.0, 1.0, 1.0]), ["a", "b"])


def test_image_folder_of_mixed_sizes_says_what_to_do(tmp_path):
    pil = pytest.importorskip("PIL.Image")
    (tmp_path / "cat").mkdir()
    pil.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "cat" / "0.png")
    pil.fromarray(np.zeros((6, 5, 3), np.uint8)).save(tmp_path / "cat" / "1.png")
    with pytest.raises(InputError, match=r"differ in size \(4x4, 6x5\); resize them") as info:
        load_image_folder(tmp_path)
    assert "\n" not in str(info.value)
    assert load_image_folder(tmp_path, size=(4, 4)).images.shape == (2, 3, 4, 4)
