"""Theorem 3 measured: how often RND flips the sign of a search attack's comparison.

A search attack (eq. 5-6) keeps the step mu*u when h_mu(x) = f(x + mu u) - f(x) < 0. Under RND it
sees h_nu(x) = f(x + mu u + nu v1) - f(x + nu v2) instead (eq. 15), and Theorem 3 (eq. 16) bounds::

    P(sign h_mu(x) != sign h_nu(x)) <= 2 L0(f) nu sqrt(d) / |h_mu(x)|.

`sign_flip_probability` estimates the left side by Monte Carlo for a model, a set of images and a
mu x nu grid, and evaluates the right side with a local Lipschitz estimate (`estimate_l0`).

Sampling design: each draw k of image i takes a fresh direction u and fresh noises v1, v2; the same
(u, v1, v2) are reused for every (mu, nu) cell (common random numbers, so differences between cells
are not sampling noise). Draws are independent given the images, so the pooled flip frequency over
N images x K draws has a binomial-or-narrower variance and the Wilson interval is conservative for
P averaged over the image set. Because Theorem 3 holds for every (x, u), it also holds averaged:
E_u[P_v(flip | x, u)] <= E_u[min(1, bound(x, u))], which is the comparison reported per cell.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from rnd._checks import check_int, check_positive
from rnd.errors import InputError, unknown_name
from rnd.stats import wilson_interval
from rnd.theory.bounds import check_mu_nu
from rnd.theory.objective import MarginObjective

Direction = Literal["gaussian", "sphere", "sign"]
DIRECTIONS: tuple[str, ...] = ("gaussian", "sphere", "sign")
L0Method = Literal["grad", "secant"]
L0_METHODS: tuple[str, ...] = ("grad", "secant")


def sample_directions(
    shape: tuple[int, ...], direction: Direction, generator: torch.Generator
) -> torch.Tensor:
    """Attack directions u, one per leading index: N(0, I) ("gaussian", the RGF direction of eq. 3),
    uniform on the unit l2 sphere ("sphere"), or uniform +-1 per coordinate ("sign", l_inf vertices)."""
    if direction == "gaussian":
        return torch.randn(shape, generator=generator)
    if direction == "sphere":
        u = torch.randn(shape, generator=generator)
        return u / u.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *[1] * (len(shape) - 1))
    if direction == "sign":
        return torch.randint(0, 2, shape, generator=generator).float() * 2 - 1
    raise unknown_name("direction distribution", direction, DIRECTIONS)


def theorem3_bound_tensor(l0: torch.Tensor, nu: float, d: int, h_mu: torch.Tensor) -> torch.Tensor:
    """Eq. (16) elementwise: ``2 L0 nu sqrt(d) / |h_mu|``, clipped to [0, 1] (a probability bound)."""
    nu = check_positive(nu, "nu (the RND noise level)", allow_zero=True)
    raw = 2 * l0 * nu * math.sqrt(check_int(d, "d", minimum=1)) / h_mu.abs()
    return torch.nan_to_num(raw, nan=1.0, posinf=1.0).clamp(0, 1)


def linear_flip_probability(alpha: float, direction: Direction = "gaussian", d: int = 1) -> float:
    """P(sign h_mu != sign h_nu) for a linear f (Remark 2's local linearity), u and v1, v2 Gaussian.

    With f(x) = w^T x: h_mu = mu w^T u and h_nu = h_mu + nu w^T (v1 - v2), so the flip probability
    is P(sign(Z1 + c Z2) != sign(Z1)) = arctan(c) / pi for independent standard normals, with
    c = sqrt(2) nu / mu for u ~ N(0, I) (and, by the central limit theorem, for +-1 signs), and
    c = sqrt(2 d) nu / mu for u on the unit sphere. It depends on alpha = nu / mu only.
    """
    a = check_positive(alpha, "alpha (= nu / mu)", allow_zero=True)
    if direction not in DIRECTIONS:
        raise unknown_name("direction distribution", direction, DIRECTIONS)
    scale = math.sqrt(2 * check_int(d, "d", minimum=1)) if direction == "sphere" else math.sqrt(2)
    return math.atan(scale * a) / math.pi


def _check_grid(values: Sequence[float], name: str, positive: bool) -> list[float]:
    vals = [float(v) for v in values]
    if not vals:
        raise InputError(f"the {name} grid is empty")
    for v in vals:
        if positive:
            check_mu_nu(v, 0.0)
        else:
            check_mu_nu(1.0, v)
    return vals


def estimate_l0(
    objective: MarginObjective,
    x: torch.Tensor,
    mus: Sequence[float],
    nus: Sequence[float],
    *,
    points: int = 32,
    direction: Direction = "gaussian",
    method: L0Method = "grad",
    generator: torch.Generator,
) -> torch.Tensor:
    """Local Lipschitz constant L0(f) of Assumption 1 around each image, per noise level: (N, len(nus)).

    Theorem 3's proof uses ``|f(a + nu v) - f(a)| <= L0 nu ||v||`` on the segments a -> a + nu v with
    a = x and a = x + mu u, so L0 is estimated on those segments: `points` points per (image, nu)
    z = x + s mu u + tau nu v, s in {0, 1} alternating, mu cycling over the grid, tau ~ U(0, 1),
    fresh u and v (an empty `mus` samples only x + tau nu v, the segments of eq. 9's gap). Then

      - "grad" (default): L0 = max ||grad f(z)||_2 over the points, by autograd. For a piecewise
        smooth f (ReLU network, max in the margin) the Lipschitz constant on a convex set is the
        supremum of the gradient norm there, so this is the sampled version of the right quantity;
      - "secant": L0 = ``max |f(a + nu v) - f(a)| / (nu ||v||)`` over the segments themselves.

    "grad" estimates the constant of Assumption 1 itself (the worst direction). "secant" estimates
    only what the proof uses it for, ``E_v |f(a + nu v) - f(a)| <= L0 nu E||v||``: along random noise
    directions a secant slope is about ||grad f|| / sqrt(d) (a random v is nearly orthogonal to the
    gradient), so "secant" is smaller by a factor of order sqrt(d) and gives a much tighter, still
    Markov-valid, version of eq. (16). Both are estimates from below of their constants (sampling
    can miss the worst point), not certified bounds: a certified L0 (product of layer norms) is
    orders of magnitude looser and would make eq. (16) vacuous. Read the bound as "under this L0".
    """
    mus = _check_grid(mus, "mu", True) if len(mus) else [0.0]  # no mu: segments x -> x + nu v only
    nus = _check_grid(nus, "nu", False)
    check_int(points, "points", minimum=1)
    if method not in L0_METHODS:
        raise unknown_name("L0 estimation method", method, L0_METHODS)
    x = objective.check_images(x)
    n = x.shape[0]
    shape = (n * points, *x.shape[1:])
    rows = torch.arange(n).repeat_interleave(points)
    view = (-1, *[1] * (x.dim() - 1))
    mu_k = torch.tensor(mus)[torch.arange(points) % len(mus)].repeat(n)
    s_k = (torch.arange(points) % 2).float().repeat(n)
    xs = x.repeat_interleave(points, dim=0)
    out = torch.empty(n, len(nus))
    for j, nu in enumerate(nus):
        u = sample_directions(shape, direction, generator)
        v = torch.randn(shape, generator=generator)
        a = xs + (s_k * mu_k).view(view) * u
        if method == "grad":
            tau = torch.rand(n * points, generator=generator).view(view)
            vals = objective.gradient_norms(a + tau * nu * v, rows)
        else:
            if nu == 0:
                vals = objective.gradient_norms(a, rows)  # the secant's limit as nu -> 0
            else:
                step = nu * v.flatten(1).norm(dim=1)
                vals = (objective(a + nu * v, rows) - objective(a, rows)).abs() / step
        out[:, j] = vals.view(n, points).amax(1)
    return out


@dataclass
class SignFlipResult:
    """Theorem 3 measured over a mu x nu grid (arrays indexed [mu, nu]).

    `p_flip`, `ci_low`, `ci_high`: pooled flip frequency over images x draws with its Wilson interval.
    `bound`: mean over images x draws of ``min(1, 2 L0 nu sqrt(d) / |h_mu|)`` (eq. 16, averaged).
    `p_image`, `bound_image`: the same per image, shape (N, n_mu, n_nu); `image_violations` counts
    images whose Wilson lower limit lies above their own mean bound (should be 0).
    `l0`: the local L0 per (image, nu); `abs_h_mu`: mean ``|h_mu|`` per mu; `vacuous`: share of draws
    whose bound is >= 1 (says nothing).
    """

    mus: list[float]
    nus: list[float]
    draws: int
    images: int
    dim: int
    direction: str
    l0_method: str
    p_flip: torch.Tensor
    ci_low: torch.Tensor
    ci_high: torch.Tensor
    bound: torch.Tensor
    p_image: torch.Tensor
    bound_image: torch.Tensor
    image_violations: torch.Tensor
    l0: torch.Tensor
    abs_h_mu: torch.Tensor
    vacuous: torch.Tensor
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def violations(self) -> list[tuple[float, float]]:
        """(mu, nu) cells where the measured P's lower confidence limit exceeds the mean bound."""
        bad = (self.ci_low > self.bound).nonzero().tolist()
        return [(self.mus[i], self.nus[j]) for i, j in bad]

    def rows(self) -> list[dict[str, float]]:
        """One record per cell, for tables and JSON."""
        out = []
        for i, mu in enumerate(self.mus):
            for j, nu in enumerate(self.nus):
                out.append(
                    {
                        "mu": mu,
                        "nu": nu,
                        "nu_over_mu": nu / mu,
                        "p_flip": float(self.p_flip[i, j]),
                        "ci_low": float(self.ci_low[i, j]),
                        "ci_high": float(self.ci_high[i, j]),
                        "bound": float(self.bound[i, j]),
                        "vacuous": float(self.vacuous[i, j]),
                        "image_violations": int(self.image_violations[i, j]),
                        "mean_abs_h_mu": float(self.abs_h_mu[i]),
                        "median_l0": float(self.l0[:, j].median()),
                    }
                )
        return out


def sign_flip_probability(
    model: nn.Module,
    images: torch.Tensor,
    labels: torch.Tensor,
    mus: Sequence[float],
    nus: Sequence[float],
    *,
    draws: int = 200,
    direction: Direction = "gaussian",
    l0: torch.Tensor | float | None = None,
    l0_method: L0Method = "grad",
    l0_points: int = 32,
    clip: bool = True,
    confidence_z: float = 1.96,
    generator: torch.Generator | None = None,
    seed: int = 0,
    chunk_images: int = 8,
    max_batch: int = 4096,
    progress: bool = False,
) -> SignFlipResult:
    """Monte Carlo estimate of P(sign h_mu(x) != sign h_nu(x)) (eq. 15) beside Theorem 3's bound (eq. 16).

    h_mu(x) = f(x + mu u) - f(x) and h_nu(x) = f(x + mu u + nu v1) - f(x + nu v2), f the CW margin
    (`rnd.theory.objective`), u from `direction`, v1, v2 ~ N(0, I), all from `generator` (seeded with
    `seed` if None). `l0`: a known constant, an (N, len(nus)) tensor, or None to estimate it locally
    with `estimate_l0(method=l0_method, points=l0_points)`. Work is batched: per chunk of
    `chunk_images` images, every draw of a cell is one forward batch.
    """
    mus = _check_grid(mus, "mu", True)
    nus = _check_grid(nus, "nu", False)
    draws = check_int(draws, "draws", minimum=1)
    check_int(chunk_images, "chunk_images", minimum=1)
    if direction not in DIRECTIONS:
        raise unknown_name("direction distribution", direction, DIRECTIONS)
    if generator is None:
        generator = torch.Generator().manual_seed(int(seed))
    objective = MarginObjective(model, labels, clip=clip, max_batch=max_batch)
    x = objective.check_images(images)
    n, d = x.shape[0], objective.dim
    n_mu, n_nu = len(mus), len(nus)
    if l0 is None:
        l0_t = estimate_l0(
            objective,
            x,
            mus,
            nus,
            points=l0_points,
            direction=direction,
            method=l0_method,
            generator=generator,
        )
    elif isinstance(l0, torch.Tensor):
        if tuple(l0.shape) != (n, n_nu):
            raise InputError(f"l0 must have shape (images, len(nus)) = {(n, n_nu)}, got {tuple(l0.shape)}")
        l0_t = l0.float()
    else:
        l0_t = torch.full((n, n_nu), check_positive(l0, "l0"))
    flips = torch.zeros(n, n_mu, n_nu)
    bound_sum = torch.zeros(n, n_mu, n_nu, dtype=torch.float64)
    abs_h = torch.zeros(n_mu, dtype=torch.float64)
    vacuous = torch.zeros(n_mu, n_nu)
    bar = tqdm(total=n, desc="sign flips", unit="img", disable=not progress, leave=False)
    for lo in range(0, n, chunk_images):
        idx = torch.arange(lo, min(lo + chunk_images, n))
        c = idx.numel()
        xc = x[idx]
        rows = idx.repeat_interleave(draws)
        xs = xc.repeat_interleave(draws, dim=0)
        shape = tuple(xs.shape)
        u = sample_directions(shape, direction, generator)
        v1 = torch.randn(shape, generator=generator)
        v2 = torch.randn(shape, generator=generator)
        f_x = objective(xc, idx).repeat_interleave(draws)
        # f(x + nu v2) has no mu in it: one batch per nu, shared by the mu row (nu = 0 reuses f(x))
        f_noisy_x = [f_x if nu == 0 else objective(xs + nu * v2, rows) for nu in nus]
        for i, mu in enumerate(mus):
            a = xs + mu * u
            h_mu = objective(a, rows) - f_x
            abs_h[i] += h_mu.abs().double().sum()
            for j, nu in enumerate(nus):
                h_nu = objective(a + nu * v1, rows) - f_noisy_x[j]
                flip = torch.sign(h_nu) != torch.sign(h_mu)
                flips[idx, i, j] = flip.view(c, draws).sum(1).float()
                b = theorem3_bound_tensor(l0_t[rows, j], nu, d, h_mu)
                bound_sum[idx, i, j] = b.double().view(c, draws).sum(1)
                vacuous[i, j] += float((b >= 1).sum())
        bar.update(c)
    bar.close()
    total = flips.sum(0)
    low, high = wilson_interval(total, n * draws, confidence_z)
    img_low, _ = wilson_interval(flips, draws, confidence_z)
    bound_image = (bound_sum / draws).float()
    return SignFlipResult(
        mus=mus,
        nus=nus,
        draws=draws,
        images=n,
        dim=d,
        direction=direction,
        l0_method="given" if l0 is not None else l0_method,
        p_flip=total / (n * draws),
        ci_low=low.float(),
        ci_high=high.float(),
        bound=bound_image.mean(0),
        p_image=flips / draws,
        bound_image=bound_image,
        image_violations=(img_low.float() > bound_image).sum(0),
        l0=l0_t,
        abs_h_mu=(abs_h / (n * draws)).float(),
        vacuous=vacuous / (n * draws),
        params={
            "draws": draws,
            "direction": direction,
            "clip": clip,
            "seed": seed,
            "l0_method": l0_method,
            "l0_points": l0_points,
            "confidence_z": confidence_z,
        },
    )
