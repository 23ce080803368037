"""Layers shared by the models: normalisation lives inside the model, so inputs are pixels."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn


class Normalize(nn.Module):
    """`(x - mean) / std` per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(list(mean), dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(list(std), dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class Classifier(nn.Module):
    """Base of rnd's models: pixels in [0, 1] of `input_shape` in, logits over `num_classes` out.

    The features / head split: `embed(x)` gives the penultimate features (the input of the final
    linear layer `head`), so `head(embed(x)) == forward(x)`; `feature_layers()` names the hidden
    layers at which a defense may act (`rnd.defenses.feature_noise`), each the output of a submodule.
    """

    #: The final linear layer, penultimate features to logits (a submodule or a property).
    head: nn.Module

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = int(num_classes)
        c = self.input_shape[0]
        self.normalize = Normalize(mean or [0.5] * c, std or [0.5] * c)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised pixels to logits (the whole network after `normalize`)."""
        raise NotImplementedError

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pixels to the penultimate features, shape (N, head.in_features)."""
        raise NotImplementedError

    def feature_layers(self) -> dict[str, str]:
        """Named hidden layers, in forward order: friendly name ("stage1", ..., "penultimate") to the
        path of the submodule whose output is that feature (for `get_submodule` / forward hooks).
        "penultimate" is always last: the input of `head`."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(self.normalize(x))
