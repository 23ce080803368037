"""Sign Flip Attack (SFA; Chen, Zhang, Hu & Wu, ECCV 2020): label-only l_inf random search.

The attack keeps an adversarial perturbation `delta` (the point is clip(x0 + delta)) and its
radius `l = ||delta||_inf`, which it shrinks. Start: an adversarial point (a given start, or
uniform noise, `DecisionAttack.random_start`), then 10 halvings of an l_inf binary search that
projects the start onto ever smaller balls around x0 (width at most 1/1000 of the start distance).
Each step then spends two decisions:

1. projection: `delta' = Proj_{l - alpha}(delta + alpha * u)`, `u` uniform in {-1, +1}^d, onto the
   l_inf ball of the shrunk radius `l - alpha` (Sec. 3.2); kept if adversarial, so every kept step
   lowers the radius by alpha;
2. random sign flip: `delta' = delta * s`, each entry of `s` is -1 with probability 1 - p_i (per
   pixel, p_i = 0.999 at first); kept if adversarial. A kept flip moves p_i by 1e-4 (down where the
   entry was kept, up where it was flipped), p clipped to [0.99, 0.9999].

Every 10 steps (per image, as in the authors' code) the rates of kept steps adapt the sizes: alpha
times 1.5 where more than 70 % of the projections were kept, divided by 1.5 below 30 %; p lowered
by 0.001 everywhere where more than 70 % of the flips were kept, raised by 0.001 below 30 %. The
authors' optional resize factor (steps drawn on a smaller grid) is 1 here, their default.

Probe size: `mu` is the initial step alpha, in pixels (default 0.004, the authors'); `cur_mu` is
alpha after the adaptive attacker's scaling (`mu_nu_ratio`), and each image's alpha then adapts as
above. `eps` is the target radius: an image succeeds once a point within eps is observed
adversarial (stops there unless `stop_at_eps=False`).

Batching: every step is two oracle queries over all active images (projections, then flips); an
image with budget for only one decision does the projection alone. Random draws come from each
image's own generator.

Reference: W. Chen, Z. Zhang, X. Hu and B. Wu, "Boosting Decision-based Black-box Adversarial
Attacks with Random Sign Flip", ECCV 2020; code github.com/wubaoyuan/Sign-Flip-Attack.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rnd.attacks.decision import DecisionAttack, DecisionState

P_INIT = 0.999  # probability of keeping each entry's sign in a flip step
P_RANGE = (0.99, 0.9999)
P_NUDGE = 1e-4  # per kept flip
P_ADAPT = 0.001  # every ADAPT_EVERY steps
ALPHA_FACTOR = 1.5
ADAPT_EVERY = 10
HIGH, LOW = 0.7, 0.3  # kept-step rates that grow / shrink alpha and the flip rate
START_HALVINGS_TOL = 1e-3  # start binary search: width <= 1/1000 of the start distance (10 halvings)
#: Steps of random draws fetched from each image's generator at once, within DRAW_BLOCK_BYTES for
#: the batch (one generator call per image every few steps instead of every step; the CPU
#: generators fill serially, so the numbers are those of one step at a time).
DRAW_STEPS = 16
DRAW_BLOCK_BYTES = 64 * 2**20


@dataclass(eq=False)
class SignFlipState(DecisionState):
    """SFA's per-image state: the current perturbation and the adaptive step sizes."""

    delta: torch.Tensor = field(init=False)  # (N, C, H, W); the point is clip(x0 + delta)
    alpha: torch.Tensor = field(init=False)  # (N,) projection step
    keep_p: torch.Tensor = field(init=False)  # (N, C, H, W) probability of keeping each sign
    proj_kept: torch.Tensor = field(init=False)  # (N,) kept projections since the last adaptation
    flip_kept: torch.Tensor = field(init=False)  # (N,) kept flips since the last adaptation
    steps: torch.Tensor = field(init=False)  # (N,) steps taken
    block: torch.Tensor = field(init=False)  # (N, K, 2, C, H, W) the next K steps' draws per image
    used: torch.Tensor = field(init=False)  # (N,) steps of `block` already consumed


