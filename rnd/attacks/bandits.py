"""Bandits-TD (Ilyas, Engstrom, Madry, ICLR 2019, "Prior Convictions"): gradient priors + PGD.

The attacker keeps a prior `v` over the gradient of the objective J = -loss, on a coarse grid of
`tile x tile` pixel tiles (the *data* prior), carried from step to step (the *time* prior). One
step (the paper's Alg. 2 / Alg. 3, two-point antithetic estimate)::

    u ~ N(0, I) on the grid,  q± = up(v ± delta * u)          (delta = exploration)
    Delta = [J(x + mu q+ / ||q+||_2) - J(x + mu q- / ||q-||_2)] / (mu delta)
    v <- prior_step(v, Delta * u, prior_lr)                   (l_inf: exponentiated gradient on
                                                                [-1, 1]; l_2: v + prior_lr * g)
    x <- Proj(x + lr * sign(up(v)))        (l_inf)
    x <- Proj(x + lr * up(v) / ||up(v)||)  (l_2)

`up` is nearest-neighbour upsampling of the grid to the image. `mu` (the paper's fd_eta) is the
**total l_2 norm** of each probe, not a per-pixel size: the convention of the paper's and of the
RND paper's code. An adaptive attacker that wants a per-pixel probe p sets mu = p * sqrt(d).

Queries: the two probes plus one query of the new point (the attacker must observe success through
the oracle), so a step costs 3 * M. The reference code counts only the two probes and checks success
on the model for free; here every forward is counted.

Defaults: mu (fd_eta) = 0.01, exploration 0.1, prior_lr 0.1, lr 0.01 for l_inf: the RND paper's
code (SCLBD/BlackboxBench CIFAR-10 configs, rescaled from the 0-255 to the [0, 1] scale). l_2 image
step eps / 10: the paper's ImageNet ratio (lr 0.5 at eps 5). Tile: the data prior exists to cut
the dimension of what the prior learns (ImageNet: 268,203 pixels down to a 50 x 50 x 3 grid;
BlackboxBench's CIFAR-10: a 20 x 20 grid). A 28 x 28 x 1 image has 784 pixels, fewer than either
grid, so the default tile is 1 (the prior lives on the pixels; the time prior remains). On the
default Fashion-MNIST model (l_inf, eps 0.1) tiles of 2 or 4 pixels fail more often than tile 1,
and the larger the tile, the more often.

Step schedule: as for NES, the image step of each image is divided by `plateau_drop` (2) whenever
its loss is higher than `plateau_length` (5) steps before, down to lr / 200 (Ilyas et al.'s NES
code, `score.plateau_update`); with it the attack fails about as often as without it
(`plateau_length=0`, the paper's fixed step), in the same setting as above.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from rnd._checks import check_int, check_positive
from rnd.attacks.base import put, take
from rnd.attacks.score import PlateauState, ScoreAttack, check_plateau, init_plateau, plateau_update


def _flat_norm(t: torch.Tensor) -> torch.Tensor:
    return t.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (t.dim() - 1)))


def eg_step(v: torch.Tensor, g: torch.Tensor, lr: float) -> torch.Tensor:
    """Exponentiated-gradient ascent step on [-1, 1] (the paper's l_inf prior update)."""
    p = (v + 1) / 2
    # pos / (pos + neg) written as a sigmoid of log-odds, stable for large lr * g
    logit = torch.log(p.clamp(1e-12, 1)) - torch.log((1 - p).clamp(1e-12, 1)) + 2 * lr * g
    return 2 * torch.sigmoid(logit) - 1


@dataclass(eq=False)
class BanditsState(PlateauState):
    """Bandits's per-image state."""

    prior: torch.Tensor = field(init=False)  # the gradient prior, one value per tile


class Bandits(ScoreAttack[BanditsState]):
    """Bandits-TD (time and data priors), l_inf and l_2 (`mu` = l_2 norm of each probe).

    Args:
        lr: image step (l_inf: per pixel; l_2: l_2 norm of the step). Default 0.01 / eps / 10.
        prior_lr: learning rate of the prior update (>0).
        exploration: delta, the size of the exploration noise added to the prior (>0).
        tile: side in pixels of the prior's tiles (1 = no data prior).
        plateau_length, plateau_drop, min_lr: the step schedule (`plateau_length=0`: fixed step).
        Other arguments: see `ScoreAttack`.
    """

    name = "bandits"
    state_type = BanditsState
    norms = ("linf", "l2")
    default_mu = {"linf": 0.01, "l2": 0.01}

    def __init__(
        self,
        eps: float,
        norm: str = "linf",
        *,
        lr: float | None = None,
        prior_lr: float = 0.1,
        exploration: float = 0.1,
        tile: int = 1,
        plateau_length: int = 5,
        plateau_drop: float = 2.0,
        min_lr: float | None = None,
        **kwargs,
    ) -> None:
        super().__init__(eps, norm, **kwargs)  # type: ignore[arg-type]
        default_lr = 0.01 if norm == "linf" else self.eps / 10
        self.lr = check_positive(default_lr if lr is None else lr, "lr")
        self.prior_lr = check_positive(prior_lr, "prior_lr")
        self.exploration = check_positive(exploration, "exploration")
        self.tile = check_int(tile, "tile")
        self.plateau_length, self.plateau_drop, self.min_lr = check_plateau(
            plateau_length, plateau_drop, self.lr, min_lr
        )

    @property
    def step_cost(self) -> int:
        return 3 * self.eot

    def init(self, state: BanditsState) -> None:
        self.query_start(state)
        n, c, h, w = state.x0.shape
        self._size = (h, w)
        state.prior = torch.zeros(n, c, math.ceil(h / self.tile), math.ceil(w / self.tile))
        init_plateau(state, self.lr, self.plateau_length)

    def _up(self, v: torch.Tensor) -> torch.Tensor:
        if self.tile == 1:
            return v
        return F.interpolate(v, size=self._size, mode="nearest")

    def step(self, state: BanditsState, rows: torch.Tensor) -> None:
        x, v = take(state.x, rows), take(state.prior, rows)  # read only
        n, mu, delta = x.shape[0], self.cur_mu, self.exploration
        u = self.randn(*v.shape)
        q = self._up(torch.cat([v + delta * u, v - delta * u]))
        probes = (x.repeat(2, 1, 1, 1) + mu * q / _flat_norm(q)).clamp(0, 1)
        loss, _ = self.evaluate(state, probes, rows.repeat(2))
        # J = -loss is the objective the prior tracks the gradient of
        deriv = (loss[n:] - loss[:n]) / (mu * delta)
        g = deriv.view(n, 1, 1, 1) * u
        if self.norm == "linf":
            v = eg_step(v, g, self.prior_lr)
        else:
            v = v + self.prior_lr * g
        put(state.prior, rows, v)
        step = self._up(v)
        lr = take(state.lr, rows).view(-1, 1, 1, 1)
        if self.norm == "linf":
            x_new = x + lr * step.sign()
        else:
            x_new = x + lr * step / _flat_norm(step)
        x_new = self.project(x_new, take(state.x0, rows))
        loss, adv = self.evaluate(state, x_new, rows)
        self.accept(state, rows, x_new, loss, adv)
        if self.plateau_length:
            plateau_update(state, rows, loss, self.plateau_drop, self.min_lr)
