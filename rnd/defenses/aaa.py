"""AAA, "Adversarial Attack on Attackers" (Chen, Huang, Zhang, Zhang, Huang; NeurIPS 2022).

A post-processing defense: the answer keeps the model's label but its margin loss is bent so that
a greedy score attack is led the wrong way. For the margin `m = z_(1) - z_(2)` of the logits (the
same as the margin of the log-probabilities) the attractors are the odd multiples of `I / 2`,
`a(m) = (round(m / I + 1/2) - 1/2) I`, and the target margin is::

    linear (mirror):  t = a - r (m - a)                               (r = reverse_step)
    sine:             t = m - 0.7 I sin((1 - 2 (m - a) / I) pi)

so inside each period the answered margin falls when the true one rises. The logits are then fitted
to `t` by Adam (`iterations` steps, learning rate `lr`), minimising per image
`|margin(z) - t| + calibration_weight |softmax(z)[c] - max softmax(z0 / T)|`, with `c` the clean
top class and `T` the temperature. The input is first quantised to 8 bits.

Facts from the authors' code (Sizhe-Chen/AAA, `victim.py` and `square.py`): interval 6 in their
experiment script (the linear class alone defaults to 4), reverse step 1, calibration weight 5,
100 Adam steps at lr 0.1, temperature 1 (their tuned temperatures are per model), sine amplitude
0.7 I, quantisation `floor(255 x) / 255`. Differences here, all on purpose:

- the argmax is always kept: an Adam iterate whose top class differs from the clean one is never
  answered; each image answers its last iterate that kept the class (the clean logits at worst).
  The authors only measure how often the class survives;
- the loss is summed over the batch, not averaged, so each image's Adam steps are exactly those it
  would get alone (Adam is per coordinate): answers do not depend on which images share a batch;
- the quantisation adds 1e-3 of a level before the floor, so a pixel already on the 8-bit grid
  (k / 255 in float32, as every data set here stores them) stays on its level instead of dropping
  one when `255 x` rounds to just below k.

AAA is deterministic: the same query always gets the same answer (no vote needed), and label-only
attacks see the undefended model on 8-bit inputs. Its counters are adaptive score attacks:
`rnd.attacks.square_adaptive.SquareAdaptive` (the AAA paper's own "up" / "bi" Square, Sec. 5 and
Table 6, and the direction-switching Square of Dashtbani et al., TMLR 2026, which broke AAA-Sine).

Spec: `aaa` (linear), `aaa:variant=sine`; every parameter is public.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from rnd._checks import check_finite, check_int, check_positive
from rnd.defenses.base import Defense
from rnd.errors import InputError

Variant = Literal["linear", "sine"]
VARIANTS: tuple[str, ...] = ("linear", "sine")
#: The sine target's amplitude, in units of the interval (a constant in the authors' code).
SINE_AMPLITUDE = 0.7


def quantise_8bit(x: torch.Tensor) -> torch.Tensor:
    """`floor(255 x + 1e-3) / 255`: 8-bit pixels as AAA sees them (on-grid pixels unchanged)."""
    return torch.floor(x * 255.0 + 1e-3).clamp(0.0, 255.0) / 255.0


def attractor(margin: torch.Tensor, interval: float) -> torch.Tensor:
    """The attractor of each margin: the nearest odd multiple of `interval / 2`, as
    `(round(m / I + 1/2) - 1/2) I` (round half to even, as torch and the authors' code round)."""
    return (torch.round(margin / interval + 0.5) - 0.5) * interval


def target_margin(
    margin: torch.Tensor, interval: float, variant: Variant, reverse_step: float = 1.0
) -> torch.Tensor:
    """The margin AAA answers for a true margin `margin` (module docstring, linear or sine)."""
    a = attractor(margin, interval)
    if variant == "linear":
        return a - reverse_step * (margin - a)
    return margin - SINE_AMPLITUDE * interval * torch.sin((1 - 2 * (margin - a) / interval) * math.pi)


class AAA(Defense):
    """Adversarial Attack on Attackers around `model`: 8-bit inputs, logits reshaped so that the
    margin loss runs backwards around attractors (module docstring for the formulas).

    Args:
        model: the classifier, taking pixels in [0, 1] and returning logits.
        variant: "linear" (mirror around each attractor) or "sine" (sinusoidal).
        interval: distance `I` between attractors, in logit (margin) units.
        reverse_step: slope `r` of the linear mirror (linear variant only).
        calibration_weight: weight of the term keeping the top probability at the clean one.
        iterations: Adam steps on the logits per query.
        lr: Adam's learning rate.
        temperature: `T` of the clean probability the calibration term aims at.

    Spec: `aaa`, `aaa:variant=sine,interval=4`; deterministic, stateless; every parameter public.

    Example:
        >>> defended = AAA(model, variant="sine")
        >>> logits = defended(images)  # same argmax as model(images) on 8-bit images
    """

    name = "aaa"
    public = ("variant", "interval", "reverse_step", "calibration_weight", "iterations", "lr", "temperature")

    def __init__(
        self,
        model: nn.Module,
        variant: Variant = "linear",
        interval: float = 6.0,
        reverse_step: float = 1.0,
        calibration_weight: float = 5.0,
        iterations: int = 100,
        lr: float = 0.1,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise InputError(f"AAA variant must be one of {', '.join(VARIANTS)}, got {variant!r}")
        self.model = model
        self.variant: Variant = variant
        self.interval = check_positive(interval, "interval")
        self.reverse_step = check_positive(reverse_step, "reverse_step")
        self.calibration_weight = check_positive(calibration_weight, "calibration_weight", allow_zero=True)
        self.iterations = check_int(iterations, "iterations", minimum=0)
        self.lr = check_positive(lr, "lr")
        self.temperature = check_positive(temperature, "temperature")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_finite(x)
        with torch.no_grad():
            logits = self.model(quantise_8bit(x))
        return self.reshape(logits)

    def reshape(self, logits: torch.Tensor) -> torch.Tensor:
        """The defended logits for clean logits (N, classes): fitted to the target margin, argmax
        kept. Works under `torch.inference_mode()` (the optimisation leaves it locally)."""
        if logits.dim() != 2 or logits.shape[1] < 2:
            raise InputError(f"AAA needs logits of shape (N, classes >= 2), got {tuple(logits.shape)}")
        if self.iterations == 0 or logits.shape[0] == 0:
            return logits
        with torch.inference_mode(False), torch.enable_grad():
            z0 = logits.detach().clone()
            if z0.dtype not in (torch.float32, torch.float64):
                z0 = z0.float()
            top2 = z0.topk(2, dim=1)
            top = top2.indices[:, :1]
            margin0 = top2.values[:, 0] - top2.values[:, 1]
            target = target_margin(margin0, self.interval, self.variant, self.reverse_step)
            p_top0 = (z0 / self.temperature).softmax(1).amax(1)
            best = z0.clone()
            z = z0.clone().requires_grad_(True)
            opt = torch.optim.Adam([z], lr=self.lr)
            for _ in range(self.iterations):
                values = z.topk(2, dim=1).values
                margin = values[:, 0] - values[:, 1]
                calib = (z.softmax(1).gather(1, top).squeeze(1) - p_top0).abs()
                loss = ((margin - target).abs() + self.calibration_weight * calib).sum()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    own = z.gather(1, top)
                    kept = own.squeeze(1) > z.scatter(1, top, -math.inf).amax(1)
                    best = torch.where(kept[:, None], z, best)
            return best.detach().to(logits.dtype)

    def extra_repr(self) -> str:
        return (
            f"variant={self.variant!r}, interval={self.interval}, reverse_step={self.reverse_step}, "
            f"calibration_weight={self.calibration_weight}, iterations={self.iterations}, lr={self.lr}, "
            f"temperature={self.temperature}"
        )
