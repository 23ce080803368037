"""Random Noise Defense (RND): answer every query `x` with `F(clip(x + nu * v))`, `v ~ N(0, I)`.

Reference: Qin et al., "Random Noise Defense Against Query-Based Black-Box Attacks" (NeurIPS 2021),
eq. (7): fresh noise on every query corrupts the attacker's finite differences
`f(x + mu u + nu v1) - f(x + nu v2)` once `nu` is large against the attacker's step `mu`.
"""

from __future__ import annotations

import torch
from torch import nn

from rnd._checks import check_finite, check_positive, check_real
from rnd._rng import DeviceGenerators, own_generator
from rnd.defenses.base import Defense
from rnd.errors import InputError


class RandomNoiseDefense(Defense):
    """Wrap `model` so each forward sees `clip(x + nu * v)` with fresh `v ~ N(0, I)` per image.

    Args:
        model: the classifier, taking pixels in the `clip` range and returning logits.
        nu: noise standard deviation in pixel units; `nu = 0` makes the wrapper the identity.
        clip: valid input range; the noisy input is clipped to it (as in the paper's code).
        generator: the defense's own `torch.Generator`. By default one seeded from OS entropy,
            so the noise cannot be predicted or replayed, whatever the global RNG does.
        seed: shortcut for a generator seeded with this value (reproducible experiments).

    Noise on other devices (CUDA) comes from a per-device generator seeded from this one, so a
    seeded defense is reproducible on any device.

    Spec: `rnd:nu=0.02` (`build_defense`); randomised; public parameters: nu, clip.

    Example:
        >>> defended = RandomNoiseDefense(model, nu=0.02)
        >>> logits = defended(images)  # two calls on the same images give different answers
    """

    name = "rnd"
    randomised = True
    public = ("nu", "clip")

    def __init__(
        self,
        model: nn.Module,
        nu: float,
        clip: tuple[float, float] | None = (0.0, 1.0),
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        generator = own_generator(generator, seed)
        if clip is not None:
            if not isinstance(clip, tuple | list) or len(clip) != 2:
                raise InputError(f"clip must be (low, high) or None, got {clip!r}")
            clip = (check_real(clip[0], "clip low"), check_real(clip[1], "clip high"))
            if not clip[0] < clip[1]:
                raise InputError(f"clip must be (low, high) with low < high, got {clip!r}")
        self.model = model
        self.nu = check_positive(nu, "nu", allow_zero=True)
        self.clip = clip
        self.generator = generator
        self._generators = DeviceGenerators(generator)

    def noise_like(self, x: torch.Tensor) -> torch.Tensor:
        """Draw `nu * v`, `v ~ N(0, I)`, shaped and typed like `x`, from the defense's generator."""
        g = self._generators.get(x.device)
        dtype = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
        v = torch.randn(x.shape, generator=g, device=x.device, dtype=dtype)
        return (v * self.nu).to(x.dtype)

    def perturb(self, x: torch.Tensor) -> torch.Tensor:
        """Return `clip(x + nu * v)`: the input the model actually sees.

        NaN or infinite inputs raise `InputError` (clipping would silently turn them into pixels).
        """
        check_finite(x)
        if self.nu == 0:
            return x
        out = x + self.noise_like(x)
        if self.clip is not None:
            out = out.clamp(self.clip[0], self.clip[1])
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(self.perturb(x))

    def extra_repr(self) -> str:
        return f"nu={self.nu}, clip={self.clip}"
