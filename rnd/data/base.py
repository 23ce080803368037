"""The in-memory image data set every loader returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from rnd.errors import DataError, InputError


def check_label_range(labels: torch.Tensor, num_classes: int, source: str | Path, hint: str) -> None:
    """Refuse labels outside [0, num_classes) read from `source`; the message ends with `hint`."""
    if not labels.numel():
        return
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= num_classes:
        bad = int(((labels < 0) | (labels >= num_classes)).sum())
        raise DataError(
            f"{source} holds {bad} label(s) outside the {num_classes} classes [0, {num_classes - 1}] "
            f"(values in [{lo}, {hi}]); {hint}"
        )


@dataclass
class ImageDataset:
    """Images as uint8 (N, C, H, W) with int64 labels; `get` returns float pixels in [0, 1].

    Normalisation (mean/std) belongs to the model, so attacks and noise work in pixel space.
    """

    name: str
    split: str
    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise InputError("ImageDataset.images must be a uint8 tensor (N, C, H, W)")
        if self.labels.shape != (self.images.shape[0],):
            raise InputError("ImageDataset.labels must have one label per image")
        if self.labels.is_floating_point() or self.labels.dtype == torch.bool:
            raise InputError(f"ImageDataset.labels must be integers, got dtype {self.labels.dtype}")
        self.labels = self.labels.long()
        if self.classes:
            check_label_range(
                self.labels, len(self.classes), f"data set {self.name!r}", "fix the labels or the class list"
            )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.classes) if self.classes else int(self.labels.max()) + 1

    def get(
        self, indices: torch.Tensor | list[int] | slice | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Float images in [0, 1] and labels at `indices` (all of them by default)."""
        if indices is None:
            indices = slice(None)
        elif isinstance(indices, list | range):
            indices = torch.tensor(list(indices), dtype=torch.int64)
        return self.images[indices].float().div_(255.0), self.labels[indices]

    def batches(self, batch_size: int, indices: torch.Tensor | None = None):
        """Yield (images, labels) in order, `batch_size` at a time."""
        idx = torch.arange(len(self)) if indices is None else indices
        for chunk in idx.split(batch_size):
            yield self.get(chunk)
