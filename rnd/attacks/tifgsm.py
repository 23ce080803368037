"""TI-MI-FGSM (Dong et al., CVPR 2019): MI-FGSM whose gradient is convolved with a Gaussian kernel
W before the update (grad <- W * grad), which makes the perturbation less sensitive to the
surrogate's exact receptive fields. The paper's kernel is 15 x 15 with sigma 3 at 224 px; here the
side scales with the image (the odd number nearest 15 H / 224, at least 3) and sigma = side / 5.
It wants images large enough for a kernel to mean something: on 28 x 28 the kernel is 3 x 3."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from rnd._checks import check_int, check_positive
from rnd.attacks.base import Norm
from rnd.attacks.transfer import TransferAttack
from rnd.errors import InputError


class TIFGSM(TransferAttack):
    """TI-MI-FGSM transfer attack (decay 1.0, 100 iterations as BlackboxBench runs TI).

    Args:
        kernel: the Gaussian kernel's side (odd; default: scaled to the image, 15 at 224 px).
        sigma: its standard deviation in pixels (default: kernel / 5, 3 at 224 px).
        eps, norm, surrogate, iterations, candidates, mu, ...: see `TransferAttack`.
    """

    name = "ti-fgsm"
    decay = 1.0
    default_iterations = 100

    def __init__(
        self,
        eps: float,
        norm: Norm = "linf",
        *,
        kernel: int | None = None,
        sigma: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(eps, norm, **kwargs)
        self.kernel = None if kernel is None else check_int(kernel, "kernel")
        if self.kernel is not None and self.kernel % 2 == 0:
            raise InputError(f"kernel must be odd, got {kernel}")
        self.sigma = None if sigma is None else check_positive(sigma, "sigma")

    def smooth(self, grad: torch.Tensor) -> torch.Tensor:
        k = self.kernel or max(3, 2 * round(grad.shape[-1] * 15 / 224 / 2) + 1)
        sigma = self.sigma or k / 5
        ax = torch.arange(k, dtype=grad.dtype, device=grad.device) - (k - 1) / 2
        g1 = torch.exp(-(ax**2) / (2 * sigma**2))
        w = (g1[:, None] * g1[None, :]) / (g1.sum() ** 2)
        c = grad.shape[1]
        return F.conv2d(grad, w.expand(c, 1, k, k).contiguous(), padding=k // 2, groups=c)
