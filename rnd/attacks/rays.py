"""RayS (Chen & Gu, KDD 2020): a label-only l_inf attack that searches over ray directions.

A direction is a sign vector `s` in {-1, +1}^d; its radius `r(s)` is the smallest `r` with
`clip(x0 + r s)` adversarial, and `clip(x0 + r s) - x0` has l_inf norm `r` (up to the [0, 1] box),
so the attack minimises `r(s)` over the 2^d vertices of the cube. The search is hierarchical
(Alg. 3 of the paper): at stage `k` the flattened sign vector (memory order, channels first, as
in the authors' code) is cut into 2^k contiguous blocks of ceil(d / 2^k) entries, and the blocks
are flipped one at a time, left to right; after the last block of a stage comes the next stage,
and once blocks are single entries the walk stays there, cycling over the entries.

A trial costs one decision: is `clip(x0 + r_best s')` adversarial, with `r_best` the best radius
so far? Only when it is does a binary search on [0, r_best] find the new, smaller radius (one
decision per halving); the flipped sign vector is kept when that radius is smaller. Before any
radius is known, `r_best` is the box corner (r = 1; every larger r gives the same point). The
start is the all-ones direction: its corner, then a binary search; an image whose all-ones
corner is not adversarial goes on with the block flips at the corner until one is (within the
budget; the authors' code does the same). Given starts (`starts=` of `DecisionAttack`) enter as
`r_best` = their distance.

Probe size: `mu` is the binary search's tolerance on the l_inf radius, in pixels: a search stops
when its bracket is at most `mu` wide and keeps the adversarial end. Default 1e-4. The authors'
code stops at 1e-3 on the ray's l_2 length `r sqrt(d)` (it walks the unit-l_2 sign vector), i.e.
1e-3 / sqrt(d) on r: 3.6e-5 at 28x28, 1.8e-5 for CIFAR-10; pass `mu=1e-3 / d**0.5` for exactly
that. A coarser tolerance (an adaptive attacker's `mu_nu_ratio * nu`) saves queries per search and
does not try to resolve the boundary finer than the defense's noise.

Batching: one decision per image per step, all in one oracle query: an image is either at a trial
or inside the binary search its last successful trial opened (`searching`, with the ray and the
bracket kept per image), so the forward holds every active image while some search and others try
their next block. Each image makes the decisions of the sequential algorithm above, in the same
order (a search opened by the start's all-ones trial runs with `DecisionAttack.bisect`). The search
itself draws no random numbers, so the attack is deterministic given the oracle's answers (the seed
is unused).

Reference: J. Chen and Q. Gu, "RayS: A Ray Searching Method for Hard-label Adversarial Attack",
KDD 2020; code github.com/uclaml/RayS.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rnd.attacks.base import flip_block, put, take
from rnd.attacks.decision import DecisionAttack, DecisionState

#: The radius tried while no adversarial ray is known: the box corner clip(x0 + s).
CORNER = 1.0


def ray_point(x0: torch.Tensor, rays: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """clip(x0 + r s) per row: sign vectors `rays` (n, d) at radii `r` (n,)."""
    return (x0 + r.view(-1, 1, 1, 1) * rays.view_as(x0)).clamp(0.0, 1.0)


@dataclass(eq=False)
class RaySState(DecisionState):
    """RayS's per-image state: the best sign vector and the position of the block walk."""

    signs: torch.Tensor = field(init=False)  # (N, d) sign vector of the best ray
    stage: torch.Tensor = field(init=False)  # the vector is cut into 2**stage blocks
    block: torch.Tensor = field(init=False)  # next block to flip at that stage
    searching: torch.Tensor = field(init=False)  # (N,) inside a binary search of `ray`
    ray: torch.Tensor = field(init=False)  # (N, d) the sign vector being searched
    lo: torch.Tensor = field(init=False)  # (N,) the search's bracket: lo not adversarial,
    hi: torch.Tensor = field(init=False)  # hi adversarial


