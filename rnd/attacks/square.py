"""Square Attack (Andriushchenko et al., ECCV 2020): random search with square-shaped updates.

Random search in the seed's form (eq. 5-6): propose `x + s`, keep it iff the loss drops. The
probe size `mu` is the paper's `p_init`: the fraction of pixels the square covers at the start,
halved on a fixed schedule. Defaults: p_init = 0.05 (l_inf) as in the paper's ImageNet/CIFAR
settings and the RND paper's code (SCLBD/BlackboxBench), 0.1 for l_2.
"""

from __future__ import annotations

import math

import torch

from rnd.attacks.base import AttackState, QueryAttack

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


class Square(QueryAttack):
    """Square Attack, l_inf and l_2, one query per step.

    l_inf: start from vertical stripes of +-eps; each step resets one random square (per image)
    to a random per-channel +-eps. l_2: start from a grid of +-bumps of l_2 mass; each step moves
    mass between two random squares, with the paper's centre-peaked bump profile.
    """

    name = "square"
    norms = ("linf", "l2")
    default_mu = {"linf": 0.05, "l2": 0.1}

    def __init__(self, eps: float, norm: str = "linf", *, n_iters: int = 10000, **kwargs) -> None:
        super().__init__(eps, norm, **kwargs)  # type: ignore[arg-type]
        self.n_iters = n_iters

    def init(self, state: AttackState) -> None:
        self.query_start(state)
        todo = (~state.success).nonzero().flatten()
        if not todo.numel():
            return
        x0 = state.x0[todo]
        n, c, h, w = x0.shape
        if self.norm == "linf":
            stripes = self.eps * (2 * self.randint(2, (n, c, 1, w)) - 1).float()
            x_init = (x0 + stripes).clamp(0, 1)
        else:
            x_init = self.project(x0 + self._l2_init(n, c, h, w), x0)
        loss, adv = self.evaluate(state, x_init, todo)
        self.accept(state, todo, x_init, loss, adv, loss < state.loss[todo])

    def _side(self, h: int, w: int, c: int, it: int) -> int:
        p = square_fraction(self.cur_mu, it, self.n_iters)
        s = round(math.sqrt(p * h * w))
        return max(1, min(s, h - 1, w - 1))

    def step(self, state: AttackState, rows: torch.Tensor) -> None:
        x0, x = state.x0[rows], state.x[rows]
        _, c, h, w = x0.shape
        s = self._side(h, w, c, state.iteration + 1)
        if self.norm == "linf":
            x_new = self._linf_candidate(x0, x, s)
        else:
            x_new = self._l2_candidate(x0, x, s)
        loss, adv = self.evaluate(state, x_new, rows)
        self.accept(state, rows, x_new, loss, adv, loss < state.loss[rows])

    # -- l_inf ---------------------------------------------------------------------------------
    def _linf_candidate(self, x0: torch.Tensor, x: torch.Tensor, s: int) -> torch.Tensor:
        n, c, h, w = x0.shape
        mask = window_masks(n, s, h, w, self.randint(h - s + 1, (n,)), self.randint(w - s + 1, (n,)))
        delta = x - x0
        new = delta.clone()
        pending = torch.ones(n, dtype=torch.bool)
        for _ in range(10):  # resample windows whose new value would change nothing (paper's loop)
            vals = self.eps * (2 * self.randint(2, (n, c, 1, 1)) - 1).float()
            new[pending] = torch.where(mask[pending], vals[pending].expand(-1, -1, h, w), delta[pending])
            changed = ((x0 + new).clamp(0, 1) - x).abs().gt(1e-7) & mask
            pending = ~changed.flatten(1).any(1)
            if not bool(pending.any()):
                break
        return (x0 + new).clamp(0, 1)

    # -- l_2 -----------------------------------------------------------------------------------
    @staticmethod
    def _bump(s: int) -> torch.Tensor:
        """The paper's l_2 square profile: nested rings whose weight decays from the centre,
        with random-sign halves, normalised to unit l_2 norm (Andriushchenko et al., Sec. 3.2)."""
        delta = torch.zeros(s, s)
        half = s // 2 + 1
        centre_r, centre_c = s // 2, s // 2
        for k in range(half):
            r0, r1 = max(centre_r - k, 0), min(centre_r + k + 1, s)
            c0, c1 = max(centre_c - k, 0), min(centre_c + k + 1, s)
            delta[r0:r1, c0:c1] += 1.0 / (k + 1) ** 2
        return delta / delta.norm()

    def _signed_bump(self, n: int, c: int, s: int) -> torch.Tensor:
        b = self._bump(s)
        flip = torch.ones(n, 1, s, s)
        # random-sign split of the square into two halves, as in the paper's meta-pattern
        half = s // 2
        if half:
            vertical = self.rand(n) < 0.5
            lower = torch.zeros(s, s, dtype=torch.bool)
            lower[half:, :] = True
            split = torch.where(vertical.view(n, 1, 1), lower.T.expand(n, s, s), lower.expand(n, s, s))
            flip = torch.where(split.unsqueeze(1), -1.0, 1.0)
        sign = (2 * self.randint(2, (n, c, 1, 1)) - 1).float()
        out = b.view(1, 1, s, s) * flip * sign
        return out / out.flatten(1).norm(dim=1).clamp_min(1e-12).view(n, 1, 1, 1) * math.sqrt(c)

    def _l2_init(self, n: int, c: int, h: int, w: int) -> torch.Tensor:
        """Grid of bumps of alternating random sign covering the image, scaled to norm eps."""
        s = max(h // 5, 1)
        delta = torch.zeros(n, c, h, w)
        for top in range(0, h - s + 1, s):
            for left in range(0, w - s + 1, s):
                delta[:, :, top : top + s, left : left + s] += self._signed_bump(n, c, s)
        norms = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(n, 1, 1, 1)
        return delta / norms * self.eps

    def _l2_candidate(self, x0: torch.Tensor, x: torch.Tensor, s: int) -> torch.Tensor:
        """Move the perturbation mass of window 1 (and a fresh bump) into window 2 (Alg. 3)."""
        n, c, h, w = x0.shape
        delta = x - x0
        m1 = window_masks(n, s, h, w, self.randint(h - s + 1, (n,)), self.randint(w - s + 1, (n,)))
        m2 = window_masks(n, s, h, w, self.randint(h - s + 1, (n,)), self.randint(w - s + 1, (n,)))
        union = m1 | m2
        norm_total = delta.flatten(1).norm(dim=1)
        norm_outside = (delta * ~union).flatten(1).norm(dim=1)
        norm_w1 = (delta * m1).flatten(1).norm(dim=1)
        budget = (self.eps**2 - norm_outside**2).clamp_min(0).sqrt()
        # new content for window 1: its old mass moved out (zeroed) and redistributed in window 2
        bump = torch.zeros(n, c, h, w)
        b = self._signed_bump(n, c, s)
        idx = m2.expand(n, c, h, w)
        bump[idx] = b.expand(n, c, s, s).reshape(-1)
        new_w2 = delta * m2 + bump * (norm_w1 + 1e-3 * self.eps).view(n, 1, 1, 1)
        new_delta = delta * ~union + new_w2
        # rescale the union part so the total l_2 norm reaches eps (the paper keeps ||delta|| = eps)
        union_part = new_delta * union
        up_norm = union_part.flatten(1).norm(dim=1).clamp_min(1e-12)
        scale = torch.where(norm_total > 0, budget / up_norm, torch.ones_like(up_norm))
        new_delta = new_delta * ~union + union_part * scale.view(n, 1, 1, 1)
        return self.project(x0 + new_delta, x0)
