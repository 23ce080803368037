"""Parsimonious attack / ECO (Moon, An & Song, ICML 2019): l_inf attack by combinatorial search.

The perturbation lives on the vertices of the l_inf ball: `x = clip(x0 + eps * s)`, `s` in
{-1, +1}, constant on square blocks (per channel). Starting from s = -1 everywhere, the attack
maximises the loss over the set A of blocks set to +eps (Sec. 3 of the paper):

- blocks are visited in random order, in batches of `block_batch` (64);
- on each batch, a *lazy-greedy insertion* (Alg. 1): query every block of the batch not in A
  flipped to +eps, flip the best one, then repeatedly re-query the block with the best stored
  gain and flip it while its fresh gain is still the best (and the loss still drops), storing the
  fresh gain otherwise (lazy evaluation of marginal gains, Minoux 1978); then a *lazy-greedy
  deletion*, the same over the blocks of the batch in A, flipped back to -eps;
- after the last batch the blocks are halved (hierarchical refinement, Sec. 3.3) down to single
  pixels, after which the order is reshuffled and the search goes on.

Batching: every image runs its own local search, but all images advance together: each step an
image either evaluates its whole batch of candidate blocks (up to 64 queries) or re-evaluates one
block (1 query), and the queries of all images go to the oracle in one call. An image whose
remaining budget is below one full step (64 x EOT queries) stops, as with every attack on the base.

Probe size: `mu` is the fraction of the image's pixels covered by one initial block, as Square's
`p_init`; the initial block side is round(sqrt(mu * H * W)). Default 0.02, a 4 x 4 block on
28 x 28 images, which is the RND paper's setting for 32 x 32 CIFAR-10 (block size 4, block batch
64; SCLBD/BlackboxBench). An adaptive attacker (`mu_nu_ratio`) thus probes with larger blocks; the
probe's magnitude is always the threat model's eps.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from rnd._checks import check_int
from rnd.attacks.base import Norm, to_device
from rnd.attacks.score import ScoreAttack, ScoreState

INSERT_EVAL, INSERT_LAZY, DELETE_EVAL, DELETE_LAZY = 0, 1, 2, 3


def block_coords(
    ids: torch.Tensor, size: torch.Tensor, shape: tuple[int, int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Channel, top and left pixel of blocks `ids` of side `size` (per row).

    Block ids enumerate (channel, block row, block column) in that order, on a grid of
    ceil(H / size) x ceil(W / size) blocks per channel (the last row / column may be cut).
    """
    _, h, w = shape
    nbh = (h + size - 1) // size
    nbw = (w + size - 1) // size
    rem = ids % (nbh * nbw)
    return ids // (nbh * nbw), (rem // nbw) * size, (rem % nbw) * size