class RayS(DecisionAttack[RaySState]):
    """RayS, l_inf only, label-only: hierarchical block sign flips, one decision per trial and a
    binary search only when the trial is adversarial.

    Args:
        eps: the l_inf radius of success (an image stops there unless `stop_at_eps=False`).
        mu: the binary search's tolerance on the l_inf radius (default 1e-4; see the module).
        stop_at_eps, eot, targeted, seed, progress: see `DecisionAttack`.

    Example:
        >>> attack = RayS(eps=0.05)
        >>> result = attack(Oracle(model, output="labels", budget=10000), images, labels)  # doctest: +SKIP
    """

    name = "rays"
    norms = ("linf",)
    state_type = RaySState
    default_mu = {"linf": 1e-4}

    def init(self, state: RaySState) -> None:
        n, d = state.x0.shape[0], state.x0[0].numel()
        state.signs = torch.ones(n, d)
        state.stage = torch.zeros(n, dtype=torch.long)
        state.block = torch.zeros(n, dtype=torch.long)
        state.searching = torch.zeros(n, dtype=torch.bool)
        state.ray = torch.zeros(n, d)
        state.lo, state.hi = torch.zeros(n), torch.zeros(n)
        super().init(state)

    def start(self, state: RaySState, rows: torch.Tensor) -> None:
        """The all-ones ray (its corner, then a binary search), then block flips at the corner
        until a ray is adversarial or the budget is spent."""
        self._try(state, rows, state.signs[rows])
        while True:
            left = rows[~state.dist[rows].isfinite()]
            left = left[self.affordable(state, left) >= 1]
            if not left.numel():
                return
            self.step(state, left)

    def step(self, state: RaySState, rows: torch.Tensor) -> None:
        """One decision per row: the next block flip's trial, or the next halving of its search."""
        # rows are sorted and distinct (the loop's, or `start`'s): plain gathers and index copies.
        # `take` gives the state's own tensors when rows are all of them: read only, and read
        # before the `put`s at the end
        searching, x0 = take(state.searching, rows), take(state.x0, rows)
        lo_now, hi_now = take(state.lo, rows), take(state.hi, rows)
        trial = (~searching).nonzero().flatten()
        rays = state.ray.index_select(0, rows)
        radius = hi_now.clone()
        if trial.numel():  # the next block of each trying row, at its best radius
            tr = rows.index_select(0, trial)
            signs = state.signs.index_select(0, tr)
            stage, block = state.stage.index_select(0, tr), state.block.index_select(0, tr)
            flipped, last, _ = flip_block(signs, stage, block)
            rays.index_copy_(0, trial, flipped)
            best = state.dist.index_select(0, tr)
            radius.index_copy_(0, trial, torch.where(best.isfinite(), best, CORNER).clamp(max=CORNER))
            # next block; next stage after the last block of this one; stay at single entries
            finest = (signs.shape[1] - 1).bit_length()  # ceil(log2 d): the stage of single entries
            state.block.index_copy_(0, tr, torch.where(last, torch.zeros_like(block), block + 1))
            state.stage.index_copy_(0, tr, torch.where(last, torch.clamp(stage + 1, max=finest), stage))
        t = torch.where(searching, (lo_now + hi_now) / 2, radius)
        adv = self.decide(state, ray_point(x0, rays, t), rows)
        # a trial that hits opens a search on [0, radius]; a halving moves one end of the bracket
        lo = torch.where(searching, torch.where(adv, lo_now, t), torch.zeros_like(t))
        hi = torch.where(searching & ~adv, hi_now, t)
        live = searching | adv
        # a search ends at the tolerance or at the budget: its adversarial end is accepted
        ends = live & ((hi - lo <= self.cur_mu) | (self.affordable(state, rows) < 1))
        put(state.ray, rows, rays)
        put(state.lo, rows, lo)
        put(state.hi, rows, hi)
        put(state.searching, rows, live & ~ends)
        e = ends.nonzero().flatten()
        if e.numel():
            er = rows[e]
            better = self.accept(state, er, ray_point(x0[e], rays[e], hi[e]))
            state.signs[er[better]] = rays[e][better]

    def _try(self, state: RaySState, rows: torch.Tensor, cand: torch.Tensor) -> None:
        """One trial per row: the ray `cand` at the best radius; where adversarial, a binary search
        for its radius, and the ray replaces the best one if that radius is smaller."""
        x0 = state.x0[rows]
        rays = cand.view_as(x0)

        def point(idx: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
            return ray_point(x0[idx], rays[idx], r)

        radius = torch.where(state.dist[rows].isfinite(), state.dist[rows], CORNER).clamp(max=CORNER)
        everyone = torch.arange(rows.numel())
        hit = self.decide(state, point(everyone, radius), rows)
        if not bool(hit.any()):
            return
        idx = hit.nonzero().flatten()
        r_rows = rows[idx]
        _, hi = self.bisect(
            state, r_rows, lambda i, r: point(idx[i], r), torch.zeros(idx.numel()), radius[idx], self.cur_mu
        )
        better = self.accept(state, r_rows, point(idx, hi))
        state.signs[r_rows[better]] = cand[idx[better]]
