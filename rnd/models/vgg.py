"""A VGG-style network (Simonyan & Zisserman 2015) scaled for 28x28 and 32x32 inputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from rnd.errors import InputError
from rnd.models.layers import Classifier

#: Channels per conv layer; "M" is a 2x2 max-pool. `vgg-small` and `vgg11` are VGG-11-like layouts
#: with three pools (they fit 28x28 as well as 32x32). `vgg16` is configuration D of Simonyan &
#: Zisserman with BatchNorm, as the CIFAR-10 VGG-16 of the RND paper's experiments: 13 convs, five
#: pools, so a 32x32 input ends at 512 x 1 x 1 and the head is one 512 -> classes linear layer
#: (the usual CIFAR head; an ImageNet 4096-4096 MLP would hold over half the parameters on 1x1 maps).
CONFIGS: dict[str, list[int | str]] = {
    "vgg-small": [32, "M", 64, "M", 128, 128, "M"],
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, 512, 512],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}
#: Configs whose pools round up (`ceil_mode`): the same as the standard floor on 32x32 (every map
#: is even), and on 28x28 (Fashion-MNIST) 28-14-7-4-2-1 instead of a 0x0 map at the fifth pool.
#: The older configs keep floor pools, so their checkpoints answer as before.
_CEIL_POOLS = frozenset({"vgg16"})


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
        if config not in CONFIGS:
            raise InputError(f"unknown VGG config {config!r}; known: {', '.join(CONFIGS)}")
        ceil = config in _CEIL_POOLS
        sides = list(self.input_shape[1:])
        layers: list[nn.Module] = []
        c = self.input_shape[0]
        #: index in `body` of each stage's last module (each pool, and the last ReLU after the last pool)
        self._stage_ends: list[int] = []
        for item in CONFIGS[config]:
            if item == "M":
                sides = [-(-s // 2) if ceil else s // 2 for s in sides]
                if min(sides) == 0:
                    raise InputError(
                        f"{config} pools {CONFIGS[config].count('M')} times: an input of "
                        f"{self.input_shape[1]}x{self.input_shape[2]} is too small for it; use a larger "
                        "input or a VGG config with fewer pools"
                    )
                layers.append(nn.MaxPool2d(2, ceil_mode=ceil))
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
