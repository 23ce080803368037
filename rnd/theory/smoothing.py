"""Gaussian smoothing f_nu (Definition 1, eq. 9) by Monte Carlo, and the gap bound it obeys.

f_nu(x) = E_{v ~ N(0, I)} f(x + nu v) is the function RND's answers follow on average; for an
L0-Lipschitz f, ``|f_nu(x) - f(x)| <= nu L0 sqrt(d)`` (Nesterov & Spokoiny 2017, Thm 1; the seed's
"trade-off of larger nu and clean accuracy"). `smoothing_check` measures both sides.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from rnd._checks import check_int, check_positive
from rnd.errors import InputError
from rnd.theory.bounds import smoothing_gap_bound

#: f evaluated at points z (B, ...) whose row i belongs to base point rows[i] -> (B,)
Objective = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def gaussian_smoothing(
    f: Objective,
    x: torch.Tensor,
    nu: float,
    *,
    samples: int = 256,
    generator: torch.Generator,
    chunk: int = 16,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Monte Carlo f_nu(x) of eq. (9): mean of f(x + nu v_k), v_k ~ N(0, I), k = 1..samples.

    Returns (estimate, standard error) per row of x (N, ...). All samples of `chunk` base points go
    through f as one batch. nu = 0 returns f(x) exactly with zero error.
    """
    nu = check_positive(nu, "nu (the smoothing level)", allow_zero=True)
    samples = check_int(samples, "samples", minimum=2)
    check_int(chunk, "chunk", minimum=1)
    if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[0] == 0:
        raise InputError("x must be a non-empty batch of points (N, ...)")
    n = x.shape[0]
    if nu == 0:
        return f(x, torch.arange(n)).float(), torch.zeros(n)
    means, errs = [], []
    for lo in range(0, n, chunk):
        idx = torch.arange(lo, min(lo + chunk, n))
        xs = x[idx].repeat_interleave(samples, dim=0)
        z = xs + nu * torch.randn(xs.shape, generator=generator, dtype=xs.dtype)
        vals = f(z, idx.repeat_interleave(samples)).double().view(idx.numel(), samples)
        means.append(vals.mean(1))
        errs.append(vals.std(1) / math.sqrt(samples))
    return torch.cat(means).float(), torch.cat(errs).float()


@dataclass
class SmoothingCheck:
    """``|f_nu(x) - f(x)|`` against nu L0 sqrt(d), per noise level (arrays indexed [nu, point])."""

    nus: list[float]
    dim: int
    l0: torch.Tensor  # per point (or one value repeated)
    f: torch.Tensor  # (N,)
    f_nu: torch.Tensor  # (n_nu, N)
    stderr: torch.Tensor  # (n_nu, N)
    bound: torch.Tensor  # (n_nu, N)

    @property
    def gap(self) -> torch.Tensor:
        return (self.f_nu - self.f).abs()

    @property
    def holds(self) -> torch.Tensor:
        """True where the measured gap, less 3 standard errors, is within the bound."""
        return self.gap - 3 * self.stderr <= self.bound

    def rows(self) -> list[dict[str, float]]:
        return [
            {
                "nu": nu,
                "mean_gap": float(self.gap[j].mean()),
                "max_gap": float(self.gap[j].max()),
                "mean_bound": float(self.bound[j].mean()),
                "max_ratio": float((self.gap[j] / self.bound[j]).max()) if nu > 0 else 0.0,
                "violations": int((~self.holds[j]).sum()),
            }
            for j, nu in enumerate(self.nus)
        ]


def smoothing_check(
    f: Objective,
    x: torch.Tensor,
    nus: Sequence[float],
    l0: float | torch.Tensor,
    *,
    samples: int = 256,
    generator: torch.Generator,
    chunk: int = 16,
) -> SmoothingCheck:
    """Measure ``|f_nu(x) - f(x)|`` (eq. 9 by Monte Carlo) beside nu L0 sqrt(d) for each nu.

    `l0` is a known Lipschitz constant (analytic f) or one estimate per point (N,), e.g. from
    `rnd.theory.signflip.estimate_l0` (then the check holds "under that estimate").
    """
    nus = [check_positive(v, "nu (the smoothing level)", allow_zero=True) for v in nus]
    if not nus:
        raise InputError("the nu grid is empty")
    n = x.shape[0]
    d = math.prod(x.shape[1:])
    if isinstance(l0, torch.Tensor):
        if l0.shape != (n,):
            raise InputError(f"l0 must hold one value per point, shape ({n},), got {tuple(l0.shape)}")
        l0_t = l0.float()
    else:
        l0_t = torch.full((n,), check_positive(l0, "L0"))
    fx = f(x, torch.arange(n)).float()
    est, err, bnd = [], [], []
    for nu in nus:
        m, s = gaussian_smoothing(f, x, nu, samples=samples, generator=generator, chunk=chunk)
        est.append(m)
        err.append(s)
        bnd.append(l0_t * smoothing_gap_bound(1.0, nu, d))
    return SmoothingCheck(
        nus=nus, dim=d, l0=l0_t, f=fx, f_nu=torch.stack(est), stderr=torch.stack(err), bound=torch.stack(bnd)
    )
