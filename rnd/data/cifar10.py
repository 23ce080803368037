"""CIFAR-10 from the user's own copy of the binary version (`cifar-10-batches-bin`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from rnd.data.base import ImageDataset
from rnd.errors import DataNotFoundError, InputError

CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
_RECORD = 1 + 3 * 32 * 32


def load_cifar10(split: Literal["train", "test"] = "test", root: str | Path | None = None) -> ImageDataset:
    """Load CIFAR-10 binary batches: records of 1 label byte then 3072 pixel bytes (R, G, B planes)."""
    if split not in ("train", "test"):
        raise InputError(f"split must be 'train' or 'test', got {split!r}")
    root = root or os.environ.get("RND_CIFAR10")
    if root is None:
        raise DataNotFoundError(
            "CIFAR-10 is not bundled: download the binary version once, then pass root= (or set "
            "RND_CIFAR10) to the folder holding data_batch_1.bin ... test_batch.bin"
        )
    root = Path(root)
    if (root / "cifar-10-batches-bin").is_dir():
        root = root / "cifar-10-batches-bin"
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] if split == "train" else ["test_batch.bin"]
    chunks = []
    for name in names:
        path = root / name
        if not path.is_file():
            raise DataNotFoundError(f"CIFAR-10 file {path} not found")
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size % _RECORD:
            raise InputError(f"{path} is truncated: {raw.size} bytes is not a multiple of {_RECORD}")
        chunks.append(raw.reshape(-1, _RECORD))
    records = np.concatenate(chunks)
    labels = torch.from_numpy(records[:, 0].astype("int64"))
    if int(labels.max()) > 9:
        raise InputError(f"{root} does not hold CIFAR-10 binary batches (label > 9)")
    images = torch.from_numpy(records[:, 1:].copy()).view(-1, 3, 32, 32)
    return ImageDataset("cifar10", split, images, labels, list(CLASSES))
