"""HopSkipJump with OARS (Feng et al., CCS 2023): the adaptive counter to a stateful detector.

OARS reads the detector's refusals as a signal instead of hiding from them (paper Sec. 4; facts
from the authors' code, nmangaokar/ccs_23_oars_stateful_attacks, `attacks/adaptive/HSJA.py` and
the CIFAR-10 Blacklight config):

1. Adaptive step tuning. The gradient probes' radius delta (l_2 norm of a probe) is bisected in
   [1, 2]: 10 bisections, each querying 20 probes around the image's boundary point; a radius
   passes when at most 5 % of them are refused, and the smallest passing radius tried is kept
   (the upper end if none passes). From then on every probe radius is at least that value
   (HopSkipJump's own schedule, D_t / d for l_2, is far below it, so in effect it is the
   reference's fixed delta).
2. Rejection sampling. Refused probes are left out of the gradient estimate and redrawn (fresh
   directions), in up to 20 rounds in all; a partial estimate is used (the reference's
   `grad_est_accept_partial`). A refused geometric step ends that step (the point stays, the next
   iteration draws a new gradient, as the reference rolls back); after 5 refused steps in a row
   the image stops, failed ("step movement failure"). A refused query in a binary search ends
   that search at its adversarial end (the reference's `bs_boundary_end_on_hit = false`).

Every probe, sample and redraw is a real query and counts against the budget. Choices of rnd's
own: the tuning starts once an image's probes are refused more often than the 5 % rate (an image
never refused runs exactly as `HopSkipJump`, bit for bit, so undefended OARS is HopSkipJump; the
reference always tunes first); the tuning's probes are drawn around the boundary point the
gradient probes will be drawn around (the reference draws them around the clean image); and the
redraw rounds run only once an image is tuned (before that, its round of refused probes triggers
the tuning instead). Rows draw from per-image generators, so a result does not depend on the batch
(with a detector whose refusals depend on one image's own queries only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from rnd._checks import check_int
from rnd.attacks.base import Norm
from rnd.attacks.hsja import HopSkipJump, HopSkipJumpState
from rnd.attacks.oars import Search, binary_search
from rnd.oracle import REFUSED


@dataclass(eq=False)
class HopSkipJumpOARSState(HopSkipJumpState):
    """HopSkipJump's state plus the tuned probe radius and the refusal bookkeeping, per image."""

    radius: torch.Tensor = field(init=False)  # floor on the probe radius (0 until tuned)
    tuned: torch.Tensor = field(init=False)
    pending: torch.Tensor = field(init=False)  # probes refused too often, not yet tuned
    streak: torch.Tensor = field(init=False)  # refused step searches in a row

    def __post_init__(self) -> None:
        super().__post_init__()
        n = self.x0.shape[0]
        self.radius = torch.zeros(n)
        self.tuned = torch.zeros(n, dtype=torch.bool)
        self.pending = torch.zeros(n, dtype=torch.bool)
        self.streak = torch.zeros(n, dtype=torch.int64)


