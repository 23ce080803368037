"""Fashion-MNIST (Xiao et al. 2017) from Debian's `dataset-fashion-mnist` package."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import torch

from rnd.data.base import ImageDataset
from rnd.data.idx import read_idx
from rnd.errors import DataNotFoundError, InputError

DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
INSTALL_HINT = "sudo apt-get install dataset-fashion-mnist"


def _find(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem):
        if candidate.is_file():
            return candidate
    raise DataNotFoundError(
        f"Fashion-MNIST file {stem}(.gz) not found under {root}; install the Debian package "
        f"with `{INSTALL_HINT}`, or point RND_FASHION_MNIST (or root=) at a folder holding the "
        "IDX files"
    )


def load_fashion_mnist(
    split: Literal["train", "test"] = "test", root: str | Path | None = None
) -> ImageDataset:
    """Load a split as uint8 (N, 1, 28, 28) images with labels 0-9."""
    if split not in _FILES:
        raise InputError(f"split must be 'train' or 'test', got {split!r}")
    root = Path(root or os.environ.get("RND_FASHION_MNIST") or DEFAULT_ROOT)
    img_stem, lab_stem = _FILES[split]
    images = read_idx(_find(root, img_stem))
    labels = read_idx(_find(root, lab_stem))
    if images.ndim != 3 or labels.ndim != 1 or images.shape[0] != labels.shape[0]:
        raise InputError(f"Fashion-MNIST files under {root} have inconsistent shapes")
    x = torch.from_numpy(images.copy()).unsqueeze(1)
    y = torch.from_numpy(labels.astype("int64"))
    return ImageDataset("fashion-mnist", split, x, y, list(CLASSES))
