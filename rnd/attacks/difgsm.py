"""DI-MI-FGSM (Xie et al., CVPR 2019): MI-FGSM through a random input diversity transform. With
probability p (0.5) an image is shrunk to a random side r in [ceil(0.9 H), H) and zero-padded back
to H x W at a random offset before the surrogate sees it; the gradient flows back through the
resize. Drawn per image from the image's generator, so batching changes nothing."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from rnd.attacks.base import Norm
from rnd.attacks.transfer import TransferAttack, TransferState, check_fraction, row_draws


class DIFGSM(TransferAttack):
    """DI-MI-FGSM transfer attack (decay 1.0, 100 iterations as BlackboxBench runs DI).

    Args:
        diversity_prob: p, the probability that an image is transformed at an iteration.
        resize_rate: the smallest side kept, as a fraction of the image's side (0.9).
        eps, norm, surrogate, iterations, candidates, mu, ...: see `TransferAttack`.
    """

    name = "di-fgsm"
    decay = 1.0
    default_iterations = 100

    def __init__(
        self,
        eps: float,
        norm: Norm = "linf",
        *,
        diversity_prob: float = 0.5,
        resize_rate: float = 0.9,
        **kwargs: Any,
    ) -> None:
        super().__init__(eps, norm, **kwargs)
        self.diversity_prob = check_fraction(diversity_prob, "diversity_prob")
        self.resize_rate = check_fraction(resize_rate, "resize_rate")

    def transform(self, state: TransferState, rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        low = min(h - 1, math.ceil(self.resize_rate * h))
        draws = row_draws(state.gens, rows, (4,), torch.rand).cpu()  # apply?, side, top, left
        out = x.clone()
        for i in range(x.shape[0]):
            apply, side, top, left = draws[i].tolist()
            if apply >= self.diversity_prob or low >= h:
                continue
            r = low + int(side * (h - low))
            rw = max(1, round(r * w / h))
            small = F.interpolate(x[i : i + 1], size=(r, rw), mode="nearest")
            t, lft = int(top * (h - r + 1)), int(left * (w - rw + 1))
            out[i] = F.pad(small, (lft, w - rw - lft, t, h - r - t))[0]
        return out
