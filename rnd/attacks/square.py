"""Square Attack (Andriushchenko et al., ECCV 2020): random search with square-shaped updates.

Random search in the seed's form (eq. 5-6): propose `x + s`, keep it iff the loss drops. The
probe size `mu` is the paper's `p_init`: the fraction of pixels the square covers at the start,
halved on a fixed schedule. Defaults: p_init = 0.05 for l_inf (the paper's ImageNet/CIFAR setting
and the RND paper's code, SCLBD/BlackboxBench) and 0.1 for l_2 (the paper's l_2 setting, Sec. 4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from rnd._checks import check_int
from rnd.attacks.base import take
from rnd.attacks.score import ScoreAttack, ScoreState

#: Iteration thresholds (on a 10,000-iteration scale) at which the square fraction halves.
_SCHEDULE = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def square_fraction(p_init: float, it: int, n_iters: int) -> float:
    """The paper's piecewise-constant schedule of the fraction p of pixels changed at iteration it."""
    scaled = int(it / max(n_iters, 1) * 10000)
    halvings = sum(scaled > t for t in _SCHEDULE)
    return p_init / 2**halvings


def window_masks(rows: int, size: int, h: int, w: int, top: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """Boolean (rows, 1, h, w) masks, True on each row's size x size window at (top, left)."""
    r = torch.arange(h).view(1, h, 1)
    c = torch.arange(w).view(1, 1, w)
    t = top.view(-1, 1, 1)
    lft = left.view(-1, 1, 1)
    inside = (r >= t) & (r < t + size) & (c >= lft) & (c < lft + size)
    return inside.view(rows, 1, h, w)


def pseudo_gaussian(rows: int, cols: int) -> torch.Tensor:
    """The paper's pseudo-Gaussian rectangle (Sec. 3.2): nested rectangles around the centre,
    the k-th (k = 0, 1, ...) adding 1 / (k + 1)^2, normalised to unit l_2 norm."""
    out = torch.zeros(rows, cols)
    r, c = torch.arange(rows).view(-1, 1), torch.arange(cols).view(1, -1)
    cr, cc = rows // 2, cols // 2
    # ring index of each cell: the smallest k whose (2k+1)-square around the centre holds it
    ring = torch.maximum((r - cr).abs(), (c - cc).abs())
    for k in range(max(cr, cc) + 1):
        out += (ring <= k).float() / (k + 1) ** 2
    return out / out.norm().clamp_min(1e-12)


def window_index(top: torch.Tensor, left: torch.Tensor, s: int, h: int, w: int) -> torch.Tensor:
    """Flat pixel indices (n, s * s) into an h x w plane of the s x s windows at (top, left)."""
    n, ar = top.shape[0], torch.arange(s, device=top.device)
    return ((top.view(n, 1, 1) + ar.view(1, s, 1)) * w + (left.view(n, 1, 1) + ar.view(1, 1, s))).view(
        n, s * s
    )


def _plane_index(x: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    """`index` (n, k) repeated over the channels of x: (n, c, k)."""
    return index.unsqueeze(1).expand(x.shape[0], x.shape[1], index.shape[1])


def window_take(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, s: int) -> torch.Tensor:
    """The (n, c, s, s) windows of `x` (n, c, h, w) at per-image (top, left)."""
    n, c, h, w = x.shape
    index = _plane_index(x, window_index(top, left, s, h, w))
    return x.reshape(n, c, h * w).gather(2, index).view(n, c, s, s)


def window_put(x: torch.Tensor, top: torch.Tensor, left: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """A copy of `x` with the windows at (top, left) replaced by `v` (n, c, s, s)."""
    n, c, h, w = x.shape
    s = v.shape[-1]
    index = _plane_index(x, window_index(top, left, s, h, w))
    return x.reshape(n, c, h * w).scatter(2, index, v.reshape(n, c, s * s)).view(n, c, h, w)


@dataclass(eq=False)
class SquareState(ScoreState):
    """Square's per-image state."""

    x_plus: torch.Tensor = field(init=False)  # x0 + eps, clipped: the +eps corner per pixel
    x_minus: torch.Tensor = field(init=False)  # x0 - eps, clipped


class Square(ScoreAttack[SquareState]):
    """Square Attack, l_inf and l_2, one query per step.

    l_inf (Alg. 2): start from vertical stripes of +-eps; each step resets one random square (per
    image) to a random per-channel +-eps. l_2 (Alg. 3): start from a grid of meta-pseudo-Gaussian
    tiles of total norm eps; each step empties one random window into another, whose new content
    is its old direction plus a fresh meta-pseudo-Gaussian bump, and keeps the total norm at eps.
    Windows are odd, at least 3 pixels wide, for l_2.

    Args:
        eps, norm, mu, kwargs: see `ScoreAttack` (shared options; `mu` is p_init).
        n_iters: the iteration scale of the p schedule (paper: 10,000, the usual budget).
    """

    name = "square"
    state_type = SquareState
    norms = ("linf", "l2")
    default_mu = {"linf": 0.05, "l2": 0.1}

    def __init__(self, eps: float, norm: str = "linf", *, n_iters: int = 10000, **kwargs) -> None:
        super().__init__(eps, norm, **kwargs)  # type: ignore[arg-type]
        self.n_iters = check_int(n_iters, "n_iters")

    @property
    def init_cost(self) -> int:
        return 2 * self.eot  # the clean image, then the starting point

    def init(self, state: SquareState) -> None:
        if self.norm == "linf":  # the two values a window can take, per pixel (cached per image)
            state.x_plus = (state.x0 + self.eps).clamp(0, 1)
            state.x_minus = (state.x0 - self.eps).clamp(0, 1)
        self.query_start(state)
        todo = (~state.success).nonzero().flatten()
        if not todo.numel():
            return
        x_init = self.start_points(state, todo)
        loss, adv = self.evaluate(state, x_init, todo)
        self.accept(state, todo, x_init, loss, adv, loss < state.loss[todo])

    def start_points(self, state: SquareState, rows: torch.Tensor) -> torch.Tensor:
        """The first point of `rows`: vertical stripes of +-eps (l_inf), or the paper's bumps (l_2)."""
        x0 = state.x0[rows]
        n, c, h, w = x0.shape
        if self.norm == "linf":
            stripes = self.eps * (2 * self.randint(2, (n, c, 1, w)) - 1).float()
            return (x0 + stripes).clamp(0, 1)
        return self.project(x0 + self._l2_init(n, c, h, w), x0)

    def _side(self, h: int, w: int, c: int, it: int) -> int:
        p = square_fraction(self.cur_mu, it, self.n_iters)
        s = round(math.sqrt(p * h * w))
        return max(1, min(s, h - 1, w - 1))

    def step(self, state: SquareState, rows: torch.Tensor) -> None:
        x0, x = take(state.x0, rows), take(state.x, rows)  # read only
        _, c, h, w = x0.shape
        it = state.iteration + 1
        if self.norm == "linf":
            xp, xm = take(state.x_plus, rows), take(state.x_minus, rows)
            x_new = self._linf_candidate(xp, xm, x, self._side(h, w, c, it))
        else:
            x_new = self._l2_candidate(x0, x, self._l2_side(h, w, it))
        loss, adv = self.evaluate(state, x_new, rows)
        self.accept(state, rows, x_new, loss, adv, self.improved(state, rows, loss, adv))

    def improved(
        self, state: SquareState, rows: torch.Tensor, loss: torch.Tensor, adv: torch.Tensor
    ) -> torch.Tensor:
        """Which candidates replace the current point: those with a lower loss (eq. 5). The
        adaptive variants (`rnd.attacks.square_adaptive`) override this rule."""
        return loss < take(state.loss, rows)

    # -- l_inf ---------------------------------------------------------------------------------
    def _linf_candidate(self, xp: torch.Tensor, xm: torch.Tensor, x: torch.Tensor, s: int) -> torch.Tensor:
        """x with one random s x s window per image set to x0 +- eps per channel (clipped to [0, 1]);
        `xp` / `xm` are clip(x0 + eps) / clip(x0 - eps). Only the windows are read and written."""
        n, c, h, w = x.shape
        top, left = self.randint(h - s + 1, (n,)), self.randint(w - s + 1, (n,))
        index = _plane_index(x, window_index(top, left, s, h, w))  # (n, c, s * s), shared
        plane = (n, c, h * w)
        xw = x.reshape(plane).gather(2, index)
        pw, mw = xp.reshape(plane).gather(2, index), xm.reshape(plane).gather(2, index)
        # which per-channel value (+eps / -eps) would change some pixel of each row's window
        flip_p = (pw - xw).abs().gt(1e-7).any(2)
        flip_m = (mw - xw).abs().gt(1e-7).any(2)
        # the paper's loop redraws (up to 10 draws) a window value that would change nothing; here
        # all 10 draws are made at once and each row keeps its first useful one (else its last)
        draws = 2 * self.randint(2, (n, 10, c)) - 1
        useful = torch.where(draws > 0, flip_p.unsqueeze(1), flip_m.unsqueeze(1)).any(2)
        pick = torch.where(useful.any(1), useful.int().argmax(1), 9)
        sign = draws[torch.arange(n), pick]
        value = torch.where(sign.view(n, c, 1) > 0, pw, mw)
        return x.reshape(plane).scatter(2, index, value).view(n, c, h, w)

    # -- l_2 (Alg. 3 of the paper) -------------------------------------------------------------
    def _l2_side(self, h: int, w: int, it: int) -> int:
        """Side of the l_2 windows: odd, at least 3 (paper, Sec. 3.2), at most the image side."""
        p = square_fraction(self.cur_mu, it, self.n_iters)
        s = max(round(math.sqrt(p * h * w)), 3)
        if s % 2 == 0:
            s += 1
        return max(1, min(s, h, w))

    def _meta_bumps(self, n: int, c: int, s: int) -> torch.Tensor:
        """n x c meta-pseudo-Gaussian windows (n, c, s, s), each of unit l_2 norm per channel.

        Two pseudo-Gaussian halves of opposite sign, stacked vertically or (with probability 1/2)
        side by side, times a random sign per image and channel (paper, Sec. 3.2).
        """
        top = pseudo_gaussian(s // 2, s) if s >= 2 else torch.zeros(0, s)
        bottom = -pseudo_gaussian(s - s // 2, s)
        meta = torch.cat([top, bottom], 0)
        meta = meta / meta.norm()
        transpose = (self.rand(n) < 0.5).view(n, 1, 1)
        meta = torch.where(transpose, meta.T.expand(n, s, s), meta.expand(n, s, s))
        sign = (2 * self.randint(2, (n, c, 1, 1)) - 1).float()
        return meta.unsqueeze(1) * sign

    def _l2_init(self, n: int, c: int, h: int, w: int) -> torch.Tensor:
        """A centred grid of (h // s) x (w // s) meta-pseudo-Gaussian tiles, s = h // 5, of total
        l_2 norm eps (the paper's initialisation)."""
        s = max(h // 5, 1)
        delta = torch.zeros(n, c, h, w)
        top0, left0 = (h - (h // s) * s) // 2, (w - (w // s) * s) // 2
        for i in range(h // s):
            for j in range(w // s):
                t, left = top0 + i * s, left0 + j * s
                delta[:, :, t : t + s, left : left + s] += self._meta_bumps(n, c, s)
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(n, 1, 1, 1)
        return delta / norms * self.eps

    def _l2_candidate(self, x0: torch.Tensor, x: torch.Tensor, s: int) -> torch.Tensor:
        """Alg. 3: move the mass of a random window W2 into a random window W1, whose new content
        (old direction + a fresh meta-pseudo-Gaussian bump) takes all the l_2 budget the image has
        left plus the mass of W1 and W2, per channel; then rescale the whole delta to norm eps."""
        n, c, h, w = x0.shape
        delta = x - x0
        t1, l1 = self.randint(h - s + 1, (n,)), self.randint(w - s + 1, (n,))
        t2, l2 = self.randint(h - s + 1, (n,)), self.randint(w - s + 1, (n,))
        m1 = window_masks(n, s, h, w, t1, l1)
        m2 = window_masks(n, s, h, w, t2, l2)
        norm_img = delta.flatten(1).norm(dim=1).view(n, 1, 1, 1)
        norm_w1 = (delta * m1).pow(2).sum((2, 3), keepdim=True).sqrt()  # per channel
        norm_union = (delta * (m1 | m2)).pow(2).sum((2, 3), keepdim=True).sqrt()
        w1 = window_take(delta, t1, l1, s)
        new = self._meta_bumps(n, c, s) + w1 / (norm_w1 + 1e-10)
        mass = ((self.eps**2 - norm_img**2).clamp_min(0) / c + norm_union**2).sqrt()
        new = new / new.pow(2).sum((2, 3), keepdim=True).sqrt().clamp_min(1e-12) * mass
        delta = delta.masked_fill(m2, 0.0)
        delta = window_put(delta, t1, l1, new)
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(n, 1, 1, 1)
        return (x0 + delta / norms * self.eps).clamp(0, 1)
