"""A synthetic, learnable data set for fast tests: class-specific blob patterns plus noise."""

from __future__ import annotations

import torch

from rnd.data.base import ImageDataset


def make_synthetic(
    n: int = 512,
    shape: tuple[int, int, int] = (1, 28, 28),
    num_classes: int = 10,
    seed: int = 0,
    noise: float = 0.15,
    pattern_seed: int = 1234,
) -> ImageDataset:
    """Images whose class is a fixed random smooth pattern (from `pattern_seed`, shared by all
    splits), plus pixel noise drawn from `seed`; easy to learn."""
    c, h, w = shape
    gp = torch.Generator().manual_seed(pattern_seed)
    coarse = torch.rand(num_classes, c, max(h // 4, 1), max(w // 4, 1), generator=gp)
    g = torch.Generator().manual_seed(seed)
    protos = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bilinear", align_corners=False)
    labels = torch.arange(n) % num_classes
    x = protos[labels] + noise * torch.randn(n, c, h, w, generator=g)
    images = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    return ImageDataset("synthetic", "all", images, labels, [str(i) for i in range(num_classes)])
