"""A ResNet-style network (He et al. 2016) with basic blocks, for 28x28 and 32x32 inputs."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rnd.models.layers import Classifier


class BasicBlock(nn.Module):
    """Two 3x3 convs with BatchNorm and an identity (or 1x1 projection) shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        return F.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class ResNet(Classifier):
    """Stem conv, then stages of basic blocks doubling width and halving resolution."""

    def __init__(
        self,
        input_shape: Sequence[int] = (3, 32, 32),
        num_classes: int = 10,
        blocks: Sequence[int] = (1, 1, 1),
        width: int = 16,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__(input_shape, num_classes, mean, std)
        self.stem = nn.Sequential(
            nn.Conv2d(self.input_shape[0], width, 3, 1, 1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        stages: list[nn.Module] = []
        c = width
        #: friendly stage name -> index in `stages` of its last block (stages without blocks are skipped)
        self._stage_ends: dict[str, int] = {}
        for i, n in enumerate(blocks):
            cout = width * 2**i
            for j in range(n):
                stages.append(BasicBlock(c, cout, 2 if (i > 0 and j == 0) else 1))
                c = cout
            if n:
                self._stage_ends[f"stage{i + 1}"] = len(stages) - 1
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())  # no parameters: same state_dict
        self.head = nn.Linear(c, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.pool(self.stages(self.stem(x))))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(self.stages(self.stem(self.normalize(x))))

    def feature_layers(self) -> dict[str, str]:
        """stem: after the stem conv; stageK: after the K-th stage of blocks; penultimate: the
        globally pooled features (the input of `head`)."""
        names = {k: f"stages.{i}" for k, i in self._stage_ends.items()}
        return {"stem": "stem", **names, "penultimate": "pool"}
