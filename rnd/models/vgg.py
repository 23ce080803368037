"""A VGG-style network (Simonyan & Zisserman 2015) scaled for 28x28 and 32x32 inputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rnd.models.layers import Classifier

#: Channels per conv layer; "M" is a 2x2 max-pool. A VGG-11-like layout with three pools.
CONFIGS: dict[str, list[int | str]] = {
    "vgg-small": [32, "M", 64, "M", 128, 128, "M"],
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, 512, 512],
}


class VGG(Classifier):
    """3x3 conv + BatchNorm + ReLU stacks with max-pooling, global average pool, linear head."""

    def __init__(
        self,
        input_shape: Sequence[int] = (3, 32, 32),
        num_classes: int = 10,
        config: str = "vgg-small",
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(input_shape, num_classes, mean, std)
        layers: list[nn.Module] = []
        c = self.input_shape[0]
        #: index in `body` of each stage's last module (each pool, and the last ReLU after the last pool)
        self._stage_ends: list[int] = []
        for item in CONFIGS[config]:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
                self._stage_ends.append(len(layers) - 1)
            else:
                layers += [
                    nn.Conv2d(c, int(item), 3, padding=1),
                    nn.BatchNorm2d(int(item)),
                    nn.ReLU(inplace=True),
                ]
                c = int(item)
        if CONFIGS[config][-1] != "M":
            self._stage_ends.append(len(layers) - 1)
        self.body = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.head = nn.Linear(c, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(self.normalize(x))

    def feature_layers(self) -> dict[str, str]:
        """stageK: after the K-th conv stack (its pool; the last stack may end without one);
        penultimate: the globally pooled features (the input of `head`)."""
        names = {f"stage{k + 1}": f"body.{i}" for k, i in enumerate(self._stage_ends)}
        return {**names, "penultimate": f"body.{len(self.body) - 1}"}
