"""VMI-FGSM (Wang and He, CVPR 2021): MI-FGSM with variance tuning. The gradient used at step t is
grad(x_t) + v_t, with v_{t+1} = mean_j grad(x_t + r_j) - grad(x_t), r_j ~ U(-b eps, b eps)^d,
N = 20 samples, b = 1.5; it smooths the update over a neighbourhood of the surrogate's surface."""

from __future__ import annotations

from typing import Any

import torch

from rnd._checks import check_int, check_positive
from rnd.attacks.base import Norm, row_draws
from rnd.attacks.transfer import TransferAttack, TransferState


class VMIFGSM(TransferAttack):
    """VMI-FGSM transfer attack (decay 1.0, 10 iterations).

    Args:
        samples: N, neighbours whose gradients estimate the variance at each step.
        beta: b, the neighbourhood's half-width in units of eps.
        eps, norm, surrogate, iterations, candidates, mu, ...: see `TransferAttack`.
    """

    name = "vmi-fgsm"
    decay = 1.0
    default_iterations = 10

    def __init__(
        self, eps: float, norm: Norm = "linf", *, samples: int = 20, beta: float = 1.5, **kwargs: Any
    ) -> None:
        super().__init__(eps, norm, **kwargs)
        self.samples = check_int(samples, "samples")
        self.beta = check_positive(beta, "beta")

    def variance(
        self,
        state: TransferState,
        rows: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        grad: torch.Tensor,
    ) -> torch.Tensor:
        shape = tuple(x.shape[1:])
        r = (2 * row_draws(state.gens, rows, (self.samples, *shape), torch.rand) - 1) * self.beta * self.eps
        total = torch.zeros_like(x)
        for j in range(self.samples):  # one neighbour per image at a time: the batch the attack runs at
            total += self.gradient(state, rows, x + r[:, j], y, target)
        return total / self.samples - grad
