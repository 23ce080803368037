"""Transfer attacks: adversarial examples crafted on the attacker's own surrogate model(s), with no
query to the target, then submitted. RND perturbs queries; an example crafted elsewhere meets it
once, when it is sent, so transfer measures what the noise cannot touch (DESIGN section 8).

One base, `TransferAttack`, holds the iterative fast-gradient family that BlackboxBench's
`transfer/` pipeline composes (Dong et al. 2018, MI-FGSM; Xie et al. 2019, DI; Lin et al. 2020,
NI; Wang and He 2021, VMI; Dong et al. 2019, TI). For T iterations, from x_0 (the image, or a
random point of the ball for later candidates):

    x_look = x_t + a * decay * g_t                                  (NI: look ahead; else x_t)
    grad   = smooth( d/dx L(mean_s f_s(transform(x_look))) )        (DI transform, TI smoothing)
    grad   = grad + v_t,   v_{t+1} = mean_j grad(x_t + U(-b eps, b eps)) - grad(x_t)   (VMI)
    g_{t+1} = decay * g_t + grad / mean|grad|                       (MI momentum; decay 0: I-FGSM)
    x_{t+1} = Proj_ball(x_t + a * sign(g_{t+1}))   (l_inf)  or  a * g / ||g||_2  (l_2)

with L the cross-entropy of the true label (maximised) or of the target (minimised), f_s the
surrogates (an ensemble averages their logits), and a the step (`mu`, the seed's probe size).

Queries: crafting costs none. Each candidate is submitted once (M queries with EOT: the vote of M
answers), and an image stops at its first observed success; `candidates` K > 1 submits up to K
candidates per image, each crafted from a fresh random start in the ball.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn

from rnd._checks import check_int
from rnd.attacks.base import AttackState, Norm, QueryAttack, row_draws, unit
from rnd.attacks.decision import image_seeds
from rnd.attacks.surrogate import STAND_IN, SurrogateAttack, raise_loss
from rnd.oracle import answer_labels

__all__ = ["STAND_IN", "TransferAttack", "TransferState"]


@dataclass(eq=False)
class TransferState(AttackState):
    """The core's per-image state, plus how many candidates each image has submitted and one
    generator per image (seeded from the attack seed and the image: batching changes nothing)."""

    submitted: torch.Tensor = field(init=False)
    gens: list[torch.Generator] = field(init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.submitted = torch.zeros(self.x0.shape[0], dtype=torch.int64, device=self.x0.device)


class TransferAttack(SurrogateAttack, QueryAttack[TransferState]):
    """Base of the transfer attacks (the family in the module docstring; subclasses set its knobs).

    Args:
        surrogate: the attacker's model, or a sequence of models (a logit ensemble); pixel inputs
            in [0, 1], the target's input shape and classes.
        iterations: T, gradient steps on the surrogate per candidate (default: the attack's paper).
        candidates: K, candidates submitted per image at most (the first from the clean image, the
            others from random starts in the ball); each costs one query (M with EOT).
        eps, norm, mu (the step a), targeted, eot, seed, progress: see `QueryAttack`.
    """

    feedback = "labels"
    #: Its answers are read as labels: an oracle of scores gives their top class (`answer_labels`).
    reads_scores: ClassVar[bool] = True
    state_type: ClassVar[type[AttackState]] = TransferState
    default_mu: ClassVar[dict[str, float]] = {"linf": 0.01, "l2": 0.15}
    #: T of the attack's paper (BlackboxBench's settings).
    default_iterations: ClassVar[int] = 10
    #: Momentum of the accumulated gradient (0: I-FGSM).
    decay: ClassVar[float] = 0.0
    #: Nesterov look-ahead (NI-FGSM).
    nesterov: ClassVar[bool] = False

    def __init__(
        self,
        eps: float,
        norm: Norm = "linf",
        *,
        surrogate: nn.Module | Sequence[nn.Module],
        iterations: int | None = None,
        candidates: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(eps, norm, surrogate=surrogate, **kwargs)
        self.iterations = check_int(
            self.default_iterations if iterations is None else iterations, "iterations"
        )
        self.candidates = check_int(candidates, "candidates")

    # -- the query loop: one submission per candidate --------------------------------------------
    def active(self, state: TransferState) -> torch.Tensor:
        return ~state.success & (state.submitted < self.candidates)

    def init(self, state: TransferState) -> None:
        state.gens = [torch.Generator().manual_seed(s) for s in image_seeds(self.seed, state.x0, state.y)]
        rows = torch.arange(state.x0.shape[0], device=state.device)
        self.submit(state, rows, self.craft(state, rows, state.x0))

    def step(self, state: TransferState, rows: torch.Tensor) -> None:
        x0 = state.x0[rows]
        self.submit(
            state, rows, self.craft(state, rows, self.project(x0 + self.random_offset(state, rows), x0))
        )

    def random_offset(self, state: TransferState, rows: torch.Tensor) -> torch.Tensor:
        """A uniform point of the l_inf ball, or a uniform direction at a uniform radius (l_2)."""
        shape = tuple(state.x0.shape[1:])
        if self.norm == "linf":
            return (2 * row_draws(state.gens, rows, shape, torch.rand) - 1) * self.eps
        u = row_draws(state.gens, rows, shape, torch.randn)
        u = unit(u)
        return u * self.eps * row_draws(state.gens, rows, (1, 1, 1), torch.rand)

    def submit(self, state: TransferState, rows: torch.Tensor, x: torch.Tensor) -> None:
        """Send one candidate per row (M queries with EOT); keep it, and stop the row on success."""
        assert self.oracle is not None
        answers = answer_labels(
            self.oracle.query(x.contiguous(), state.ids[rows], eot=self.eot).to(rows.device)
        )
        if self.targeted:
            assert state.target is not None
            hit = answers == state.target[rows]
        else:
            hit = (answers != state.y[rows]) & (answers >= 0)
        state.x[rows] = x
        state.success[rows] = hit
        state.submitted[rows] += 1

    # -- crafting on the surrogate (no query) ----------------------------------------------------
    def craft(self, state: TransferState, rows: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
        """T steps of the family's update from `start`, for the images `rows`."""
        x0, y = state.x0[rows], state.y[rows]
        target = None if state.target is None else state.target[rows]
        x = start.detach().clone()
        g = torch.zeros_like(x)
        v = torch.zeros_like(x)
        for _ in range(self.iterations):
            look = x + self.mu * self.decay * g if self.nesterov else x
            grad = self.gradient(state, rows, look, y, target)
            grad, v = grad + v, self.variance(state, rows, x, y, target, grad)
            g = self.decay * g + grad / grad.abs().flatten(1).mean(1).clamp_min(1e-12).view(-1, 1, 1, 1)
            x = self.project(x + self.mu * self.direction(g), x0)
        return x.detach()

    def direction(self, g: torch.Tensor) -> torch.Tensor:
        """The step's direction: sign(g) in l_inf, g / ||g||_2 in l_2."""
        return g.sign() if self.norm == "linf" else unit(g)

    def variance(
        self,
        state: TransferState,
        rows: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        grad: torch.Tensor,
    ) -> torch.Tensor:
        """VMI's v for the next step, given the gradient at x (zero without variance tuning)."""
        return torch.zeros_like(x)

    def transform(self, state: TransferState, rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """The input transformation before the surrogate (DI overrides; identity here)."""
        return x

    def smooth(self, grad: torch.Tensor) -> torch.Tensor:
        """The gradient's smoothing (TI overrides; identity here)."""
        return grad

    def gradient(
        self,
        state: TransferState,
        rows: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
    ) -> torch.Tensor:
        """d/dx of the loss on the surrogates' mean logits: CE of y (to raise) or of the target
        (to lower, so the sign is flipped and every update ascends)."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            z = self.surrogates.logits(self.transform(state, rows, x))
            (grad,) = torch.autograd.grad(raise_loss(z, y, target, "ce").sum(), x)
        return self.smooth(grad.detach())

    def craft_batch(
        self, x0: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Transfer examples for a batch, crafted from the clean images with no query (the start
        the hybrids take; per-image generators seeded as in a call)."""
        ids = torch.zeros(x0.shape[0], dtype=torch.int64, device=x0.device)
        state = TransferState(x0.detach(), y, target, ids)
        state.gens = [torch.Generator().manual_seed(s) for s in image_seeds(self.seed, x0, y)]
        return self.craft(state, torch.arange(x0.shape[0], device=x0.device), x0)
