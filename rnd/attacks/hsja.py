"""HopSkipJump (Chen, Jordan, Wainwright, IEEE S&P 2020): a label-only attack that walks along the
decision boundary with Monte Carlo gradient estimates.

Each iteration t (per image, from 1) at the boundary point x_b (distance D_t to the clean x0):

  1. gradient estimate from n_t = min(init_probes * sqrt(t), max_probes) probes u_i (Gaussian for
     l_2, uniform in [-1, 1]^d for l_inf, scaled to unit l_2 norm) at radius delta_t:
     g = mean_i (phi(x_b + delta_t u_i) - b) u_i, phi = +1 adversarial / -1 not, b = mean(phi)
     unless every phi has the same sign (then b = 0); direction v = g / ||g|| (l_2) or sign(g);
  2. geometric step search: eps = D_t / sqrt(t), halved until x_b + eps v is adversarial (at most
     `max_halvings` halvings, and what the budget allows);
  3. binary search back to the boundary between x0 and that point, on t in [0, 1] to precision
     theta: the l_2 blend (1 - t) x0 + t x, or for l_inf the projection x0 + clip(x - x0, -r, r)
     with r = t ||x - x0||_inf; the adversarial end is accepted and becomes x_b.

The start: uniform noise (the base's budget-bounded `random_start`), a blend search towards x0 to
precision 0.001, then the search of step 3 (the authors' initialisation).

Defaults (the authors' code, github.com/Jianbo-Lab/HSJA, DESIGN.md section 7): gamma = 1,
theta = gamma / d^1.5 (l_2) or gamma / d^2 (l_inf), d the number of pixels; delta_1 = 0.1 (a tenth
of the pixel range), then delta_t = sqrt(d) theta D_t (l_2) or d theta D_t (l_inf); 100 initial
probes. The reference caps probes at 10,000; `max_probes` defaults to 1,000: one gradient estimate
of every active image is one oracle batch (probes x images x pixels floats), and the cap binds only
from t = 100, after about 67,000 queries per image, far beyond the usual 10,000-query budget (which
the schedule spends in about 28 iterations, at most 530 probes).

`mu` is the first-iteration probe radius delta_1 (default 0.1, both norms). An adaptive attacker
(`mu_nu_ratio`) keeps every probe radius at least `cur_mu = max(mu, ratio * nu)`: the noise does
not shrink as the attack converges, so neither may the probes.

Batching and budgets: all images advance in lock-step; the probes of all active images go to the
oracle in one batch per iteration. Each image's probe count is capped so that its step search
(at least one decision) and a full boundary search stay affordable; an image that cannot afford
that stops with its best point. A step search that finds nothing (noise, or the budget) leaves the
image's point as it was. Subclasses change the boundary search (`boundary_search`,
`search_reserve`, `initial_search`) and the probes (`probe_count`, `probe_radius`): see PopSkipJump.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from rnd._checks import check_int, check_positive
from rnd.attacks.base import Norm, to_device, unit
from rnd.attacks.decision import DecisionAttack, DecisionState

#: Precision (on the blend factor) of the authors' first search from the random start towards x0.
INIT_TOL = 1e-3


def along(x0: torch.Tensor, xs: torch.Tensor, t: torch.Tensor, norm: str) -> torch.Tensor:
    """Points between x0 (t = 0) and xs (t = 1) per row: the l_2 blend, or for l_inf the projection
    of xs onto the l_inf ball of radius t ||xs - x0||_inf around x0 (both stay in [0, 1])."""
    tt = t.to(x0.dtype).view(-1, *([1] * (x0.dim() - 1)))
    diff = xs - x0
    if norm == "l2":
        out = x0 + tt * diff
    else:
        r = diff.flatten(1).abs().amax(1).view_as(tt) * tt
        out = x0 + torch.minimum(torch.maximum(diff, -r), r)
    return torch.where(tt == 1, xs, out.clamp(0.0, 1.0))  # t = 1 is xs itself, not x0 + (xs - x0)


def halvings(width: float, tol: float) -> int:
    """How many halvings `DecisionAttack.bisect` makes on an interval of `width` down to `tol`
    (compared in float32, as bisect does)."""
    w, tol32, k = 1.0 * width, float(torch.tensor(tol, dtype=torch.float32)), 0
    while w > tol32:
        w, k = w / 2, k + 1
    return k


@dataclass(eq=False)
class HopSkipJumpState(DecisionState):
    """HopSkipJump's per-image state: the boundary iterate (not always the best point `x`)."""

    xb: torch.Tensor = field(init=False)  # the current boundary point x_b
    db: torch.Tensor = field(init=False)  # its distance to x0, in the attack's norm
    it: torch.Tensor = field(init=False)  # the image's iteration t (1 on its first step)


