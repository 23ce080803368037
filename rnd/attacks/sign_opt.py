"""Sign-OPT (Cheng, Singh, Chen, Chen, Liu, Hsieh, ICLR 2020): sign-gradient descent on the ray.

Label-only. The attack searches a direction theta (unit norm in the attack's norm) that
minimises::

    g(theta) = min { lambda > 0 : x0 + lambda theta is adversarial },

the distance to the decision boundary along theta; x0 + g(theta) theta is the adversarial example.
Each iteration (the paper's Alg. 1):

- sign gradient from k random directions u (Gaussian, scaled to unit norm), each ONE query: is
  x0 + g(theta) (theta + beta u) / ||theta + beta u|| adversarial? If so g falls along u (sign -1),
  else it rises (+1); grad = mean(sign * u). All probes of all images go in one oracle query.
- step theta - alpha grad (renormalised) with the authors' line search on alpha: double alpha while
  g keeps falling (up to 15 trials); if the first trial fails, quarter alpha until g falls (up to
  15). Each trial evaluates g by a fine-grained search started at the best g so far: one query
  there (not adversarial: the trial failed), then 1 % steps down while adversarial (at most 10,
  then the bracket starts at 0; the authors' loop is unbounded), then a binary search. (The
  authors' search, on a failed first query, steps 1 % up until adversarial and bisects; that value
  is only compared and dropped, so it is skipped here.) The authors bisect to beta / 500; here to
  max(beta / 500, max(beta / 10, 1e-5) g): finer is below float32 pixel resolution at g ~ 1, and
  leaves points within float noise of the boundary, whose label then flips with the batch a
  model is run in. beta g / 10 is a tenth of how far a probe moves the boundary point.
- when alpha falls below 1e-4 (l_2) / 1e-6 (l_inf) alpha resets to 1 and beta shrinks tenfold; an
  image stops once beta < 1e-8.

Start: `n_init` Gaussian directions, each one query at x0 + theta; for each adversarial one in
turn, one query at the best g so far along it (skipped when it is not adversarial there), then a
binary search from 0 to tol `tol`. At most a quarter of the remaining budget goes to directions.

l_inf (the authors' own l_inf variant, cmhcbb/attackbox `attack/Sign_OPT_lf.py`): the same search
with every norm in l_inf: theta, the probes u and the updated directions are scaled to unit
l_inf norm (an older copy, `sign_sgd/OPT_attack_sign_SGD_lf.py`, scales u in l_2), so g(theta)
is the smallest lambda with x0 + lambda theta / ||theta||_inf adversarial, the l_inf distance of
the boundary point. (BlackboxBench's "l_inf Sign-OPT" instead runs the l_2
search and checks success in l_inf; this is not that.) The authors' l_inf code resets alpha at
1e-6 and its start bisects to 1e-5; the start here uses `tol` in both norms.

Points are clipped to [0, 1]; the distance recorded is that of the clipped point (at most g).
Random Gaussian starts are far on Fashion-MNIST: on the test suite's tiny CNN the l_inf variant's
start lies far beyond the distance the search then reaches; `starts` helps.

Defaults, from the authors' code (cmhcbb/attackbox `attack/Sign_OPT.py`, `attack/Sign_OPT_lf.py`)
and the paper: k = 200, alpha = 0.2, beta = 0.001 (both norms; the RND paper's code,
SCLBD/BlackboxBench, uses the same), 100 start directions, start tolerance 1e-3 (the authors'
l_2 start). `mu` is beta, the probe smoothing; `cur_mu` (beta after adaptive scaling) is where
each image's beta starts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from rnd._checks import check_int, check_positive
from rnd.attacks.base import Norm, unit
from rnd.attacks.decision import DecisionAttack, DecisionState

_FINE = 0.01  # fine-grained search: steps of 1 % of g
_FINE_STEPS = 10  # then bisect from 0 (the authors' loop is unbounded)
_LS_TRIALS = 15  # per line-search phase (authors)
_ALPHA_FLOOR = {"l2": 1e-4, "linf": 1e-6}  # authors
_BETA_FLOOR = 1e-8  # authors: stop
_TOL_SHARE = 0.1  # line-search bisection stops at tol_share * beta * g (see the module docstring)
_REL_TOL = 1e-5  # and never below 1e-5 g
_INIT_CHUNK = 10  # start directions drawn per round (memory bound)
_PROBE_ELEMS = 2**26  # probe pixels per oracle query (memory bound; one query on small images)


def ray(x0: torch.Tensor, theta: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """clip(x0 + t theta) per row (t float64 per row)."""
    return (x0 + t.float().view(-1, *([1] * (x0.dim() - 1))) * theta).clamp(0.0, 1.0)


@dataclass(eq=False)
class SignOPTState(DecisionState):
    """Sign-OPT's per-image state: direction, its g, and the line-search step and probe size."""

    theta: torch.Tensor = field(init=False)  # unit direction (attack's norm)
    g: torch.Tensor = field(init=False)  # float64: g(theta); inf while no direction is known
    alpha: torch.Tensor = field(init=False)  # float64: line-search step
    beta: torch.Tensor = field(init=False)  # float64: probe smoothing