def block_masks(
    ids: torch.Tensor, size: torch.Tensor, shape: tuple[int, int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masks (R, C, H, W) of blocks `ids` of side `size` (per row), plus `block_coords`."""
    c, h, w = shape
    ch, top, left = block_coords(ids, size, shape)
    cc = torch.arange(c).view(1, c, 1, 1)
    rr = torch.arange(h).view(1, 1, h, 1)
    col = torch.arange(w).view(1, 1, 1, w)

    def v(t: torch.Tensor) -> torch.Tensor:
        return t.view(-1, 1, 1, 1)

    mask = (cc == v(ch)) & (rr >= v(top)) & (rr < v(top + size)) & (col >= v(left)) & (col < v(left + size))
    return mask, ch, top, left


@dataclass(eq=False)
class ParsimoniousState(ScoreState):
    """Parsimonious's per-image state: the sign image, the block size, and where each image stands
    in its pass over the blocks (a batch of candidate blocks, their gains, the phase)."""

    signs: torch.Tensor = field(init=False)  # -1 / +1 per pixel: x = clip(x0 + eps * signs)
    size: torch.Tensor = field(init=False)  # block side (halved after each full pass)
    batch: torch.Tensor = field(init=False)  # position of the current candidate batch in `order`
    phase: torch.Tensor = field(init=False)  # INSERT_EVAL, ... : which query the image waits for
    cand: torch.Tensor = field(init=False)  # (N, block_batch) block indices of the batch, -1 = none
    gain: torch.Tensor = field(init=False)  # (N, block_batch) loss change of flipping each candidate
    order: list[torch.Tensor] = field(init=False)  # each image's order of blocks in this pass


class Parsimonious(ScoreAttack[ParsimoniousState]):
    """Parsimonious / ECO attack (l_inf only): lazy-greedy insert/delete of +-eps blocks.

    Args:
        eps, mu, kwargs: see `ScoreAttack` (shared options; `mu` is the fraction of the pixels one
            initial block covers; default 0.02, i.e. 4 x 4 blocks on 28 x 28).
        block_batch: blocks searched together by one lazy-greedy pass (paper and RND code: 64).
        hierarchical: halve the blocks after each sweep over the image (paper: True).

    Example:
        >>> attack = Parsimonious(eps=0.1, seed=0)
        >>> result = attack(Oracle(model, budget=1000), images, labels)  # doctest: +SKIP
    """

    name = "parsimonious"
    state_type = ParsimoniousState
    norms = ("linf",)
    default_mu = {"linf": 0.02}

    def __init__(
        self,
        eps: float,
        norm: Norm = "linf",
        *,
        block_batch: int = 64,
        hierarchical: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(eps, norm, **kwargs)
        self.block_batch = check_int(block_batch, "block_batch")
        self.hierarchical = bool(hierarchical)

    @property
    def step_cost(self) -> int:
        return self.block_batch * self.eot

    # -- per-image search state ----------------------------------------------------------------
    def _num_blocks(self, size: int, shape: tuple[int, int, int]) -> int:
        c, h, w = shape
        return c * math.ceil(h / size) * math.ceil(w / size)

    def _load_batch(self, state: ParsimoniousState, i: int, want: float) -> None:
        """Candidates of image i: blocks of its current batch whose sign is `want` (-1 or +1)."""
        size = int(state.size[i])
        b = int(state.batch[i])
        ids = state.order[i][b * self.block_batch : (b + 1) * self.block_batch]
        shape = tuple(state.x0.shape[1:])
        ch, top, left = block_coords(ids, torch.full_like(ids, size), shape)  # type: ignore[arg-type]
        ids = ids[state.signs[i, ch, top, left] == want]
        state.cand[i] = -1
        state.cand[i, : ids.numel()] = ids
        state.gain[i] = math.inf

    def _new_order(self, state: ParsimoniousState, i: int) -> None:
        n_blocks = self._num_blocks(int(state.size[i]), tuple(state.x0.shape[1:]))  # type: ignore[arg-type]
        order = torch.randperm(n_blocks, generator=self.generator, device="cpu")
        state.order[i] = to_device(order, state.device)
        state.batch[i] = 0

    def _advance(self, state: ParsimoniousState, i: int) -> None:
        """Finish image i's current phase and load the next one's candidates."""
        phase = int(state.phase[i])
        if phase in (INSERT_EVAL, INSERT_LAZY):
            state.phase[i] = DELETE_EVAL
            self._load_batch(state, i, 1.0)
            return
        state.batch[i] += 1
        if int(state.batch[i]) * self.block_batch >= state.order[i].numel():
            if self.hierarchical and int(state.size[i]) >= 2:
                state.size[i] //= 2
            self._new_order(state, i)
        state.phase[i] = INSERT_EVAL
        self._load_batch(state, i, -1.0)

    def _point(
        self, state: ParsimoniousState, owners: torch.Tensor, ids: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Signs and points of images `owners` with block `ids` flipped."""
        shape = tuple(state.x0.shape[1:])
        mask, *_ = block_masks(ids, state.size[owners], shape)  # type: ignore[arg-type]
        signs = torch.where(mask, -state.signs[owners], state.signs[owners])
        return signs, (state.x0[owners] + self.eps * signs).clamp(0, 1)

    def _move(
        self,
        state: ParsimoniousState,
        rows: torch.Tensor,
        signs: torch.Tensor,
        x: torch.Tensor,
        loss: torch.Tensor,
        adv: torch.Tensor,
    ) -> None:
        state.signs[rows] = signs
        self.accept(state, rows, x, loss, adv)

    # -- the attack ----------------------------------------------------------------------------
    @property
    def init_cost(self) -> int:
        return 2 * self.eot  # the clean image, then the starting point

    def init(self, state: ParsimoniousState) -> None:
        self.query_start(state)
        n = state.x0.shape[0]
        _, h, w = state.x0.shape[1:]
        side = max(1, min(round(math.sqrt(self.cur_mu * h * w)), h, w))
        state.signs = -torch.ones_like(state.x0)
        state.size = torch.full((n,), side, dtype=torch.long)
        state.batch = torch.zeros(n, dtype=torch.long)
        state.phase = torch.full((n,), INSERT_EVAL, dtype=torch.long)
        state.cand = torch.full((n, self.block_batch), -1, dtype=torch.long)
        state.gain = torch.full((n, self.block_batch), math.inf)
        state.order = [torch.empty(0, dtype=torch.long)] * n
        todo = (~state.success).nonzero().flatten()
        if not todo.numel():
            return
        for i in todo.tolist():
            self._new_order(state, i)
            self._load_batch(state, i, -1.0)
        x_init = (state.x0[todo] - self.eps).clamp(0, 1)
        loss, adv = self.evaluate(state, x_init, todo)
        self.accept(state, todo, x_init, loss, adv)  # the search starts at s = -1 (paper)

    def step(self, state: ParsimoniousState, rows: torch.Tensor) -> None:
        cand, gain, phase = state.cand, state.gain, state.phase
        # phases with nothing to evaluate end at once (at most three in a row)
        empty = rows[(cand[rows] < 0).all(1)]
        while empty.numel():  # ends: every batch holds a block that is either in A or not
            for i in empty.tolist():
                self._advance(state, i)
            empty = empty[(cand[empty] < 0).all(1)]
        is_eval = (phase[rows] == INSERT_EVAL) | (phase[rows] == DELETE_EVAL)
        ev, lz = rows[is_eval], rows[~is_eval]
        valid = cand[ev] >= 0
        ev_owner = ev.repeat_interleave(valid.sum(1))
        ev_ids = cand[ev][valid]
        lz_slot = gain[lz].argmin(1)
        lz_ids = cand[lz, lz_slot]
        owners = torch.cat([ev_owner, lz])
        signs, pts = self._point(state, owners, torch.cat([ev_ids, lz_ids]))
        loss, adv = self.evaluate(state, pts, owners)
        k = ev_owner.numel()
        if ev.numel():
            self._after_eval(state, ev, valid, signs[:k], pts[:k], loss[:k], adv[:k])
        if lz.numel():
            self._after_lazy(state, lz, lz_slot, signs[k:], pts[k:], loss[k:], adv[k:])

    def _after_eval(
        self,
        state: ParsimoniousState,
        ev: torch.Tensor,
        valid: torch.Tensor,
        signs: torch.Tensor,
        pts: torch.Tensor,
        loss: torch.Tensor,
        adv: torch.Tensor,
    ) -> None:
        """Store each candidate's gain; flip the best block at once (Alg. 1), or stop on success."""
        n, b = valid.shape
        flat = torch.full((n, b), math.inf)
        flat[valid] = loss - state.loss[ev].repeat_interleave(valid.sum(1))
        state.gain[ev] = flat
        # position (in the flat list of queries) of each image's chosen candidate
        pos = torch.full((n, b), -1, dtype=torch.long)
        pos[valid] = torch.arange(loss.numel())
        adv_grid = torch.zeros(n, b, dtype=torch.bool)
        adv_grid[valid] = adv
        first_adv = torch.where(adv_grid.any(1), adv_grid.float().argmax(1), flat.argmin(1))
        chosen = pos.gather(1, first_adv[:, None]).squeeze(1)
        self._move(state, ev, signs[chosen], pts[chosen], loss[chosen], adv[chosen])
        state.cand[ev, first_adv] = -1
        state.gain[ev, first_adv] = math.inf
        state.phase[ev] += 1

    def _after_lazy(
        self,
        state: ParsimoniousState,
        lz: torch.Tensor,
        slot: torch.Tensor,
        signs: torch.Tensor,
        pts: torch.Tensor,
        loss: torch.Tensor,
        adv: torch.Tensor,
    ) -> None:
        """Lazy greedy: flip the re-evaluated block iff its fresh gain is still the best and < 0."""
        fresh = loss - state.loss[lz]
        others = state.gain[lz].scatter(1, slot[:, None], math.inf)
        still_best = fresh <= others.min(1).values
        take = adv | (still_best & (fresh <= 0))
        stop = ~adv & still_best & (fresh > 0)
        self.accept(state, lz, pts, loss, adv, take)
        state.signs[lz[take]] = signs[take]
        state.cand[lz[take], slot[take]] = -1
        state.gain[lz[take], slot[take]] = math.inf
        keep = ~take & ~stop
        state.gain[lz[keep], slot[keep]] = fresh[keep]
        # the lazy pass ends when the best block no longer lowers the loss: drop the rest
        state.cand[lz[stop]] = -1
        state.gain[lz[stop]] = math.inf
