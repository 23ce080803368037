"""NES attack (Ilyas et al., ICML 2018): natural-evolution-strategies gradient estimates + PGD.

The seed's zeroth-order family (eq. 3-4): with q antithetic Gaussian pairs,
    g = 1 / (2 q mu) * sum_i [f(x + mu u_i) - f(x - mu u_i)] u_i,   u_i ~ N(0, I),
then x <- Proj(x - lr * sign(g)) for l_inf, or x <- Proj(x - lr * g / ||g||_2) for l_2.
One step costs 2q probe queries plus one query of the new point. Defaults follow the RND paper's
code (SCLBD/BlackboxBench): mu = 0.01 per pixel, q = 15 pairs (30 probes), lr = 0.01 for l_inf;
for l_2 the step is eps / 10 per iteration.
"""

from __future__ import annotations

import torch

from rnd.attacks.base import AttackState, QueryAttack


class NES(QueryAttack):
    """NES with antithetic sampling, l_inf and l_2 (`mu` is the finite-difference size)."""

    name = "nes"
    norms = ("linf", "l2")
    default_mu = {"linf": 0.01, "l2": 0.01}

    def __init__(
        self, eps: float, norm: str = "linf", *, q: int = 15, lr: float | None = None, **kwargs
    ) -> None:
        super().__init__(eps, norm, **kwargs)  # type: ignore[arg-type]
        self.q = q
        self.lr = lr if lr is not None else (0.01 if norm == "linf" else self.eps / 10)

    @property
    def step_cost(self) -> int:
        return (2 * self.q + 1) * self.eot

    def init(self, state: AttackState) -> None:
        self.query_start(state)

    def estimate_gradient(self, state: AttackState, rows: torch.Tensor) -> torch.Tensor:
        """Antithetic NES estimate of the loss gradient at state.x[rows] (one batched query)."""
        x = state.x[rows]
        n, q, mu = x.shape[0], self.q, self.cur_mu
        u = self.randn(n, q, *x.shape[1:])
        probes = torch.cat([x.unsqueeze(1) + mu * u, x.unsqueeze(1) - mu * u], dim=1)
        probes = probes.clamp(0, 1).flatten(0, 1)
        loss, _ = self.evaluate(state, probes, rows.repeat_interleave(2 * q))
        loss = loss.view(n, 2 * q)
        diff = (loss[:, :q] - loss[:, q:]).view(n, q, *([1] * (x.dim() - 1)))
        return (diff * u).sum(1) / (2 * q * mu)

    def step(self, state: AttackState, rows: torch.Tensor) -> None:
        g = self.estimate_gradient(state, rows)
        x = state.x[rows]
        if self.norm == "linf":
            x_new = x - self.lr * g.sign()
        else:
            norms = g.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
            x_new = x - self.lr * g / norms
        x_new = self.project(x_new, state.x0[rows])
        loss, adv = self.evaluate(state, x_new, rows)
        self.accept(state, rows, x_new, loss, adv)
