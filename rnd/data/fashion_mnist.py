"""Fashion-MNIST (Xiao et al. 2017) from Debian's `dataset-fashion-mnist` package."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from rnd.data.base import ImageDataset, check_label_range
from rnd.data.idx import read_idx
from rnd.errors import DataError, DataNotFoundError, InputError

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
#: The way out when a file is there but damaged.
REPAIR_HINT = (
    "reinstall it with `sudo apt-get install --reinstall dataset-fashion-mnist`, or point "
    "RND_FASHION_MNIST (or root=) at a folder holding intact IDX files"
)


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
    img_path, lab_path = _find(root, img_stem), _find(root, lab_stem)
    images = read_idx(img_path, REPAIR_HINT)
    labels = read_idx(lab_path, REPAIR_HINT)
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (28, 28):
        raise DataError(
            f"{img_path} holds {images.dtype} data of shape {images.shape}, not uint8 28 x 28 "
            f"images; {REPAIR_HINT}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1 or labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{lab_path} holds {labels.dtype} data of shape {labels.shape}, not {images.shape[0]} "
            f"uint8 labels (one per image of {img_path.name}); {REPAIR_HINT}"
        )
    x = torch.from_numpy(images.copy()).unsqueeze(1)
    y = torch.from_numpy(labels.astype("int64"))
    check_label_range(y, len(CLASSES), lab_path, REPAIR_HINT)
    return ImageDataset("fashion-mnist", split, x, y, list(CLASSES))
