"""SignHunter (Al-Dujaili & O'Reilly, ICLR 2020): divide-and-conquer search over gradient signs.

The perturbation is `mu * s` for a sign vector `s` in {-1, +1}^d (l_inf), or `mu * s / sqrt(d)`
(l_2, so that its l_2 norm is `mu`), projected onto the eps-ball and the [0, 1] box. The search
starts from s = +1 everywhere (Alg. 1 of the paper) and walks a binary tree of chunks: at level h
the flattened sign vector is cut into 2^h contiguous chunks of length ceil(d / 2^h), and chunk i
is flipped; the flip is kept iff the loss does not get worse (one query per step). After the last
chunk of the finest level (chunk length 1) the walk restarts at h = 0 from the current signs.

Probe size: `mu` is the size of the sign step, i.e. the per-pixel magnitude of the perturbation
for l_inf and its l_2 norm for l_2. Default: `mu = eps`, as in the paper and in the RND paper's
code (SCLBD/BlackboxBench), where every probe is a vertex of the eps-ball. A larger `mu` (e.g. an
adaptive attacker's `mu_nu_ratio * nu`) is cut back to eps by the projection; a smaller one
searches a smaller box.

Box-aware l_2 vertices (`box_fill`, default on for l_2): the paper's l_2 point `x0 + mu s / sqrt(d)`
loses much of its norm to the [0, 1] box when many pixels are saturated (Fashion-MNIST backgrounds
are exactly 0, so every pixel of sign -1 there is clipped away). With `box_fill` the magnitude of
pixel i is min(c, room_i), where room_i is the distance to the box face in the direction s_i and the
level c is raised until the l_2 norm is `mu` again (water-filling; if the whole room is smaller,
the box corner). Same signs, same search, one query per step; `box_fill=False` is the paper's point.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from rnd.attacks.base import Norm, box_fill, flip_block, put, take
from rnd.attacks.score import ScoreAttack, ScoreState


@dataclass(eq=False)
class SignHunterState(ScoreState):
    """SignHunter's per-image state."""

    signs: torch.Tensor = field(init=False)  # current sign vector per image (N, d)
    level: torch.Tensor = field(init=False)  # chunk level: the sign vector is cut into 2**level chunks
    chunk: torch.Tensor = field(init=False)  # next chunk to flip at that level


class SignHunter(ScoreAttack[SignHunterState]):
    """SignHunter, l_inf and l_2, one query per step (flip a chunk, keep it iff the loss drops).

    Args:
        eps, norm, mu, kwargs: see `ScoreAttack` (shared options); `mu=None` means `mu = eps`.

    Example:
        >>> attack = SignHunter(eps=0.1, seed=0)
        >>> result = attack(Oracle(model, budget=1000), images, labels)  # doctest: +SKIP
    """

    name = "signhunter"
    state_type = SignHunterState
    norms = ("linf", "l2")
    # Placeholder only: SignHunter's default probe is eps itself (set in __init__).
    default_mu = {"linf": 1.0, "l2": 1.0}

    def __init__(
        self,
        eps: float,
        norm: Norm = "linf",
        *,
        mu: float | None = None,
        box_fill: bool = True,
        **kwargs: Any,
    ) -> None:
        super().__init__(eps, norm, mu=mu, **kwargs)
        if mu is None:
            self.mu = self.eps
        self.box_fill = bool(box_fill)

    def _point(self, x0: torch.Tensor, signs: torch.Tensor) -> torch.Tensor:
        """The queried point for sign vectors `signs` (rows, d): Proj(x0 + step * s)."""
        if self.norm == "l2" and self.box_fill:
            # box_fill's point already lies in the ball and the box: no projection to redo
            return (x0 + box_fill(x0, signs.view_as(x0), min(self.cur_mu, self.eps))).clamp(0.0, 1.0)
        step = self.cur_mu if self.norm == "linf" else self.cur_mu / math.sqrt(signs.shape[1])
        return self.project(x0 + step * signs.view_as(x0), x0)

    @property
    def init_cost(self) -> int:
        return 2 * self.eot  # the clean image, then the starting point

    def init(self, state: SignHunterState) -> None:
        self.query_start(state)
        n = state.x0.shape[0]
        d = state.x0[0].numel()
        state.signs = torch.ones(n, d)
        state.level = torch.zeros(n, dtype=torch.long)
        state.chunk = torch.zeros(n, dtype=torch.long)
        todo = (~state.success).nonzero().flatten()
        if not todo.numel():
            return
        state.signs[todo] = self.start_signs(state, todo)
        x_init = self._point(state.x0[todo], state.signs[todo])
        loss, adv = self.evaluate(state, x_init, todo)
        # The walk starts at its start signs whatever their loss (Alg. 1): it lives on the vertices.
        self.accept(state, todo, x_init, loss, adv)

    def start_signs(self, state: SignHunterState, rows: torch.Tensor) -> torch.Tensor:
        """The sign vector the walk starts from, per row of `rows`: all +1 (Alg. 1)."""
        return torch.ones(rows.numel(), state.signs.shape[1])

    def step(self, state: SignHunterState, rows: torch.Tensor) -> None:
        signs = take(state.signs, rows)  # read only
        level, chunk = take(state.level, rows), take(state.chunk, rows)
        cand, last, length = flip_block(signs, level, chunk)
        x_new = self._point(take(state.x0, rows), cand)
        loss, adv = self.evaluate(state, x_new, rows)
        keep = (loss <= take(state.loss, rows)) | adv
        self.accept(state, rows, x_new, loss, adv, keep)
        put(state.signs, rows, torch.where(keep[:, None], cand, signs))
        # next chunk; next level after the last chunk of this one; restart after the finest level
        finest = length == 1
        chunk = torch.where(last, torch.zeros_like(chunk), chunk + 1)
        level = torch.where(last, torch.where(finest, torch.zeros_like(level), level + 1), level)
        put(state.level, rows, level)
        put(state.chunk, rows, chunk)
