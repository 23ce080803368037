"""Theorems 1 and 2 measured: a ZO attack under RND noise on analytic functions with known L0 / L1.

The attack is the seed's eq. (11), x_{t+1} = Proj_{N_R(x0)}(x_t - eta g(x_t)), with the EOT
estimator of eq. (13) (eq. 10 when M = 1):

    g(x) = (1/M) sum_{j=1}^{M} (f(x + mu u + nu v_j1) - f(x + nu v_j2)) / mu * u,

one u ~ N(0, I) per step shared by the M noisy answer pairs, v_j1, v_j2 ~ N(0, I) fresh per answer.
For every (alpha = nu/mu, M) cell, `runs` independent attacks advance together as one batch and
the experiment records E||grad f(x_t)||^2 (mean over runs) for t = 0..Q. Theorems 1-2 bound the
step-weighted average of this quantity (for grad f_{mu,nu}; for the quadratic the two gradients
coincide): it should grow with alpha, and fall with M with diminishing returns.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from rnd._checks import check_int, check_positive
from rnd.errors import InputError
from rnd.theory.bounds import check_m, check_mu_nu
from rnd.theory.functions import AnalyticFunction


def eot_gradient_estimate(
    fn: AnalyticFunction,
    x: torch.Tensor,
    mu: float,
    nu: float,
    m: int,
    *,
    generator: torch.Generator,
    noise_generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Eq. (13) (eq. 10 for M = 1), one estimate per row of x (B, d), all B*M answers in one batch.

    `generator` draws u; `noise_generator` (default: the same) draws the defense's v_j1, v_j2.
    """
    mu, nu = check_mu_nu(mu, nu)
    m = int(check_m(m))
    x = fn.check_points(x)
    b, d = x.shape
    gv = generator if noise_generator is None else noise_generator
    u = torch.randn(b, d, generator=generator, dtype=x.dtype)
    v1 = torch.randn(b, m, d, generator=gv, dtype=x.dtype)
    v2 = torch.randn(b, m, d, generator=gv, dtype=x.dtype)
    xp = (x + mu * u)[:, None, :] + nu * v1
    xn = x[:, None, :] + nu * v2
    diff = fn.value(xp.reshape(-1, d)) - fn.value(xn.reshape(-1, d))
    return diff.view(b, m).mean(1, keepdim=True) / mu * u


def project_ball(x: torch.Tensor, x0: torch.Tensor, radius: float) -> torch.Tensor:
    """Proj_{N_R(x0)}: the l2 ball of `radius` around x0 (eq. 11)."""
    delta = x - x0
    norms = delta.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return x0 + delta * (radius / norms).clamp(max=1.0)


def zo_attack_curve(
    fn: AnalyticFunction,
    mu: float,
    nu: float,
    m: int,
    *,
    eta: float,
    iters: int,
    runs: int,
    radius: float,
    seed: int = 0,
) -> torch.Tensor:
    """Run eq. (11) with eq. (13) for `iters` steps, `runs` attacks at once from fn.x0.

    Returns E||grad f(x_t)||^2 (mean over runs) for t = 0..iters, shape (iters + 1,). Directions and
    noise come from two generators seeded from `seed`, so cells of a grid share their directions.
    """
    eta = check_positive(eta, "eta (step size)")
    iters = check_int(iters, "iters", minimum=1)
    runs = check_int(runs, "runs", minimum=1)
    radius = check_positive(radius, "R (threat radius)")
    g_u = torch.Generator().manual_seed(int(seed))
    g_v = torch.Generator().manual_seed(int(seed) + 1)
    x0 = fn.x0.double().expand(runs, -1).clone()
    x = x0.clone()
    out = torch.empty(iters + 1, dtype=torch.float64)
    out[0] = fn.grad(x).pow(2).sum(1).mean()
    for t in range(iters):
        g = eot_gradient_estimate(fn, x, mu, nu, m, generator=g_u, noise_generator=g_v)
        x = project_ball(x - eta * g, x0, radius)
        out[t + 1] = fn.grad(x).pow(2).sum(1).mean()
    return out.float()


@dataclass
class ConvergenceResult:
    """E||grad f(x_t)||^2 curves over a grid: `curves[a, k, t]` for alphas[a], ms[k], t = 0..iters."""

    function: str
    dim: int
    mu: float
    alphas: list[float]
    ms: list[int]
    eta: float
    radius: float
    runs: int
    l0: float
    l1: float
    curves: torch.Tensor
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def average(self) -> torch.Tensor:
        """(1/(Q+1)) sum_t E||grad f(x_t)||^2 per cell: the left side of Theorems 1-2 (constant eta)."""
        return self.curves.mean(-1)

    @property
    def final(self) -> torch.Tensor:
        """Mean over the last 10 % of iterations, per cell."""
        tail = max(1, self.curves.shape[-1] // 10)
        return self.curves[..., -tail:].mean(-1)

    def rows(self) -> list[dict[str, float]]:
        return [
            {
                "alpha": a,
                "nu": a * self.mu,
                "M": m,
                "average_sq_grad": float(self.average[i, k]),
                "final_sq_grad": float(self.final[i, k]),
            }
            for i, a in enumerate(self.alphas)
            for k, m in enumerate(self.ms)
        ]


def default_step(fn: AnalyticFunction) -> float:
    """eta = 1 / (4 L1 (d + 4)): the stable step of Nesterov-Spokoiny's random gradient-free method."""
    return 1.0 / (4 * fn.l1 * (fn.dim + 4))


def convergence_experiment(
    fn: AnalyticFunction,
    alphas: Sequence[float],
    ms: Sequence[int],
    *,
    mu: float = 0.05,
    eta: float | None = None,
    iters: int = 300,
    runs: int = 32,
    radius: float = 2.0,
    seed: int = 0,
) -> ConvergenceResult:
    """Theorems 1-2 on `fn`: the ZO attack of eq. (10)/(13)-(11) for every nu = alpha * mu and M.

    Every cell uses the same step `eta` (default `default_step`), the same start fn.x0 and the same
    seeds, so curves differ only by alpha and M.
    """
    check_mu_nu(mu, 0.0)
    alphas = [check_positive(a, "alpha (= nu / mu)", allow_zero=True) for a in alphas]
    ms_i = [int(check_m(m)) for m in ms]
    if not alphas or not ms_i:
        raise InputError("the alpha and M grids must not be empty")
    step = default_step(fn) if eta is None else check_positive(eta, "eta (step size)")
    curves = torch.stack(
        [
            torch.stack(
                [
                    zo_attack_curve(
                        fn, mu, a * mu, m, eta=step, iters=iters, runs=runs, radius=radius, seed=seed
                    )
                    for m in ms_i
                ]
            )
            for a in alphas
        ]
    )
    return ConvergenceResult(
        function=fn.name,
        dim=fn.dim,
        mu=mu,
        alphas=alphas,
        ms=ms_i,
        eta=step,
        radius=radius,
        runs=runs,
        l0=fn.l0(radius),
        l1=fn.l1,
        curves=curves,
        params={"iters": iters, "seed": seed},
    )


def diminishing_returns(values: Sequence[float]) -> bool:
    """True if successive gains values[k] - values[k+1] are positive and shrinking (M doubling)."""
    v = list(values)
    gains = [v[k] - v[k + 1] for k in range(len(v) - 1)]
    return all(g > 0 for g in gains) and all(gains[k] >= gains[k + 1] for k in range(len(gains) - 1))


def is_increasing(values: Sequence[float]) -> bool:
    v = list(values)
    return all(v[k] < v[k + 1] for k in range(len(v) - 1)) and not any(math.isnan(x) for x in v)
