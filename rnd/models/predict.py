"""Predictions and accuracies of a model (or a defended model) on a data set: the clean-model side of
the paper's protocol (DESIGN section 1.7), used by training, the pipeline and the audit."""

from __future__ import annotations

import torch
from torch import nn

from rnd.data.base import ImageDataset
from rnd.stats import mean_std


@torch.inference_mode()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 1000) -> torch.Tensor:
    """Predicted labels of `model` for pixels `x`, in batches; -1 for a row a detector refused
    (all-NaN logits), which is never a correct answer."""
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    out = []
    for c in x.split(batch_size):
        z = model(c.to(device)).cpu()
        out.append(torch.where(z.isnan().all(1), -1, z.argmax(1)))
    return torch.cat(out)


def accuracy(
    model: nn.Module, data: ImageDataset, batch_size: int = 1000, indices: torch.Tensor | None = None
) -> float:
    """Top-1 accuracy in [0, 1] of `model` on `data` (one pass; one noise draw if defended)."""
    correct = total = 0
    for x, y in data.batches(batch_size, indices):
        correct += int((predict(model, x, batch_size) == y).sum())
        total += len(y)
    return correct / max(total, 1)


def noisy_accuracy(
    model: nn.Module,
    data: ImageDataset,
    draws: int = 5,
    batch_size: int = 1000,
    indices: torch.Tensor | None = None,
) -> tuple[float, float]:
    """Mean and standard deviation of accuracy over `draws` independent noise draws."""
    return mean_std([accuracy(model, data, batch_size, indices) for _ in range(draws)])


def correctly_classified(
    model: nn.Module,
    data: ImageDataset,
    n: int,
    start: int = 0,
    batch_size: int = 1000,
    exclude_label: int | None = None,
) -> torch.Tensor:
    """Indices of the first `n` images (from `start`, in order) that `model` classifies correctly
    (and whose label is not `exclude_label`: a fixed target class)."""
    found: list[torch.Tensor] = []
    count = 0
    for lo in range(start, len(data), batch_size):
        idx = torch.arange(lo, min(lo + batch_size, len(data)))
        x, y = data.get(idx)
        keep = predict(model, x, batch_size) == y
        if exclude_label is not None:
            keep &= y != exclude_label
        ok = idx[keep]
        found.append(ok)
        count += len(ok)
        if count >= n:
            break
    return torch.cat(found)[:n] if found else torch.zeros(0, dtype=torch.int64)
