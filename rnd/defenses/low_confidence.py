"""Noise only on low-confidence queries: RND where the calibrated confidence is at most `tau`.

Reference: Zimmer et al., "Closing the Gap: Achieving Better Accuracy-Robustness Tradeoffs against
Query-Based Attacks" (AAAI 2024). Query-based attacks must explore low-confidence regions near the
decision boundary, so a defense there (here RND, `F(clip(x + nu * v))`) hinders them while
confident inputs, most clean images, keep their clean answer. Confidence is the maximum of
`softmax(z / T)`, with the temperature `T` fitted on held-out data by temperature scaling (Guo et
al., ICML 2017: minimise the negative log-likelihood; `fit_temperature`). The paper's two
parameters are the threshold `tau` and the wrapped defense's `nu`; its CIFAR-10 example with RND at
nu = 0.05 compares tau = 0.99 and 0.97 (the default here).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rnd._checks import check_finite, check_images, check_labels, check_positive, check_real
from rnd.defenses.base import Defense
from rnd.defenses.input_noise import RandomNoiseDefense
from rnd.errors import InputError

#: Default confidence threshold (see the module docstring).
DEFAULT_TAU = 0.97


class LowConfidenceNoise(Defense):
    """Answer `x` with the clean logits when `max softmax(z / temperature) > tau`, else with RND's.

    Args:
        model: the classifier (pixels in [0, 1], logits out).
        nu: RND noise standard deviation in pixel units for the low-confidence queries; the noisy
            input is clipped to [0, 1]. `nu = 0` is the identity.
        tau: confidence threshold in [0, 1]; queries with calibrated confidence <= tau get noise
            (tau = 0: none do; tau = 1: every query does, i.e. plain RND).
        temperature: the calibration temperature `T > 0` (`fit_temperature`); it only decides
            which queries are low-confidence: answers are the model's logits, unscaled, so scores
            keep the scale of the undefended model.
        generator / seed: the noise's own generator, as for `RandomNoiseDefense`.

    Each forward costs one clean pass for the whole batch and one noisy pass for its
    low-confidence rows; the noise is fresh per image and query.

    Spec: `low-confidence:nu=0.02,tau=0.97,temperature=1.3`; randomised; public parameters: nu,
    tau, temperature.
    """

    name = "low-confidence"
    randomised = True
    public = ("nu", "tau", "temperature")

    def __init__(
        self,
        model: nn.Module,
        nu: float,
        tau: float = DEFAULT_TAU,
        temperature: float = 1.0,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.noise = RandomNoiseDefense(model, nu=nu, generator=generator, seed=seed)
        self.nu = self.noise.nu
        self.tau = check_real(tau, "tau")
        if not 0 <= self.tau <= 1:
            raise InputError(f"tau must lie in [0, 1] (a probability), got {tau!r}")
        self.temperature = check_positive(temperature, "temperature")

    def low_confidence(self, logits: torch.Tensor) -> torch.Tensor:
        """Mask of the rows whose calibrated confidence `max softmax(z / T)` is <= tau."""
        conf = torch.softmax(logits.float() / self.temperature, dim=1).amax(dim=1)
        return conf <= self.tau

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        check_finite(x)
        logits = self.model(x)
        if self.nu == 0:
            return logits
        low = self.low_confidence(logits)
        if not bool(low.any()):
            return logits
        out = logits.clone()
        out[low] = self.model(self.noise.perturb(x[low])).to(out.dtype)
        return out

    def extra_repr(self) -> str:
        return f"nu={self.nu}, tau={self.tau}, temperature={self.temperature}"


@torch.inference_mode()
def _logits(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    model.eval()
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return torch.cat([model(c.to(device)).float().cpu() for c in x.split(batch_size)])


def fit_temperature(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    bounds: tuple[float, float] = (0.05, 20.0),
    batch_size: int = 1000,
) -> float:
    """The temperature `T` minimising the mean negative log-likelihood of `softmax(model(x) / T)`
    on held-out images `x` (float32 pixels in [0, 1]) with labels `y` (temperature scaling, Guo et
    al. 2017). Use images the attacks will not see.

    The NLL is convex in `1 / T`; a golden-section search over `1 / T` within `bounds` (on the
    logits, computed once) finds the minimum to about 1e-6 relative precision. Deterministic.
    """
    x = check_images(x)
    y = check_labels(y, x.shape[0], None)
    lo, hi = (check_positive(b, "temperature bound") for b in bounds)
    if not lo < hi:
        raise InputError(f"bounds must be (low, high) with 0 < low < high, got {bounds!r}")
    z = _logits(model, x, batch_size).double()
    if z.shape[1] <= int(y.max()):
        raise InputError(f"labels reach {int(y.max())} but the model has {z.shape[1]} classes")
    picked = z.gather(1, y.view(-1, 1)).squeeze(1)

    def nll(beta: float) -> float:  # mean of logsumexp(beta z) - beta z_y
        return float((torch.logsumexp(beta * z, dim=1) - beta * picked).mean())

    a, b = 1.0 / hi, 1.0 / lo
    ratio = (math.sqrt(5) - 1) / 2
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(c), nll(d)
    while b - a > 1e-7 * max(b, 1.0):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(d)
    return 1.0 / ((a + b) / 2)
