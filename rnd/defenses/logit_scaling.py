"""Random logit scaling (RLS): answer every query with the logits times a fresh `m ~ U[low, high]`.

Reference: Dashtbani, Dousti Gandomani, Sadeghzadeh, "Random Logit Scaling: Defending Deep Neural
Networks Against Black-Box Score-Based Adversarial Example Attacks" (TMLR 2026). A positive scale
keeps the argmax (labels and accuracy unchanged) but multiplies every margin the attacker sees by
an unknown factor, so comparing the losses of two queries (Square's accept test, a finite
difference) compares two random rescalings. Defaults U[0.5, 10] are the paper's code's uniform
setting (HamidDasht/RLS-adversarial-defense, `config-jsons/defense_config.json`). That code draws
one `m` per forward call (per batch); here each image of each query draws its own, so an answer
never depends on which other images share the batch.

The counter: a loss invariant to `z -> m z`, e.g. `ScoreAttack(loss="dlr")` (rnd.attacks.score),
turns every comparison exact again.

Spec: `rls`, `rls:low=1,high=5`; randomised; public parameters: low, high.
"""

from __future__ import annotations

import torch
from torch import nn

from rnd._checks import check_finite, check_positive
from rnd._rng import own_generator
from rnd.defenses.base import Defense
from rnd.errors import InputError


class RandomLogitScaling(Defense):
    """Wrap `model` so each image of each query is answered with `m * model(x)`, `m ~ U[low, high]`.

    Args:
        model: the classifier, returning logits.
        low, high: range of the scale, 0 < low <= high (paper: 0.5, 10).
        generator: the defense's own CPU `torch.Generator` (default: seeded from OS entropy).
        seed: shortcut for a generator seeded with this value (reproducible experiments).

    The scales are drawn on the CPU from the defense's generator and moved to the logits' device,
    so a seeded defense gives the same scales on any device. Never the global RNG.

    Example:
        >>> defended = RandomLogitScaling(model, seed=0)
        >>> defended(images).argmax(1).equal(model(images).argmax(1))
        True
    """

    name = "rls"
    randomised = True
    public = ("low", "high")

    def __init__(
        self,
        model: nn.Module,
        low: float = 0.5,
        high: float = 10.0,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        generator = own_generator(generator, seed)
        self.model = model
        self.low = check_positive(low, "low")
        self.high = check_positive(high, "high")
        if self.high < self.low:
            raise InputError(f"RLS needs low <= high, got low={low!r}, high={high!r}")
        if torch.device(generator.device).type != "cpu":
            raise InputError("the RLS generator must be a CPU torch.Generator")
        self.generator = generator

    def scales(self, n: int) -> torch.Tensor:
        """Draw `n` scales `m ~ U[low, high]` (float64, on the CPU) from the defense's generator."""
        u = torch.rand(n, generator=self.generator, dtype=torch.float64)
        return self.low + (self.high - self.low) * u

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_finite(x)
        logits = self.model(x)
        m = self.scales(logits.shape[0]).to(device=logits.device, dtype=logits.dtype)
        return logits * m.view(-1, *([1] * (logits.dim() - 1)))

    def extra_repr(self) -> str:
        return f"low={self.low}, high={self.high}"