class SignOPT(DecisionAttack[SignOPTState]):
    """Sign-OPT, l_2 and l_inf (the authors' l_inf search), untargeted or targeted.

    Args:
        eps, norm, mu, kwargs: see `DecisionAttack` (shared options; `mu` is beta, default 0.001).
        k: sign probes per iteration (paper: 200).
        alpha: initial line-search step (paper: 0.2).
        n_init: random start directions tried (authors: 100), capped by a quarter of the budget.
        tol: binary-search tolerance of the start (authors' l_2 code: 1e-3); the line search
            uses beta / 500.
    """

    name = "sign-opt"
    norms = ("l2", "linf")
    state_type = SignOPTState
    default_mu = {"l2": 0.001, "linf": 0.001}

    def __init__(
        self,
        eps: float,
        norm: Norm = "linf",
        *,
        k: int = 200,
        alpha: float = 0.2,
        n_init: int = 100,
        tol: float = 1e-3,
        **kwargs: Any,
    ) -> None:
        super().__init__(eps, norm, **kwargs)
        self.k = check_int(k, "k")
        self.alpha = check_positive(alpha, "alpha")
        self.n_init = check_int(n_init, "n_init")
        self.tol = check_positive(tol, "tol")

    @property
    def step_cost(self) -> int:
        return 2 * self.eot  # one probe and one line-search query at least

    # -- start ---------------------------------------------------------------------------------
    def init(self, state: SignOPTState) -> None:
        n = state.x0.shape[0]
        state.theta = torch.zeros_like(state.x0)
        state.g = torch.full((n,), torch.inf, dtype=torch.float64)
        state.alpha = torch.full((n,), self.alpha, dtype=torch.float64)
        state.beta = torch.full((n,), self.cur_mu, dtype=torch.float64)
        super().init(state)  # clean query, given starts, then `start`
        # images with a point but no direction (given start, raw start point): the ray through it
        rows = (state.dist.isfinite() & ~state.g.isfinite()).nonzero().flatten()
        delta = (state.x[rows] - state.x0[rows]).flatten(1)
        size = delta.abs().amax(1) if self.norm == "linf" else delta.norm(dim=1)
        state.done[rows[size <= 0]] = True  # the clean image itself is adversarial
        ok = rows[size > 0]
        state.theta[ok] = unit(state.x[ok] - state.x0[ok], self.norm)
        state.g[ok] = size[size > 0].double()

    def start(self, state: SignOPTState, rows: torch.Tensor) -> None:
        """The authors' start: best of `n_init` Gaussian directions (see the module docstring)."""
        shape = state.x0.shape[1:]
        tries = (self.affordable(state, rows) // 4).clamp(1, self.n_init)
        for c0 in range(0, self.n_init, _INIT_CHUNK):
            c = min(_INIT_CHUNK, self.n_init - c0)
            drawing = (tries > c0).nonzero().flatten()
            if not drawing.numel():
                return
            dirs = self.row_randn(state, rows[drawing], c, *shape)
            want = (c0 + torch.arange(c))[None] < tries[drawing][:, None]
            want &= torch.arange(c)[None] < self.affordable(state, rows[drawing])[:, None]
            pi, ji = want.nonzero(as_tuple=True)
            x = (state.x0[rows[drawing][pi]] + dirs[pi, ji]).clamp(0.0, 1.0)
            adv = self.decide(state, x, rows[drawing][pi])
            for j in range(c):  # in turn, as the authors (each bisection starts from the best g)
                sel = pi[adv & (ji == j)]
                if sel.numel():
                    self._try_direction(state, rows[drawing][sel], dirs[sel, j])

    def _try_direction(self, state: SignOPTState, rows: torch.Tensor, theta: torch.Tensor) -> None:
        """One start direction per row, known adversarial at x0 + theta: keep it if its g beats."""
        f = theta.flatten(1)
        lbd = (f.abs().amax(1) if self.norm == "linf" else f.norm(dim=1)).double()
        theta = unit(theta, self.norm)
        best = state.g[rows]
        x0 = state.x0[rows]
        keep = torch.ones(rows.numel(), dtype=torch.bool)
        check = (lbd > best) & best.isfinite()
        if bool(check.any()):  # adversarial at the best g so far? else it cannot beat it
            idx = check.nonzero().flatten()
            idx = idx[self.affordable(state, rows[idx]) >= 1]
            keep[check] = False
            if idx.numel():
                keep[idx] = self.decide(state, ray(x0[idx], theta[idx], best[idx]), rows[idx])
        hi = torch.where(check, best, lbd)
        idx = keep.nonzero().flatten()
        if not idx.numel():
            return
        xs, th, r = x0[idx], theta[idx], rows[idx]
        zero = torch.zeros(idx.numel(), dtype=torch.float64)
        _, top = self.bisect(state, r, lambda j, t: ray(xs[j], th[j], t), zero, hi[idx], self.tol)
        self.accept(state, r, ray(xs, th, top))
        better = top < best[idx]
        state.g[r[better]], state.theta[r[better]] = top[better], th[better]

    # -- the search ----------------------------------------------------------------------------
    def boundary(
        self,
        state: SignOPTState,
        rows: torch.Tensor,
        theta: torch.Tensor,
        ref: torch.Tensor,
        tol: torch.Tensor,
    ) -> torch.Tensor:
        """g along unit directions `theta` (one per row), searched from `ref`: inf where x0 + ref
        theta is not adversarial (or unaffordable); else the adversarial end of a fine-grained
        search then bisection (an observed-adversarial point, accepted)."""
        out = torch.full((rows.numel(),), torch.inf, dtype=torch.float64)
        x0 = state.x0[rows]
        idx = (self.affordable(state, rows) >= 1).nonzero().flatten()
        if not idx.numel():
            return out
        adv = self.decide(state, ray(x0[idx], theta[idx], ref[idx]), rows[idx])
        hit = idx[adv]
        if not hit.numel():
            return out
        hi = ref[hit].clone()
        lo = hi * (1 - _FINE)
        going = torch.ones(hit.numel(), dtype=torch.bool)
        for _ in range(_FINE_STEPS):  # 1 % steps down while still adversarial
            go = (going & (self.affordable(state, rows[hit]) >= 1)).nonzero().flatten()
            if not go.numel():
                break
            a = self.decide(state, ray(x0[hit[go]], theta[hit[go]], lo[go]), rows[hit[go]])
            going[go[~a]] = False
            hi[go[a]] = lo[go[a]]
            lo[go[a]] = lo[go[a]] * (1 - _FINE)
        lo[going] = 0.0  # still adversarial after the fine steps: bracket from the clean image
        xs, th = x0[hit], theta[hit]
        lo, hi = self.bisect(state, rows[hit], lambda j, t: ray(xs[j], th[j], t), lo, hi, tol[hit])
        self.accept(state, rows[hit], ray(xs, th, hi))
        out[hit] = hi
        return out

    def sign_grad(self, state: SignOPTState, rows: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """mean(sign * u) over each row's first k[r] of `self.k` probes (one query each)."""
        shape = state.x0.shape[1:]
        grad = torch.zeros(rows.numel(), *shape)
        per = max(1, _PROBE_ELEMS // (self.k * state.x0[0].numel()))
        for c0 in range(0, rows.numel(), per):
            p = torch.arange(c0, min(c0 + per, rows.numel()))
            r = rows[p]
            u = self.row_randn(state, r, self.k, *shape)
            u = unit(u.flatten(0, 1), self.norm).view_as(u)
            pi, qi = (torch.arange(self.k)[None] < k[p][:, None]).nonzero(as_tuple=True)
            beta = state.beta[r][pi].float().view(-1, *([1] * len(shape)))
            probe = unit(state.theta[r][pi] + beta * u[pi, qi], self.norm)
            adv = self.decide(state, ray(state.x0[r][pi], probe, state.g[r][pi]), r[pi])
            s = torch.where(adv, -1.0, 1.0).view(-1, *([1] * len(shape)))
            grad[p] = torch.zeros_like(grad[p]).index_add_(0, pi, s * u[pi, qi])
        return grad / k.float().view(-1, *([1] * len(shape)))

    def step(self, state: SignOPTState, rows: torch.Tensor) -> None:
        k = (self.affordable(state, rows) - 1).clamp(1, self.k)  # keep a query for the line search
        grad = self.sign_grad(state, rows, k)
        view = (-1, *([1] * (grad.dim() - 1)))
        g0, th0 = state.g[rows], state.theta[rows]
        a, b = state.alpha[rows].clone(), state.beta[rows].clone()
        tol = torch.maximum(b / 500, (b * _TOL_SHARE).clamp_min(_REL_TOL) * g0)
        best_g, best_th = g0.clone(), th0.clone()

        def trial(i: torch.Tensor) -> torch.Tensor:
            cand = unit(th0[i] - a[i].float().view(view) * grad[i], self.norm)
            gn = self.boundary(state, rows[i], cand, best_g[i], tol[i])
            ok = gn < best_g[i]
            best_g[i[ok]], best_th[i[ok]] = gn[ok], cand[ok]
            return ok

        growing = torch.ones(rows.numel(), dtype=torch.bool)
        for _ in range(_LS_TRIALS):  # double alpha while g keeps falling
            growing &= self.affordable(state, rows) >= 1
            i = growing.nonzero().flatten()
            if not i.numel():
                break
            ok = trial(i)
            a[i] *= 2
            growing[i[~ok]] = False
        shrinking = best_g >= g0  # the first step failed: quarter alpha until g falls
        for _ in range(_LS_TRIALS):
            shrinking &= self.affordable(state, rows) >= 1
            i = shrinking.nonzero().flatten()
            if not i.numel():
                break
            a[i] *= 0.25
            shrinking[i[trial(i)]] = False
        reset = a < _ALPHA_FLOOR[self.norm]  # not moving: restart alpha, finer probes
        a[reset] = 1.0
        b[reset] *= 0.1
        state.g[rows], state.theta[rows] = best_g, best_th
        state.alpha[rows], state.beta[rows] = a, b
        state.done[rows] |= b < _BETA_FLOOR
