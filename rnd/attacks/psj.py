"""PopSkipJump (Simon-Gabriel, Sheikh, Krause, ICML 2021): HopSkipJump for classifiers whose
answers are random, such as a model behind Random Noise Defense.

HopSkipJump's binary search trusts every answer; under noise one wrong answer sends it to the wrong
half for good, and its best point is often a lucky noisy answer. This attack keeps HopSkipJump's
iteration (`rnd.attacks.hsja`) and changes three things, in the spirit of the paper:

(a) Bayesian line search instead of the binary search. Along the segment x0 (t = 0) -> x_s (t = 1)
    the chance of an adversarial answer is modelled as::

        P(adv | t) = floor + (1 - 2 floor) * sigmoid((t - t0) / s),

    the noise floor `floor` fixed, the boundary t0 and the width s unknown, with a uniform prior on a
    grid of `grid_size` values of t0 times the widths `WIDTHS`. Each round queries every image at
    the posterior median of t0 (probabilistic bisection; the paper places queries by expected
    information gain instead) and updates the posterior; the t0 grid zooms in (recomputed from all
    answers) once the posterior sits in a quarter of it. A search stops when the 10-90 % interval
    of t0 is below `line_tol`, after `line_queries` rounds, or when the image's budget is spent.
(b) Probes from the estimated noise. The posterior mean of s times the segment's l_2 length is
    the transition width w of the boundary (about nu for RND; 0 while no two answers of the
    image's searches have contradicted a sharp boundary, since consistent answers cannot rule out
    widths below their spacing). A probe of radius delta moves about delta / sqrt(d) across the
    boundary, so probes say little when that is far below w: the radius is raised to
    `probe_scale * w * sqrt(d)` (at most half the iterate's l_2 distance), and the probe count is
    HopSkipJump's times 1 + (w sqrt(d) / delta)^2, at most MAX_PROBE_FACTOR times (and
    `max_probes`). The paper keeps HopSkipJump's radius and raises the count alone (matching the
    expected cosine of the noiseless estimate), a count beyond any budget of a few thousand queries
    under RND; the radius floor is this implementation's choice. Without noise w = 0 and the probes
    are HopSkipJump's.
(c) "Adversarial" means P(true label) < 0.5. The point proposed by a search is the first t above
    the median whose predicted P(adv | t) is at least `accept_p`; it is accepted (as `x`, and as the
    next iterate: on the adversarial side, so that small steps stay adversarial) only when the
    majority of fresh votes there is adversarial (`confirm` decisions of `eot` labels each once the
    image has shown noise; one while its answers have all been consistent: a deterministic
    classifier repeats itself). A point that fails gets one more check at the closest point above it
    answered adversarial during the search (a second crossing of the segment, or noise); a search
    with no confirmed point leaves the image's iterate and best point as they were.

Defaults: grid_size 100 (the authors' MNIST setting, github.com/cjsg/PopSkipJump); the others are
this implementation's: floor 0.02, line_tol theta, line_queries 30, confirm 5, accept_p 0.75,
probe_scale 1. The rest (gamma, probes, `mu` = the first probe radius): see `HopSkipJump`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from rnd._checks import check_int, check_positive
from rnd.attacks.base import Norm
from rnd.attacks.hsja import HopSkipJump, HopSkipJumpState, along
from rnd.errors import InputError

#: Widths s of the sigmoid (in units of t, the segment length) the line search weighs; the first
#: stands for a deterministic boundary.
WIDTHS = (1e-8, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)
#: The most the noise may multiply HopSkipJump's probe count by.
MAX_PROBE_FACTOR = 4.0


def p_adv(t: torch.Tensor, t0: torch.Tensor, s: torch.Tensor, floor: float) -> torch.Tensor:
    """The line-search model P(adversarial | t) for boundary t0 and width s (broadcasting); in
    place on the one tensor of the broadcast shape (the same values as out of place)."""
    return ((t - t0) / s).sigmoid_().mul_(1 - 2 * floor).add_(floor)


def quantile(tg: torch.Tensor, marg: torch.Tensor, q: float) -> torch.Tensor:
    """Per row, the first grid value of `tg` (n, G) where the cdf of `marg` (n, G) reaches q."""
    return quantiles(tg, marg, (q,))[:, 0]


def quantiles(tg: torch.Tensor, marg: torch.Tensor, qs: tuple[float, ...]) -> torch.Tensor:
    """`quantile` at each of `qs`, (n, len(qs)), from one cdf: the count of cdf values below q is
    where q sorts into the (non-decreasing) cdf."""
    cdf = marg.cumsum(1)
    q = torch.tensor(qs, dtype=cdf.dtype, device=cdf.device).expand(cdf.shape[0], len(qs)).contiguous()
    return tg.gather(1, torch.searchsorted(cdf, q).clamp(max=tg.shape[1] - 1))


def contradicted(ts: torch.Tensor, ys: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """Per row: 1.0 if some adversarial answer lies strictly closer to x0 than a non-adversarial
    one (no sharp boundary explains the answers: the classifier is noisy), else 0.0."""
    big = torch.finfo(ts.dtype).max
    lowest_adv = torch.where((ys > 0) & (seen > 0), ts, big).amin(1)
    highest_not = torch.where((ys == 0) & (seen > 0), ts, -big).amax(1)
    return (lowest_adv < highest_not).float()


@dataclass(eq=False)
class PopSkipJumpState(HopSkipJumpState):
    """PopSkipJump's per-image state: HopSkipJump's plus the estimated transition width."""

    width: torch.Tensor = field(init=False)  # l_2 width of the noisy boundary (0 until measured)


class PopSkipJump(HopSkipJump):
    """A noise-aware HopSkipJump, l_2 and l_inf (see the module docstring).

    Args:
        grid_size: points of the grid over the boundary location t0.
        floor: noise floor of the line-search model, in (0, 0.5).
        line_tol: stop a line search when the posterior's 10-90 % interval is this narrow (in t;
            default HopSkipJump's theta: the iterate must sit closer to the boundary than a probe
            reaches across it, delta / sqrt(d) = theta * D_t, or every probe answers alike).
        line_queries: at most this many decisions per line search.
        confirm: fresh decisions that must be majority adversarial before a point is accepted (odd).
        accept_p: predicted P(adv) at the point proposed for acceptance.
        probe_scale: probe radius at least probe_scale * w * sqrt(d) (w: estimated width).
        The rest: see `HopSkipJump`.
    """

    name = "psj"
    state_type = PopSkipJumpState

    def __init__(
        self,
        eps: float,
        norm: Norm = "l2",
        *,
        grid_size: int = 100,
        floor: float = 0.02,
        line_tol: float | None = None,
        line_queries: int = 30,
        confirm: int = 5,
        accept_p: float = 0.75,
        probe_scale: float = 1.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(eps, norm, **kwargs)
        self.grid_size = check_int(grid_size, "grid_size", minimum=8)
        self.floor = check_positive(floor, "floor")
        if not self.floor < 0.5:
            raise InputError(f"floor must be below 0.5, got {floor}")
        self.line_tol = None if line_tol is None else check_positive(line_tol, "line_tol")
        self.line_queries = check_int(line_queries, "line_queries")
        self.confirm = check_int(confirm, "confirm")
        if self.confirm % 2 == 0:
            raise InputError(f"confirm must be odd (a majority vote), got {confirm}")
        self.accept_p = check_positive(accept_p, "accept_p")
        if not 0.5 <= self.accept_p < 1:
            raise InputError(f"accept_p must be in [0.5, 1), got {accept_p}")
        self.probe_scale = check_positive(probe_scale, "probe_scale")

    # -- (b) probes from the noise -------------------------------------------------------------
    def init(self, state: HopSkipJumpState) -> None:
        assert isinstance(state, PopSkipJumpState)
        state.width = torch.zeros(state.x0.shape[0])
        super().init(state)

    def probe_radius(self, state: HopSkipJumpState, rows: torch.Tensor) -> torch.Tensor:
        assert isinstance(state, PopSkipJumpState)
        noise = self.probe_scale * state.width[rows] * math.sqrt(state.x0[0].numel())
        l2 = (state.xb[rows] - state.x0[rows]).flatten(1).norm(dim=1)
        noise = torch.minimum(noise, l2 / 2)  # a probe beyond the distance says little
        return torch.maximum(super().probe_radius(state, rows), noise)

    def probe_count(self, state: HopSkipJumpState, rows: torch.Tensor) -> torch.Tensor:
        assert isinstance(state, PopSkipJumpState)
        ratio = state.width[rows] * math.sqrt(state.x0[0].numel()) / self.probe_radius(state, rows)
        factor = (1 + ratio.double() ** 2).clamp(max=MAX_PROBE_FACTOR)
        n = super().probe_count(state, rows).double() * factor
        return n.long().clamp(1, self.max_probes)

    # -- (a) + (c) the Bayesian line search ----------------------------------------------------
    def search_reserve(self, state: HopSkipJumpState) -> int:
        return self.line_queries + 2 * self.confirm  # the search, a check and a second one

    def initial_search(self, state: HopSkipJumpState, rows: torch.Tensor) -> None:
        """From the random start straight into the line search (no binary search to trust)."""
        self.move(state, rows, *self.boundary_search(state, rows, state.x[rows]))

    def grid(self, lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        """Each row's grid of t0: `grid_size` cell centres over [lo, hi] (n, G)."""
        g = self.grid_size
        return lo[:, None] + (hi - lo)[:, None] * (torch.arange(g) + 0.5) / g

    def log_likelihood(
        self, tg: torch.Tensor, ts: torch.Tensor, ys: torch.Tensor, seen: torch.Tensor
    ) -> torch.Tensor:
        """Log-likelihood (n, G, S) of the answers ys (n, Q) at ts (n, Q), where `seen`, for every
        (t0 on the row's grid `tg`, width s in `WIDTHS`). A sum over answers: a new answer adds its
        own term, and only a zoomed grid needs every answer again."""
        s = torch.tensor(WIDTHS).view(1, 1, 1, -1)
        p = p_adv(ts[:, :, None, None], tg[:, None, :, None], s, self.floor)
        like = torch.where(ys[:, :, None, None] > 0, p, 1 - p).log_()  # one log per answer, not two
        if not bool(seen.all()):  # (times 1 changes nothing)
            like.mul_(seen[:, :, None, None])
        return like.sum(1)

    @staticmethod
    def normalised(logp: torch.Tensor) -> torch.Tensor:
        """The posterior (n, G, S) from its log (flat prior), per row."""
        post = (logp - logp.flatten(1).amax(1).view(-1, 1, 1)).exp_()
        return post.div_(post.sum((1, 2), keepdim=True))

    def boundary_search(
        self, state: HopSkipJumpState, rows: torch.Tensor, xs: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        assert isinstance(state, PopSkipJumpState)
        x0, n = state.x0[rows], rows.numel()
        q_max = self.line_queries + 2
        ts, ys = torch.zeros(n, q_max), torch.zeros(n, q_max)
        seen = torch.zeros(n, q_max)
        ts[:, 0], ys[:, 0], seen[:, :2] = 1.0, 1.0, 1.0  # xs was adversarial, x0 was not
        lo, hi = torch.zeros(n), torch.ones(n)
        tol = self.theta(x0[0].numel()) if self.line_tol is None else self.line_tol
        live = torch.ones(n, dtype=torch.bool)  # a row that stops stays stopped (batch-independent)
        # the log-posterior on each row's current grid, kept across rounds: a round adds the new
        # answers' terms; a row whose grid zooms is recomputed from all of its answers
        tg = self.grid(lo, hi)
        logp = self.log_likelihood(tg, ts[:, :2], ys[:, :2], seen[:, :2])
        for q in range(self.line_queries + 1):
            k = q + 2  # answers so far fill the first k columns: the rest add nothing
            post = self.normalised(logp)
            marg = post.sum(2)
            for _ in range(3):  # zoom in where the posterior has gathered
                ab = quantiles(tg, marg, (0.005, 0.995))
                a, b = ab[:, 0], ab[:, 1]
                cell = (hi - lo) / self.grid_size
                narrow = live & (b - a + cell < (hi - lo) / 4)
                if not bool(narrow.any()):
                    break
                span = b - a + cell
                lo = torch.where(narrow, (a - span).clamp_min(0.0), lo)
                hi = torch.where(narrow, (b + span).clamp(max=1.0), hi)
                z = narrow.nonzero().flatten()
                tg[z] = self.grid(lo[z], hi[z])
                logp[z] = self.log_likelihood(tg[z], ts[z, :k], ys[z, :k], seen[z, :k])
                post[z] = self.normalised(logp[z])
                marg = post.sum(2)
            qq = quantiles(tg, marg, (0.1, 0.5, 0.9))
            width = qq[:, 2] - qq[:, 0]
            if q == self.line_queries:
                break
            live &= (width > tol) & (self.affordable(state, rows) - 2 * self.confirm >= 1)
            go = live
            if not bool(go.any()):
                break
            idx = go.nonzero().flatten()
            t_q = qq[idx, 1]
            adv = self.decide(state, along(x0[idx], xs[idx], t_q, self.norm), rows[idx])
            ts[idx, k], ys[idx, k], seen[idx, k] = t_q, adv.float(), 1.0
            new = slice(k, k + 1)
            logp[idx] += self.log_likelihood(tg[idx], ts[idx, new], ys[idx, new], seen[idx, new])
        t_med = qq[:, 1]  # the last round's median (marg has not changed since)
        # the transition width, in l_2 units along the segment: (b) of the docstring
        # (0 when no two answers contradict a sharp boundary: consistent answers cannot rule out
        # widths below the spacing of the queries, and would inflate the probes of a clean model)
        s_mean = (post.sum(1) * torch.tensor(WIDTHS)).sum(1)
        w = s_mean * (xs - x0).flatten(1).norm(dim=1) * contradicted(ts, ys, seen)
        state.width[rows] = torch.where(state.width[rows] > 0, (state.width[rows] + w) / 2, w)
        # (c): the first candidate above the median predicted adversarial with accept_p
        cand = torch.cat([tg, hi[:, None] + (1 - hi[:, None]) * torch.linspace(0, 1, 9)[1:]], 1)
        s = torch.tensor(WIDTHS).view(1, 1, 1, -1)
        pred = (post[:, None] * p_adv(cand[:, :, None, None], tg[:, None, :, None], s, self.floor)).sum(
            (2, 3)
        )
        good = (pred >= self.accept_p) & (cand >= t_med[:, None])
        first = torch.where(good.any(1), good.int().argmax(1), cand.shape[1] - 1)
        t_acc = cand.gather(1, first[:, None]).squeeze(1)
        x_acc = along(x0, xs, t_acc, self.norm)
        noisy = state.width[rows] > 0
        ok = self.confirmed(state, rows, x_acc, noisy)
        # a failed check (noise, or a second crossing of the segment): once more at the closest
        # point above t_acc answered adversarial during the search (x_s itself at worst)
        adv_t = torch.where((ys > 0) & (seen > 0) & (ts > t_acc[:, None]), ts, torch.ones_like(ts))
        retry = (~ok).nonzero().flatten()
        if retry.numel():
            t2 = adv_t[retry].amin(1)
            x2 = along(x0[retry], xs[retry], t2, self.norm)
            ok2 = self.confirmed(state, rows[retry], x2, noisy[retry])
            x_acc[retry[ok2]] = x2[ok2]
            ok[retry] = ok2
        return x_acc, x_acc, ok  # the iterate on the adversarial side, so that small steps stay there

    def confirmed(
        self, state: HopSkipJumpState, rows: torch.Tensor, x: torch.Tensor, noisy: torch.Tensor
    ) -> torch.Tensor:
        """Majority of fresh votes adversarial at `x`: `confirm` decisions where the image has shown
        noise, one where its answers have all been consistent with a sharp boundary so far (a
        deterministic classifier repeats itself). False where the image cannot afford them."""
        ok = torch.zeros(rows.numel(), dtype=torch.bool)
        left = self.affordable(state, rows)
        for sel, m in ((noisy, self.confirm), (~noisy, 1)):
            idx = (sel & (left >= m)).nonzero().flatten()
            if idx.numel():
                votes = m * self.eot
                ok[idx] = self.votes(state, x[idx], rows[idx], votes) * 2 > votes
        return ok