class SignFlip(DecisionAttack[SignFlipState]):
    """Sign Flip Attack, l_inf only, label-only: shrinking random projections and random sign flips,
    two decisions per step.

    Args:
        eps: the l_inf target radius (success once a point within eps is observed adversarial).
        mu: the initial projection step alpha in pixels (default 0.004, the authors' value).
        stop_at_eps, eot, targeted, seed, progress: see `DecisionAttack`; targeted attacks need
            `starts=` in practice (uniform noise rarely lands in a given class).

    Example:
        >>> attack = SignFlip(eps=0.05, seed=0)
        >>> result = attack(Oracle(model, output="labels", budget=10000), images, labels)  # doctest: +SKIP
    """

    name = "sign-flip"
    norms = ("linf",)
    state_type = SignFlipState
    default_mu = {"linf": 0.004}

    def init(self, state: SignFlipState) -> None:
        super().init(state)
        n = state.x0.shape[0]
        state.alpha = torch.full((n,), self.cur_mu)
        state.keep_p = torch.full_like(state.x0, P_INIT)
        state.proj_kept = torch.zeros(n)
        state.flip_kept = torch.zeros(n)
        state.steps = torch.zeros(n, dtype=torch.long)
        d = state.x0[0].numel()
        k = max(1, min(DRAW_STEPS, DRAW_BLOCK_BYTES // max(1, n * 2 * d * state.x0.element_size())))
        state.block = torch.empty(n, k, 2, *state.x0.shape[1:])
        state.used = torch.full((n,), k, dtype=torch.long)  # empty: the first step fills it
        rows = (state.dist.isfinite() & (state.dist > 0)).nonzero().flatten()
        if rows.numel():
            x0, xa = state.x0[rows], state.x[rows]

            def point(idx: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
                lim = r.view(-1, 1, 1, 1)
                return x0[idx] + torch.maximum(torch.minimum(xa[idx] - x0[idx], lim), -lim)

            hi0 = state.dist[rows]
            _, hi = self.bisect(state, rows, point, torch.zeros_like(hi0), hi0, hi0 * START_HALVINGS_TOL)
            self.accept(state, rows, point(torch.arange(rows.numel()), hi))
        state.delta = state.x - state.x0
        self.after_step(state)

    def step(self, state: SignFlipState, rows: torch.Tensor) -> None:
        delta, alpha = state.delta[rows], state.alpha[rows]
        # both draws of the step at once (from blocks of steps, see `step_draws`): the CPU
        # generators fill serially, so the numbers are those of two draws in turn (an image that
        # cannot afford the second decision stops for good, and its unused draws are never wanted)
        draws = self.step_draws(state, rows)
        # 1. a random +-alpha step, projected onto the ball of radius l - alpha
        ones = torch.where(draws[:, 0] < 0.5, 1.0, -1.0)
        lim = (delta.flatten(1).abs().amax(1) - alpha).clamp_min(0.0).view(-1, 1, 1, 1)
        cand = torch.maximum(torch.minimum(delta + alpha.view(-1, 1, 1, 1) * ones, lim), -lim)
        kept = self._try(state, rows, cand)
        state.proj_kept[rows] += kept.float()
        # 2. random sign flips, where the budget allows one more decision
        go = self.affordable(state, rows) >= 1
        flips = rows[go]
        if flips.numel():
            keep_p = state.keep_p[flips]
            s = torch.where(draws[go, 1] < keep_p, 1.0, -1.0)
            kept = self._try(state, flips, state.delta[flips] * s)
            state.flip_kept[flips] += kept.float()
            won = flips[kept]
            state.keep_p[won] = (keep_p[kept] - P_NUDGE * s[kept]).clamp(*P_RANGE)
        # every ADAPT_EVERY steps: adapt alpha and the flip rate to the kept-step rates
        state.steps[rows] += 1
        due = rows[state.steps[rows] % ADAPT_EVERY == 0]
        if due.numel():
            proj, flip = state.proj_kept[due] / ADAPT_EVERY, state.flip_kept[due] / ADAPT_EVERY
            a = state.alpha[due]
            state.alpha[due] = torch.where(
                proj > HIGH, a * ALPHA_FACTOR, torch.where(proj < LOW, a / ALPHA_FACTOR, a)
            )
            nudge = torch.where(flip > HIGH, -P_ADAPT, torch.where(flip < LOW, P_ADAPT, 0.0))
            state.keep_p[due] = (state.keep_p[due] + nudge.view(-1, 1, 1, 1)).clamp(*P_RANGE)
            state.proj_kept[due] = 0.0
            state.flip_kept[due] = 0.0

    def step_draws(self, state: SignFlipState, rows: torch.Tensor) -> torch.Tensor:
        """This step's two uniform draws (n, 2, C, H, W) per row: the next step of its image's block,
        refilled from the image's generator (K steps in one call) once used up."""
        k = state.block.shape[1]
        used = state.used.index_select(0, rows)
        spent = used >= k
        if bool(spent.any()):
            empty = rows[spent]
            state.block[empty] = self.row_rand(state, empty, k, 2, *state.x0.shape[1:])
            used = torch.where(spent, 0, used)
        state.used.index_copy_(0, rows, used + 1)
        return state.block[rows, used]

    def _try(self, state: SignFlipState, rows: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """Query clip(x0 + cand) per row; where adversarial, `cand` becomes the row's perturbation
        (and its point the best one if closer). Returns the mask of kept rows."""
        x = (state.x0[rows] + cand).clamp(0.0, 1.0)
        adv = self.decide(state, x, rows)
        state.delta[rows[adv]] = cand[adv]
        self.accept(state, rows[adv], x[adv])
        return adv
