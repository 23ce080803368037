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

Batching: one decision per image per step, all in one oracle query. An image at the start of an
iteration sends its k probes; every other image sends the next decision of its line search (a
trial's first query, a fine step or a halving). So the forward holds the line searches of every
image beside the probes of those starting over, where the iteration as written ran each search
stage for the few images still in it. The start is batched the same way: each image walks its own
directions (a chunk of 10 in one round, then a check and a binary search per adversarial one), one
round per image per query. Each image makes the start's and the iteration's decisions in the same
order (the tests check this against the lock-step version on a deterministic model); a trial's
point is accepted when the trial ends (or the image's budget does), so with `stop_at_eps` an image
stops at the end of the trial that brings it within eps rather than at the end of its iteration.

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
# an image's next decision: its iteration's sign probes, or the first query of a line-search trial,
# a fine step, a halving
_PROBE, _FIRST, _FINE, _BISECT = 0, 1, 2, 3
# the start's: draw the next chunk of directions, find the next one to search, check it at the best
# g, halve its bracket, or out of the start
_DRAW, _WALK, _CHECK, _HALVE, _OUT = 0, 1, 2, 3, 4


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
    # the iteration in progress (one decision per step): where each image is, and what it keeps
    phase: torch.Tensor = field(init=False)  # _PROBE, _FIRST, _FINE or _BISECT
    grad: torch.Tensor = field(init=False)  # the iteration's sign gradient
    th0: torch.Tensor = field(init=False)  # theta and g at the iteration's start
    g0: torch.Tensor = field(init=False)
    tol: torch.Tensor = field(init=False)  # float64: the trials' bisection tolerance
    shrinking: torch.Tensor = field(init=False)  # bool: in the second phase (quartering alpha)
    trials: torch.Tensor = field(init=False)  # trials made in the phase
    cand: torch.Tensor = field(init=False)  # the trial's direction
    fine: torch.Tensor = field(init=False)  # fine steps made in the trial
    lo: torch.Tensor = field(init=False)  # float64: the trial's bracket (lo not adversarial,
    hi: torch.Tensor = field(init=False)  # hi adversarial)


@dataclass(eq=False)
class _StartWalk:
    """The start's state per image being started (indexed like `rows`): where it is in its walk
    over `n_init` directions, drawn `_INIT_CHUNK` at a time."""

    rows: torch.Tensor
    n_init: int  # the attack's: the chunks are n_init's
    tries: torch.Tensor  # directions it may draw (a quarter of its budget, at most n_init)
    drawn: torch.Tensor  # directions drawn so far
    dirs: torch.Tensor  # (n, _INIT_CHUNK, ...) the current chunk
    adv: torch.Tensor  # (n, _INIT_CHUNK) adversarial at x0 + direction
    j: torch.Tensor  # the next direction of the chunk to walk
    phase: torch.Tensor  # _DRAW, _WALK, _CHECK, _HALVE or _OUT
    theta: torch.Tensor  # the direction being searched (unit norm)
    lo: torch.Tensor  # float64 bracket of its search (the check's point: hi)
    hi: torch.Tensor

    @classmethod
    def new(cls, state: SignOPTState, rows: torch.Tensor, n_init: int, tries: torch.Tensor) -> _StartWalk:
        n, shape = rows.numel(), state.x0.shape[1:]
        zeros = torch.zeros(n, dtype=torch.long)
        return cls(
            rows=rows,
            n_init=n_init,
            tries=tries,
            drawn=zeros.clone(),
            dirs=torch.zeros(n, _INIT_CHUNK, *shape),
            adv=torch.zeros(n, _INIT_CHUNK, dtype=torch.bool),
            j=zeros.clone(),
            phase=torch.full((n,), _DRAW, dtype=torch.long),
            theta=torch.zeros(n, *shape),
            lo=torch.zeros(n, dtype=torch.float64),
            hi=torch.zeros(n, dtype=torch.float64),
        )


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
        return self.eot  # one decision (an iteration starts only with two to pay for: `step`)

    # -- start ---------------------------------------------------------------------------------
    def init(self, state: SignOPTState) -> None:
        n = state.x0.shape[0]
        state.theta = torch.zeros_like(state.x0)
        state.g = torch.full((n,), torch.inf, dtype=torch.float64)
        state.alpha = torch.full((n,), self.alpha, dtype=torch.float64)
        state.beta = torch.full((n,), self.cur_mu, dtype=torch.float64)
        state.phase = torch.full((n,), _PROBE, dtype=torch.long)
        state.grad, state.th0, state.cand = (torch.zeros_like(state.x0) for _ in range(3))
        state.g0, state.tol, state.lo, state.hi = (torch.zeros(n, dtype=torch.float64) for _ in range(4))
        state.shrinking = torch.zeros(n, dtype=torch.bool)
        state.trials, state.fine = torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)
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
        """The authors' start: best of `n_init` Gaussian directions (see the module docstring),
        one decision per image per round (a chunk's directions count as one: queried together),
        all images' decisions in one oracle query: each image walks its own directions, in order."""
        tries = (self.affordable(state, rows) // 4).clamp(1, self.n_init)
        w = _StartWalk.new(state, rows, self.n_init, tries)
        while True:
            self.walk(state, w)  # every image to its next decision (or out of the start)
            draw = (w.phase == _DRAW).nonzero().flatten()
            one = ((w.phase == _CHECK) | (w.phase == _HALVE)).nonzero().flatten()
            if not draw.numel() and not one.numel():
                return
            # the points: a chunk of directions from x0 per drawing row, else one point on its ray
            xs, who, split = [], [], []
            for c, part in self.chunks(w, draw):
                d = self.row_randn(state, w.rows[part], c, *state.x0.shape[1:])
                w.dirs[part, :c] = d
                want = (w.drawn[part][:, None] + torch.arange(c)[None]) < w.tries[part][:, None]
                want &= torch.arange(c)[None] < self.affordable(state, w.rows[part])[:, None]
                pi, ji = want.nonzero(as_tuple=True)
                xs.append((state.x0.index_select(0, w.rows[part][pi]) + d[pi, ji]).clamp(0.0, 1.0))
                who.append(w.rows[part][pi])
                split.append((part, pi, ji, c))
            t = torch.where(w.phase[one] == _CHECK, w.hi[one], (w.lo[one] + w.hi[one]) / 2)
            xs.append(ray(state.x0.index_select(0, w.rows[one]), w.theta[one], t))
            who.append(w.rows[one])
            adv = self.decide(state, torch.cat(xs), torch.cat(who))
            at = 0
            for part, pi, ji, c in split:
                hits = torch.zeros(part.numel(), _INIT_CHUNK, dtype=torch.bool)
                hits[pi, ji] = adv[at : at + pi.numel()]
                at += pi.numel()
                w.adv[part] = hits
                w.drawn[part] += c
                w.j.index_fill_(0, part, 0)
                w.phase.index_fill_(0, part, _WALK)
            self.start_answers(state, w, one, t, adv[at:])

    @staticmethod
    def chunks(w: _StartWalk, draw: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        """The drawing rows grouped by their chunk's size (the last chunk of n_init may be short)."""
        sizes = (w.n_init - w.drawn[draw]).clamp(max=_INIT_CHUNK)
        return [(int(c), draw[sizes == c]) for c in sizes.unique().tolist()]

    def walk(self, state: SignOPTState, w: _StartWalk) -> None:
        """Move every walking row to its next decision: the next adversarial direction of its chunk
        (a check at the best g where it reaches beyond it, else its binary search), else its next
        chunk, else out of the start. Directions that need no query (nothing affordable, or a
        bracket already within the tolerance) are taken in turn without one, as in the loop."""
        while True:
            walking = (w.phase == _WALK).nonzero().flatten()
            if not walking.numel():
                return
            j = w.j[walking]
            left = w.adv[walking] & (torch.arange(_INIT_CHUNK)[None] >= j[:, None])
            has = left.any(1)
            nxt = torch.where(has, left.int().argmax(1), _INIT_CHUNK)
            done = walking[~has]  # the chunk is walked: the next one, or the start is over
            more = w.drawn[done] < w.tries[done]
            w.phase[done] = torch.where(more, _DRAW, _OUT)
            go = walking[has]
            if not go.numel():
                continue
            jj = nxt[has]
            w.j[go] = jj + 1
            theta = w.dirs[go, jj]
            f = theta.flatten(1)
            lbd = (f.abs().amax(1) if self.norm == "linf" else f.norm(dim=1)).double()
            w.theta[go] = unit(theta, self.norm)
            best = state.g[w.rows[go]]
            check = (lbd > best) & best.isfinite()
            afford = self.affordable(state, w.rows[go]) >= 1
            w.lo[go] = 0.0
            w.hi[go] = torch.where(check, best, lbd)
            # a check that cannot be paid for drops the direction; else check, or search [0, lbd]
            phase = torch.where(check, torch.where(afford, _CHECK, _WALK), _HALVE)
            w.phase[go] = phase
            ready = go[(phase == _HALVE) & ((w.hi[go] - w.lo[go] <= self.tol) | ~afford)]
            self.direction_over(state, w, ready)

    def start_answers(
        self, state: SignOPTState, w: _StartWalk, one: torch.Tensor, t: torch.Tensor, adv: torch.Tensor
    ) -> None:
        """Checks and halvings answered: a check that holds opens the search on [0, best g], one
        that fails drops the direction; a search ends at the tolerance or the budget."""
        if not one.numel():
            return
        checking = w.phase[one] == _CHECK
        w.phase[one[checking & ~adv]] = _WALK
        halving = ~checking
        w.hi[one] = torch.where(halving & adv, t, w.hi[one])
        w.lo[one] = torch.where(halving & ~adv, t, w.lo[one])
        w.phase[one[checking & adv]] = _HALVE
        searching = one[checking & adv | halving]
        spent = self.affordable(state, w.rows[searching]) < 1
        over = (w.hi[searching] - w.lo[searching] <= self.tol) | spent
        self.direction_over(state, w, searching[over])

    def direction_over(self, state: SignOPTState, w: _StartWalk, idx: torch.Tensor) -> None:
        """The searches of walk rows `idx` are over: accept their points, keep the direction where
        its g beats the best, and walk on."""
        if not idx.numel():
            return
        r, top, th = w.rows[idx], w.hi[idx], w.theta[idx]
        self.accept(state, r, ray(state.x0.index_select(0, r), th, top))
        better = top < state.g[r]
        state.g[r[better]], state.theta[r[better]] = top[better], th[better]
        w.phase[idx] = _WALK

    # -- the search: one decision per image per step ------------------------------------------
    def probe_points(
        self, state: SignOPTState, rows: torch.Tensor, k: torch.Tensor, lead: int = 0
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The sign probes of `rows`, the first k[r] of `self.k` per row: (points, the row index
        of each point into `rows`, each point's unit probe direction u). Point j is
        x0 + g (theta + beta u) / ||theta + beta u||, clipped. Each row's theta, x0, beta and g
        are broadcast over its probes and the arithmetic runs in place on one buffer (the same
        operations in the same order as gathering them per probe: the same values). The points
        start at row `lead` of the buffer returned, whose first rows are left for the caller's."""
        n, shape = rows.numel(), state.x0.shape[1:]
        u = self.row_randn(state, rows, self.k, *shape)
        u = unit(u.flatten(0, 1), self.norm, in_place=True)
        if bool((k == self.k).all()):  # every probe of every row (all but an image's last steps)
            pi = torch.arange(n).repeat_interleave(self.k)
            r = rows
        else:
            pi, qi = (torch.arange(self.k)[None] < k[:, None]).nonzero(as_tuple=True)
            u = u.view(n, self.k, *shape)[pi, qi]
            r = rows.index_select(0, pi)
        m = u.shape[0] // r.numel()  # probes per row of `r`: broadcast over them
        per_row = (r.numel(), 1, *([1] * len(shape)))
        buf = torch.empty(lead + u.shape[0], *shape)
        p = buf[lead:].view(r.numel(), m, *shape)
        torch.mul(state.beta.index_select(0, r).float().view(per_row), u.view_as(p), out=p)
        p.add_(state.theta.index_select(0, r).unsqueeze(1))
        unit(p.flatten(0, 1), self.norm, in_place=True)
        p.mul_(state.g.index_select(0, r).float().view(per_row))
        p.add_(state.x0.index_select(0, r).unsqueeze(1)).clamp_(0.0, 1.0)
        return buf, pi, u

    def new_trial(self, state: SignOPTState, rows: torch.Tensor) -> None:
        """The line search's next trial direction for `rows`: theta0 - alpha grad, normalised."""
        a = state.alpha.index_select(0, rows).float().view(-1, *([1] * (state.x0.dim() - 1)))
        cand = unit(state.th0.index_select(0, rows) - a * state.grad.index_select(0, rows), self.norm)
        state.cand.index_copy_(0, rows, cand)
        state.phase.index_fill_(0, rows, _FIRST)

    def step(self, state: SignOPTState, rows: torch.Tensor) -> None:
        """One decision per image, all in one oracle query: the sign probes of an image at the
        start of its iteration (k decisions), else the next decision of its line search (see the
        module docstring). Each image makes the decisions of the iteration as written, in order."""
        phase = state.phase.index_select(0, rows)
        left = self.affordable(state, rows)
        # an iteration starts only with a probe and a line-search decision to pay for
        broke = (phase == _PROBE) & (left < 2)
        if bool(broke.any()):
            state.done.index_fill_(0, rows[broke], True)
            keep = ~broke
            rows, phase, left = rows[keep], phase[keep], left[keep]
        probing = phase == _PROBE
        pr = rows[probing]
        sr, sph = rows[~probing], phase[~probing]
        lo, hi = state.lo.index_select(0, sr), state.hi.index_select(0, sr)
        t = torch.where(
            sph == _FIRST, state.g.index_select(0, sr), torch.where(sph == _FINE, lo, (lo + hi) / 2)
        )
        xs = ray(state.x0.index_select(0, sr), state.cand.index_select(0, sr), t)
        # the probes, at most _PROBE_ELEMS pixels at a time (each chunk's gradient made before the
        # next chunk is drawn); the first chunk goes in one query with the searches' points
        k = (left[probing] - 1).clamp(1, self.k)
        per = max(1, _PROBE_ELEMS // (self.k * state.x0[0].numel()))
        view = (-1, *([1] * (state.x0.dim() - 1)))
        adv_s = None
        for c0 in range(0, pr.numel(), per):
            part = slice(c0, c0 + per)
            lead = xs.shape[0] if c0 == 0 else 0
            pts, pi, u = self.probe_points(state, pr[part], k[part], lead)
            who = pr[part].index_select(0, pi)
            if lead:
                pts[:lead] = xs
                who = torch.cat([sr, who])
            adv = self.decide(state, pts, who)
            del pts
            if c0 == 0:
                adv_s, adv = adv[: sr.numel()], adv[sr.numel() :]
            s = torch.where(adv, -1.0, 1.0).view(view)
            grad = torch.zeros(pr[part].numel(), *state.x0.shape[1:]).index_add_(0, pi, u.mul_(s))
            state.grad.index_copy_(0, pr[part], grad / k[part].float().view(view))
        if adv_s is None:
            adv_s = self.decide(state, xs, sr)
        if pr.numel():  # the line search starts: from theta0, g0 with alpha, growing
            g0 = state.g.index_select(0, pr)
            b = state.beta.index_select(0, pr)
            state.g0.index_copy_(0, pr, g0)
            state.th0.index_copy_(0, pr, state.theta.index_select(0, pr))
            state.tol.index_copy_(0, pr, torch.maximum(b / 500, (b * _TOL_SHARE).clamp_min(_REL_TOL) * g0))
            state.shrinking.index_fill_(0, pr, False)
            state.trials.index_fill_(0, pr, 0)
            self.new_trial(state, pr)
        if sr.numel():
            self.search_answers(state, sr, sph, t, lo, hi, adv_s)

    def search_answers(
        self,
        state: SignOPTState,
        rows: torch.Tensor,
        phase: torch.Tensor,
        t: torch.Tensor,
        lo: torch.Tensor,
        hi: torch.Tensor,
        adv: torch.Tensor,
    ) -> None:
        """Move each searching row on from its answer `adv` at t: the first query of a trial at
        the best g (a miss ends the trial), 1 % steps down while adversarial, then halvings of
        [lo, hi]; a trial ends at the tolerance or when the image can afford no more."""
        first, fine = phase == _FIRST, phase == _FINE
        down = (first | fine) & adv  # adversarial at t: hi = t, the next fine step 1 % lower
        nfine = torch.where(first, 0, state.fine.index_select(0, rows)) + (fine & adv).long()
        hi = torch.where(down | ((phase == _BISECT) & adv), t, hi)
        lo = torch.where(down, t * (1 - _FINE), torch.where((phase == _BISECT) & ~adv, t, lo))
        lo = torch.where(fine & adv & (nfine >= _FINE_STEPS), 0.0, lo)  # the bracket from x0
        # the fine steps end at a non-adversarial answer or after _FINE_STEPS
        phase = torch.where(first & adv, _FINE, phase)
        phase = torch.where(fine & (~adv | (nfine >= _FINE_STEPS)), _BISECT, phase)
        missed = first & ~adv
        spent = self.affordable(state, rows) < 1
        searching = phase != _FIRST
        over = searching & ((phase == _BISECT) & (hi - lo <= state.tol.index_select(0, rows)) | spent)
        state.lo.index_copy_(0, rows, lo)
        state.hi.index_copy_(0, rows, hi)
        state.fine.index_copy_(0, rows, nfine)
        state.phase.index_copy_(0, rows, phase)
        ended = (missed | over).nonzero().flatten()
        if ended.numel():
            gn = torch.where(missed, torch.inf, hi).index_select(0, ended)
            self.trial_over(state, rows.index_select(0, ended), gn)

    def trial_over(self, state: SignOPTState, rows: torch.Tensor, gn: torch.Tensor) -> None:
        """A trial of `rows` found g = gn along its direction (inf: not adversarial at the best g):
        accept the point, keep the direction if g fell, and go on with the line search: double
        alpha while g keeps falling (at most _LS_TRIALS trials); if the first trial failed,
        quarter alpha until g falls (at most _LS_TRIALS); then the iteration ends."""
        hit = gn.isfinite()
        cand = state.cand.index_select(0, rows)
        if bool(hit.any()):
            h = hit.nonzero().flatten()
            self.accept(state, rows[h], ray(state.x0.index_select(0, rows[h]), cand[h], gn[h]))
        ok = gn < state.g.index_select(0, rows)
        if bool(ok.any()):
            state.g.index_copy_(0, rows[ok], gn[ok])
            state.theta.index_copy_(0, rows[ok], cand[ok])
        trials = state.trials.index_select(0, rows) + 1
        shrinking = state.shrinking.index_select(0, rows)
        alpha = state.alpha.index_select(0, rows)
        alpha = torch.where(shrinking, alpha, alpha * 2)
        grow_on = ~shrinking & ok & (trials < _LS_TRIALS)
        grown = ~shrinking & ~grow_on  # growing ends: shrink if the first trial failed
        to_shrink = grown & (state.g.index_select(0, rows) >= state.g0.index_select(0, rows))
        shrink_on = (shrinking & ~ok & (trials < _LS_TRIALS)) | to_shrink
        trials = torch.where(to_shrink, 0, trials)
        alpha = torch.where(shrink_on, alpha * 0.25, alpha)
        state.trials.index_copy_(0, rows, trials)
        state.shrinking.index_copy_(0, rows, shrinking | to_shrink)
        state.alpha.index_copy_(0, rows, alpha)
        more = grow_on | shrink_on
        if bool(more.any()):
            self.new_trial(state, rows[more])
        fin = rows[~more]
        if fin.numel():  # the iteration ends; not moving: restart alpha, finer probes
            a, b = state.alpha.index_select(0, fin), state.beta.index_select(0, fin)
            reset = a < _ALPHA_FLOOR[self.norm]
            state.alpha.index_copy_(0, fin, torch.where(reset, 1.0, a))
            b = torch.where(reset, b * 0.1, b)
            state.beta.index_copy_(0, fin, b)
            state.done.index_copy_(0, fin, state.done.index_select(0, fin) | (b < _BETA_FLOOR))
            state.phase.index_fill_(0, fin, _PROBE)
