"""Kept for old imports: the defense now lives in `rnd.defenses` (RND in `rnd.defenses.input_noise`),
the entropy seed in `rnd._rng`."""

from __future__ import annotations

from torch import nn

from rnd._rng import entropy_seed
from rnd.defenses.input_noise import RandomNoiseDefense


def defense_nu(model: nn.Module) -> float:
    """The RND noise level of `model` (0 for a model without RND)."""
    return model.nu if isinstance(model, RandomNoiseDefense) else 0.0


__all__ = ["RandomNoiseDefense", "defense_nu", "entropy_seed"]