class HopSkipJumpOARS(HopSkipJump):
    """HopSkipJump with OARS's probe-radius tuning and rejection sampling (module docstring).

    Args:
        radius_min, radius_max: range of the probe radius search (1, 2; l_2 norm of a probe).
        search_steps, search_samples: bisections (10) and probes per bisection (20).
        max_refusal_rate: the refused share of probes that passes (0.05); more than this in a
            gradient estimate starts the tuning.
        probe_rounds: rounds of a gradient estimate, redraws included (20).
        step_attempts: refused step searches in a row after which an image stops (5).
        eps, norm, mu and the rest: see `HopSkipJump`.

    Example:
        >>> attack = HopSkipJumpOARS(eps=1.5, norm="l2", seed=0)
        >>> result = attack(Oracle(Blacklight(model), output="labels", budget=10_000), x, y)
    """

    name = "hsja-oars"
    state_type = HopSkipJumpOARSState

    def __init__(
        self,
        eps: float,
        norm: Norm = "l2",
        *,
        radius_min: float = 1.0,
        radius_max: float = 2.0,
        search_steps: int = 10,
        search_samples: int = 20,
        max_refusal_rate: float = 0.05,
        probe_rounds: int = 20,
        step_attempts: int = 5,
        **kwargs: Any,
    ) -> None:
        super().__init__(eps, norm, **kwargs)
        self._radius_search = Search.checked(
            radius_min,
            radius_max,
            search_steps,
            search_samples,
            max_refusal_rate,
            ("radius_min", "radius_max", "search_steps", "search_samples", "max_refusal_rate"),
        )
        self.radius_min, self.radius_max = float(radius_min), float(radius_max)
        self.search_steps, self.search_samples = search_steps, search_samples
        self.max_refusal_rate = float(max_refusal_rate)
        self.probe_rounds = check_int(probe_rounds, "probe_rounds")
        self.step_attempts = check_int(step_attempts, "step_attempts")

    # -- decisions that see refusals -----------------------------------------------------------
    def decide_refused(
        self, state: HopSkipJumpOARSState, x: torch.Tensor, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(adversarial?, refused?) per row: the majority of `eot` labels; refused when all are."""
        labels = self.answers(state, x, rows, self.eot)
        adv = self.hits(state, labels, rows).sum(1) * 2 > self.eot
        return adv, (labels == REFUSED).all(1)

    def bisect(
        self,
        state: HopSkipJumpOARSState,
        rows: torch.Tensor,
        point: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        lo: torch.Tensor,
        hi: torch.Tensor,
        tol: torch.Tensor | float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`DecisionAttack.bisect`, except that a row stops at its first refused decision (its
        interval as it was: the adversarial end `hi` is still observed adversarial)."""
        lo, hi = lo.clone(), hi.clone()
        tol_t = torch.as_tensor(tol, dtype=hi.dtype, device=hi.device).expand_as(hi)
        live = torch.ones(rows.numel(), dtype=torch.bool)
        while True:
            go = live & (hi - lo > tol_t) & (self.affordable(state, rows) >= 1)
            if not bool(go.any()):
                return lo, hi
            idx = go.nonzero().flatten()
            mid = (lo[idx] + hi[idx]) / 2
            adv, refused = self.decide_refused(state, point(idx, mid), rows[idx])
            live[idx[refused]] = False
            hi[idx] = torch.where(adv, mid, hi[idx])
            lo[idx] = torch.where(adv | refused, lo[idx], mid)

    # -- probes --------------------------------------------------------------------------------
    def probe_radius(self, state: HopSkipJumpOARSState, rows: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        return torch.maximum(super().probe_radius(state, rows), state.radius[rows])

    def _estimate_gradient(  # type: ignore[override]
        self, state: HopSkipJumpOARSState, rows: torch.Tensor, k: torch.Tensor, delta: torch.Tensor
    ) -> torch.Tensor:
        """HopSkipJump's estimate from the probes that were answered; refused ones are redrawn
        (tuned rows, up to `probe_rounds` rounds, within the budget the first round had)."""
        shape = tuple(state.x0.shape[1:])
        segs, fs, us = [], [], []
        want = k.clone()  # answered probes still wanted per row
        allowed = self.affordable(state, rows) - self.search_reserve(state) - 1 - k  # redraw budget
        for round_ in range(self.probe_rounds):
            go = want > 0 if round_ == 0 else (want > 0) & state.tuned[rows] & (allowed > 0)
            if not bool(go.any()):
                break
            kk = torch.where(go, torch.minimum(want, allowed) if round_ else want, 0)
            u = self.unit_probes(state, rows, kk)
            seg = torch.arange(rows.numel()).repeat_interleave(kk)
            probes, u = self.probe_points(state, rows, seg, delta, u)
            adv, refused = self.decide_refused(state, probes, rows[seg])
            ok = ~refused
            segs.append(seg[ok])
            fs.append(adv[ok].float() * 2 - 1)
            us.append(u[ok])
            n_ref = torch.zeros(rows.numel(), dtype=torch.int64).index_add_(0, seg, refused.long())
            if round_:
                allowed = allowed - kk
            else:
                share = n_ref.float() / kk.clamp_min(1).float()
                state.pending[rows] |= (share > self.max_refusal_rate) & ~state.tuned[rows]
            want = want - kk + n_ref
        seg, f, u = torch.cat(segs), torch.cat(fs), torch.cat(us)
        kf = torch.zeros(rows.numel()).index_add_(0, seg, torch.ones_like(f))
        kf_safe = kf.clamp_min(1)
        mean_f = torch.zeros(rows.numel()).index_add_(0, seg, f) / kf_safe
        baseline = torch.where(mean_f.abs() == 1, torch.zeros_like(mean_f), mean_f)
        fc = f - baseline[seg]
        g = torch.zeros(rows.numel(), u.shape[1]).index_add_(0, seg, fc[:, None] * u) / kf_safe[:, None]
        return g.view(rows.numel(), *shape)  # zero where no probe was answered

    # -- one iteration -------------------------------------------------------------------------
    def step(self, state: HopSkipJumpOARSState, rows: torch.Tensor) -> None:  # type: ignore[override]
        tune = state.pending[rows] & (state.db[rows] > 0)
        if bool(tune.any()):
            self.tune(state, rows[tune])
        super().step(state, rows)

    def step_search(  # type: ignore[override]
        self,
        state: HopSkipJumpOARSState,
        rows: torch.Tensor,
        v: torch.Tensor,
        eps: torch.Tensor,
        reserve: int,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """HopSkipJump's geometric search, except that a refused candidate ends the row's search
        (and counts towards `step_attempts`); a zero direction (no probe answered) is no step."""
        eps, xb = eps.clone(), state.xb[rows]
        found = torch.zeros(rows.numel(), dtype=torch.bool)
        stopped = v.flatten(1).abs().amax(1) == 0
        refused_any = torch.zeros(rows.numel(), dtype=torch.bool)
        xs = xb.clone()
        for _ in range(self.max_halvings + 1):
            go = ~found & ~stopped & (self.affordable(state, rows) - reserve >= 1)
            if not bool(go.any()):
                break
            idx = go.nonzero().flatten()
            cand = (xb[idx] + eps[idx].view(-1, 1, 1, 1) * v[idx]).clamp(0.0, 1.0)
            adv, refused = self.decide_refused(state, cand, rows[idx])
            found[idx[adv]] = True
            xs[idx[adv]] = cand[adv]
            stopped[idx[refused]] = True
            refused_any[idx[refused]] = True
            eps[idx[~adv & ~refused]] /= 2
        streak = torch.where(found, 0, state.streak[rows] + refused_any.long())
        state.streak[rows] = streak
        state.done[rows[streak >= self.step_attempts]] = True
        return found, xs

    def tune(self, state: HopSkipJumpOARSState, rows: torch.Tensor) -> None:
        """OARS's binary search of the probe radius for `rows`, around their boundary points."""
        search = self._radius_search
        state.pending[rows] = False
        state.tuned[rows] = True

        def refused_share(idx: torch.Tensor, mid: torch.Tensor) -> torch.Tensor:
            r = rows[idx]
            k = torch.full((r.numel(),), search.samples, dtype=torch.int64)
            u = self.unit_probes(state, r, k)
            seg = torch.arange(r.numel()).repeat_interleave(k)
            probes = (state.xb[r][seg] + mid.float()[seg].view(-1, 1, 1, 1) * u).clamp(0.0, 1.0)
            _, refused = self.decide_refused(state, probes, r[seg])
            return refused.float().view(-1, search.samples).mean(1)

        def can_sample(idx: torch.Tensor) -> torch.Tensor:
            return self.affordable(state, rows[idx]) >= search.samples

        state.radius[rows] = binary_search(search, rows, refused_share, can_sample).float()
