"""DI-MI-FGSM (Xie et al., CVPR 2019): MI-FGSM through a random input diversity transform. With
probability p (0.5) an image is shrunk to a random side r in [ceil(0.9 H), H) and zero-padded back
to H x W at a random offset before the surrogate sees it; the gradient flows back through the
resize. Drawn per image from the image's generator, so batching changes nothing."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F

from rnd._checks import check_fraction
from rnd.attacks.base import Norm, row_draws
from rnd.attacks.transfer import TransferAttack, TransferState


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
        c, h, w = x.shape[1:]
        low = min(h - 1, math.ceil(self.resize_rate * h))
        d = row_draws(state.gens, rows, (4,), torch.rand).cpu().double()  # apply?, side, top, left
        applied = d[:, 0] < self.diversity_prob
        side = low + (d[:, 1] * (h - low)).long()
        width = (side * w / h).round().long().clamp_min(1)
        top, left = (d[:, 2] * (h - side + 1)).long(), (d[:, 3] * (w - width + 1)).long()
        out = x.clone()
        # one resize per size drawn (a few at most), each image then set on its own offset at once
        for r, rw in {(int(a), int(b)) for a, b in zip(side[applied], width[applied], strict=True)}:
            sel = (applied & (side == r) & (width == rw)).nonzero().flatten()
            small = F.interpolate(x[sel.to(x.device)], size=(r, rw), mode="nearest")
            ii = (top[sel, None] + torch.arange(r)).to(x.device)
            jj = (left[sel, None] + torch.arange(rw)).to(x.device)
            canvas = x.new_zeros(sel.numel(), c, h, w)
            k = torch.arange(sel.numel(), device=x.device)
            canvas[k[:, None, None], :, ii[:, :, None], jj[:, None, :]] = small.permute(0, 2, 3, 1)
            out[sel.to(x.device)] = canvas
        return out
