"""The default small CNN: two conv-pool blocks and two dense layers (about 0.42 M parameters)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rnd.models.layers import Classifier


class SmallCNN(Classifier):
    """conv3x3(32)-ReLU-pool, conv3x3(64)-ReLU-pool, dense(128)-ReLU, dense(classes).

    A few epochs of training make it an accurate Fashion-MNIST classifier that runs fast on a CPU.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (1, 28, 28),
        num_classes: int = 10,
        width: int = 32,
        hidden: int = 128,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(input_shape, num_classes, mean, std)
        c, h, w = self.input_shape
        self.body = nn.Sequential(
            nn.Conv2d(c, width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(width, 2 * width, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Flatten(),
            nn.Linear(2 * width * (h // 4) * (w // 4), hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, num_classes),
        )

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    @property
    def head(self) -> nn.Linear:
        return self.body[-1]  # type: ignore[return-value]

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body[:-1](self.normalize(x))

    def feature_layers(self) -> dict[str, str]:
        """stage1 / stage2: after each conv-ReLU-pool block; penultimate: the hidden dense ReLU."""
        return {"stage1": "body.2", "stage2": "body.5", "penultimate": "body.8"}
