"""CIFAR-10 from the user's own copy of the binary version (`cifar-10-batches-bin`)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from rnd.data.base import ImageDataset, check_label_range
from rnd.errors import DataError, DataNotFoundError, InputError

CLASSES = [
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck",
]  # fmt: skip
_RECORD = 1 + 3 * 32 * 32
#: The way out when a batch file is there but damaged.
REPAIR_HINT = "replace it with the file from a fresh download of the CIFAR-10 binary version"


def load_cifar10(split: Literal["train", "test"] = "test", root: str | Path | None = None) -> ImageDataset:
    """Load CIFAR-10 binary batches: records of 1 label byte then 3072 pixel bytes (R, G, B planes)."""
    if split not in ("train", "test"):
        raise InputError(f"split must be 'train' or 'test', got {split!r}")
    root = root or os.environ.get("RND_CIFAR10")
    if root is None:
        raise DataNotFoundError(
            "CIFAR-10 is not bundled: download its binary version (cifar-10-binary.tar.gz) once, unpack "
            "it, then point root= (command line: --data-root) or $RND_CIFAR10 at the folder holding "
            "data_batch_1.bin ... test_batch.bin"
        )
    root = Path(root)
    if (root / "cifar-10-batches-bin").is_dir():
        root = root / "cifar-10-batches-bin"
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] if split == "train" else ["test_batch.bin"]
    chunks = []
    for name in names:
        path = root / name
        if not path.is_file():
            raise DataNotFoundError(
                f"CIFAR-10 file {path} not found; point root= (command line: --data-root) or "
                "$RND_CIFAR10 at the folder holding data_batch_1.bin ... test_batch.bin of the binary version"
            )
        raw = np.fromfile(path, dtype=np.uint8)
        if raw.size == 0 or raw.size % _RECORD:
            raise DataError(
                f"{path} is truncated or not a CIFAR-10 binary batch: {raw.size} bytes is not a "
                f"positive multiple of the {_RECORD}-byte record; {REPAIR_HINT}"
            )
        records = raw.reshape(-1, _RECORD)
        check_label_range(torch.from_numpy(records[:, 0].astype("int64")), len(CLASSES), path, REPAIR_HINT)
        chunks.append(records)
    records = np.concatenate(chunks)
    labels = torch.from_numpy(records[:, 0].astype("int64"))
    images = torch.from_numpy(records[:, 1:].copy()).view(-1, 3, 32, 32)
    return ImageDataset("cifar10", split, images, labels, list(CLASSES))
