"""The undefended model, as a defense: answers are the model's own (spec `none`)."""

from __future__ import annotations

import torch
from torch import nn

from rnd.defenses.base import Defense


class NoDefense(Defense):
    """`model` unchanged: deterministic, stateless, nothing to hide."""

    name = "none"

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)