class HopSkipJump(DecisionAttack[HopSkipJumpState]):
    """HopSkipJump, l_2 and l_inf, untargeted and targeted.

    Args:
        eps, norm, mu, kwargs: see `DecisionAttack` (shared options; `mu` is delta_1, see above).
        gamma: sets the search precision theta = gamma / d^1.5 (l_2) or gamma / d^2 (l_inf).
        init_probes: gradient probes on the first iteration (paper: 100), times sqrt(t) after.
        max_probes: cap on the probes of one gradient estimate.
        max_halvings: cap on the halvings of one geometric step search.

    Example:
        >>> oracle = Oracle(model, output="labels", budget=1000)
        >>> result = HopSkipJump(eps=1.5, norm="l2", seed=0)(oracle, images, labels)
    """

    name = "hsja"
    norms = ("l2", "linf")
    state_type = HopSkipJumpState
    default_mu = {"l2": 0.1, "linf": 0.1}

    def __init__(
        self,
        eps: float,
        norm: Norm = "l2",
        *,
        gamma: float = 1.0,
        init_probes: int = 100,
        max_probes: int = 1000,
        max_halvings: int = 20,
        **kwargs: Any,
    ) -> None:
        super().__init__(eps, norm, **kwargs)
        self.gamma = check_positive(gamma, "gamma")
        self.init_probes = check_int(init_probes, "init_probes")
        self.max_probes = check_int(max_probes, "max_probes")
        self.max_halvings = check_int(max_halvings, "max_halvings", minimum=0)

    # -- hyper-parameters that depend on the image size ----------------------------------------
    def theta(self, d: int) -> float:
        return self.gamma / (d**1.5 if self.norm == "l2" else d**2)

    def search_reserve(self, state: HopSkipJumpState) -> int:
        """Decisions one boundary search needs at most (kept back from the probes)."""
        return halvings(1.0, self.theta(state.x0[0].numel()))

    def probe_count(self, state: HopSkipJumpState, rows: torch.Tensor) -> torch.Tensor:
        """Probes wanted per row this iteration: init_probes * sqrt(t), capped."""
        n = (self.init_probes * state.it[rows].double().sqrt()).long()
        return n.clamp(1, self.max_probes)

    def probe_radius(self, state: HopSkipJumpState, rows: torch.Tensor) -> torch.Tensor:
        d = state.x0[0].numel()
        scale = math.sqrt(d) if self.norm == "l2" else d
        delta = scale * self.theta(d) * state.db[rows]
        delta = torch.where(state.it[rows] == 1, torch.full_like(delta, self.cur_mu), delta)
        if self.mu_nu_ratio is not None:
            delta = delta.clamp_min(self.cur_mu)
        return delta

    # -- the start -----------------------------------------------------------------------------
    def init(self, state: HopSkipJumpState) -> None:
        super().init(state)
        n = state.x0.shape[0]
        state.it = torch.ones(n, dtype=torch.int64)
        state.xb, state.db = state.x.clone(), state.dist.clone()
        rows = (self.active(state) & state.dist.isfinite() & (state.dist > 0)).nonzero().flatten()
        if rows.numel():
            self.initial_search(state, rows)
            self.after_step(state)

    def initial_search(self, state: HopSkipJumpState, rows: torch.Tensor) -> None:
        """From the starting point towards x0: a blend search to INIT_TOL, then `boundary_search`."""
        x0, xa = state.x0[rows], state.x[rows]
        n = rows.numel()
        _, hi = self.bisect(
            state, rows, lambda i, t: along(x0[i], xa[i], t, "l2"), torch.zeros(n), torch.ones(n), INIT_TOL
        )
        xs = along(x0, xa, hi, "l2")
        self.accept(state, rows, xs)
        state.xb[rows], state.db[rows] = xs, self.distance(xs, x0)
        self.move(state, rows, *self.boundary_search(state, rows, xs))

    # -- one iteration -------------------------------------------------------------------------
    def step(self, state: HopSkipJumpState, rows: torch.Tensor) -> None:
        degenerate = ~(state.db[rows] > 0)  # the 0/0 guard: x_b equals x0 (or was never found)
        state.done[rows[degenerate]] = True
        rows = rows[~degenerate]
        reserve = self.search_reserve(state)
        k = torch.minimum(self.probe_count(state, rows), self.affordable(state, rows) - reserve - 1)
        short = k < 1
        state.done[rows[short]] = True  # cannot pay for a probe, a step and a search: stop
        rows, k = rows[~short], k[~short]
        if not rows.numel():
            return
        grad = self.estimate_gradient(state, rows, k, self.probe_radius(state, rows))
        if self.norm == "l2":
            v = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
        else:
            v = grad.sign()
        eps0 = state.db[rows] / state.it[rows].double().sqrt().float()
        found, xs = self.step_search(state, rows, v, eps0, reserve)
        state.it[rows] += 1
        idx = found.nonzero().flatten()
        if idx.numel():
            self.move(state, rows[idx], *self.boundary_search(state, rows[idx], xs[idx]))

    def estimate_gradient(
        self, state: HopSkipJumpState, rows: torch.Tensor, k: torch.Tensor, delta: torch.Tensor
    ) -> torch.Tensor:
        """The Monte Carlo estimate at x_b from k[i] probes of radius delta[i] for rows[i] (k[i] > 0),
        the probes of consecutive rows in one oracle batch, `PROBE_CHUNK` images at a time."""
        return self.per_probe_chunk(self._estimate_gradient, state, rows, k, delta)

    def _estimate_gradient(
        self, state: HopSkipJumpState, rows: torch.Tensor, k: torch.Tensor, delta: torch.Tensor
    ) -> torch.Tensor:
        """`estimate_gradient` for rows whose probes are queried in one batch."""
        shape = tuple(state.x0.shape[1:])
        u = self.unit_probes(state, rows, k)
        seg = torch.arange(rows.numel()).repeat_interleave(k)
        probes, u = self.probe_points(state, rows, seg, delta, u)
        f = self.decide(state, probes, rows[seg]).float() * 2 - 1
        kf = k.float()
        mean_f = torch.zeros(rows.numel()).index_add_(0, seg, f) / kf
        baseline = torch.where(mean_f.abs() == 1, torch.zeros_like(mean_f), mean_f)
        fc = f - baseline[seg]
        g = torch.zeros(rows.numel(), u.shape[1]).index_add_(0, seg, u.mul_(fc[:, None])) / kf[:, None]
        return g.view(rows.numel(), *shape)

    def probe_points(
        self,
        state: HopSkipJumpState,
        rows: torch.Tensor,
        seg: torch.Tensor,
        delta: torch.Tensor,
        u: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The probes x_b + delta u (clipped to [0, 1]) of rows[seg], and the directions actually
        probed after clipping, (probe - x_b) / delta, flattened. The probe tensors hold every probe
        of a chunk (up to `PROBE_CHUNK` images), so each pass over them costs: the arithmetic runs
        in place (the same values as out of place; `u` is overwritten)."""
        base = state.xb.index_select(0, rows.index_select(0, seg))
        dl = delta[seg].view(-1, *([1] * (u.dim() - 1)))
        probes = u.mul_(dl).add_(base).clamp_(0.0, 1.0)
        made = probes.sub(base).div_(dl).flatten(1)
        return probes, made

    def unit_probes(self, state: HopSkipJumpState, rows: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """k[i] unit-l_2 directions for rows[i] (Gaussian for l_2, uniform for l_inf), each from its
        image's generator, in order."""
        shape = tuple(state.x0.shape[1:])
        counts = k.tolist()
        out = torch.empty(sum(counts), *shape)
        draw = torch.randn if self.norm == "l2" else torch.rand
        for r, part in zip(rows.tolist(), out.split(counts), strict=True):  # into place: no copy
            draw(*part.shape, generator=state.gens[r], out=part)
        if self.norm != "l2":
            out.mul_(2).sub_(1)  # uniform on [-1, 1): 2 u - 1, as drawn
        # CPU generators: one copy to the device; the draws are fresh, so they are scaled in place
        return unit(to_device(out, rows.device), in_place=True)

    def step_search(
        self, state: HopSkipJumpState, rows: torch.Tensor, v: torch.Tensor, eps: torch.Tensor, reserve: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Geometric step search: x_b + eps v, eps halved until adversarial (at most max_halvings
        times, keeping `reserve` decisions for the boundary search). Returns (found, points)."""
        eps, xb = eps.clone(), state.xb[rows]
        found = torch.zeros(rows.numel(), dtype=torch.bool)
        xs = xb.clone()
        for _ in range(self.max_halvings + 1):
            go = ~found & (self.affordable(state, rows) - reserve >= 1)
            if not bool(go.any()):
                break
            idx = go.nonzero().flatten()
            cand = (xb[idx] + eps[idx].view(-1, 1, 1, 1) * v[idx]).clamp(0.0, 1.0)
            adv = self.decide(state, cand, rows[idx])
            found[idx[adv]] = True
            xs[idx[adv]] = cand[adv]
            eps[idx[~adv]] /= 2
        return found, xs

    def boundary_search(
        self, state: HopSkipJumpState, rows: torch.Tensor, xs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """From the adversarial points `xs` back towards x0. Returns (new boundary iterates, points
        to accept, mask of rows whose results may be used): here the binary search's adversarial
        end, for every row."""
        x0, n = state.x0[rows], rows.numel()
        theta = self.theta(x0[0].numel())
        _, hi = self.bisect(
            state, rows, lambda i, t: along(x0[i], xs[i], t, self.norm), torch.zeros(n), torch.ones(n), theta
        )
        out = along(x0, xs, hi, self.norm)
        return out, out, torch.ones(n, dtype=torch.bool)

    def move(
        self,
        state: HopSkipJumpState,
        rows: torch.Tensor,
        x_iter: torch.Tensor,
        x_acc: torch.Tensor,
        ok: torch.Tensor,
    ) -> None:
        """Take a boundary search's result for the rows where `ok`: the new iterate, and the
        accepted point (kept as `x` if it is the closest so far)."""
        r = rows[ok]
        state.xb[r] = x_iter[ok]
        state.db[r] = self.distance(x_iter[ok], state.x0[r])
        self.accept(state, r, x_acc[ok])
