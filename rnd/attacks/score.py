"""ScoreAttack: the base of the score-based attacks (the oracle answers probabilities or logits).

On top of the query-loop core (`rnd.attacks.base.QueryAttack`): the attacker's loss from the scores
(CW margin, cross-entropy or the scale-invariant DLR ratio on log-probabilities, minimised), the
first query at the clean image,
and the stopping rule: an image stops at its first observed success (the oracle's answer, noisy
under RND, is what the attacker sees). Also the plateau step schedule shared by the
gradient-estimation attacks (NES, ZO-signSGD, Bandits).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import torch

from rnd._checks import check_int, check_positive
from rnd.attacks.base import AttackResult, AttackState, Norm, QueryAttack, put
from rnd.errors import InputError, unknown_name
from rnd.oracle import QueryOracle

LossName = Literal["margin", "ce", "dlr"]
LOSSES: tuple[str, ...] = ("margin", "ce", "dlr")


@dataclass(eq=False)
class ScoreState(AttackState):
    """Per-image state of a score attack: the core's, plus the attacker's loss at x."""

    loss: torch.Tensor = field(init=False)  # attacker's loss at x (lower is better)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.loss = torch.full((self.x0.shape[0],), math.inf, device=self.x0.device)


@dataclass(eq=False)
class PlateauState(ScoreState):
    """State of the attacks on the plateau step schedule: per-image step size and loss window."""

    lr: torch.Tensor = field(init=False)
    history: torch.Tensor = field(init=False)  # the last `length` losses (NaN = not yet seen), newest last


SS = TypeVar("SS", bound=ScoreState)


class ScoreAttack(QueryAttack[SS]):
    """Base of the score-based attacks. Subclasses implement `init` (usually `query_start` first)
    and `step`, querying through `evaluate`.

    Args:
        loss: "margin" (CW margin on log-probabilities), "ce" (log-probability of the true class;
            of the target when targeted) or "dlr" (the margin divided by a spread of the
            log-probabilities, invariant to scaled logits: see `dlr_loss`); all are minimised.
        eps, norm and the rest: see `QueryAttack`.
    """

    def __init__(self, eps: float, norm: Norm = "linf", *, loss: LossName = "margin", **kwargs: Any) -> None:
        super().__init__(eps, norm, **kwargs)
        if loss not in LOSSES:
            raise unknown_name("loss", loss, LOSSES)
        self.loss_name: LossName = loss

    state_type = ScoreState

    def check_oracle(self, oracle: QueryOracle) -> None:
        if oracle.output == "labels":
            raise InputError(f"{self.name} is score-based and needs an oracle with scores, not labels")
        need = 4 if self.targeted else 3
        if self.loss_name == "dlr" and oracle.num_classes < need:
            raise InputError(
                f"loss='dlr' needs at least {need} classes ({oracle.num_classes} here); use loss='margin'"
            )

    def result(self, state: SS) -> AttackResult:
        out = super().result(state)
        out.loss = state.loss
        return out

    def active(self, state: SS) -> torch.Tensor:
        """Images not yet fooled (as observed) and not stopped by the attack."""
        return ~(state.success | state.done)

    def evaluate(
        self, state: ScoreState, x: torch.Tensor, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Query `x` (row i belongs to image `rows[i]`); return (loss, adversarial?) per row."""
        assert self.oracle is not None
        scores = self.oracle.query(x, state.ids.index_select(0, rows), eot=self.eot)  # rows may repeat
        if scores.device != state.device:  # the model's device is not the images'
            scores = scores.to(state.device)
        return self.loss_from_scores(scores, state, rows)

    def loss_from_scores(
        self, scores: torch.Tensor, state: ScoreState, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Margin or CE loss (to minimise) and the adversarial flag from the oracle's scores.

        A refused query (all-NaN scores, from a detector) reads as no change: the loss at the current
        point of its image, and not adversarial. Branch-free off the CPU (no read-back from the
        device): with no refusal the masks change nothing, bit for bit, so the CPU skips them when
        no score is NaN."""
        assert self.oracle is not None
        if scores.device.type == "cpu" and not bool(scores.isnan().any()):
            return self._loss_from_scores(scores, state, rows)  # no refusal: the same numbers, fewer ops
        refused = scores.isnan().all(1)
        loss, adv = self._loss_from_scores(torch.where(refused[:, None], 0.0, scores), state, rows)
        return torch.where(refused, state.loss[rows], loss), adv & ~refused

    def _loss_from_scores(
        self, scores: torch.Tensor, state: ScoreState, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        assert self.oracle is not None
        if self.oracle.output == "logits":
            logp = scores.log_softmax(1)
        else:
            logp = scores.clamp_min(1e-30).log()
        y = state.y.index_select(0, rows)
        pred = scores.argmax(1)
        if self.loss_name == "dlr":
            if not self.targeted:
                return dlr_loss(logp, y), pred != y
            assert state.target is not None
            t = state.target[rows]
            return dlr_loss(logp, y, t), pred == t
        if self.targeted:
            assert state.target is not None
            t = state.target[rows]
            adv = pred == t
            own = logp.gather(1, t[:, None]).squeeze(1)
            if self.loss_name == "ce":
                return -own, adv
            other = logp.scatter(1, t[:, None], -math.inf).amax(1)
            return other - own, adv
        adv = pred != y
        col = y[:, None]
        own = logp.gather(1, col).squeeze(1)
        if self.loss_name == "ce":
            return own, adv
        other = logp.scatter(1, col, -math.inf).amax(1)
        return own - other, adv

    def query_start(self, state: ScoreState) -> None:
        """Query the clean images once: initial loss, and success if already misclassified."""
        rows = torch.arange(state.x0.shape[0], device=state.device)
        state.loss, state.success = self.evaluate(state, state.x0, rows)

    def accept(
        self,
        state: ScoreState,
        rows: torch.Tensor,
        x_new: torch.Tensor,
        loss: torch.Tensor,
        adv: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> None:
        """Move `rows` (sorted, distinct) to `x_new` where `mask` (default: all), and record loss /
        success there."""
        if mask is None:
            put(state.x, rows, x_new)
            put(state.loss, rows, loss)
            put(state.success, rows, adv)
            return
        keep = mask.nonzero().flatten()
        r = rows.index_select(0, keep)
        state.x.index_copy_(0, r, x_new.index_select(0, keep))
        state.loss.index_copy_(0, r, loss.index_select(0, keep))
        state.success.index_copy_(0, r, adv.index_select(0, keep))


def dlr_loss(logp: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """The DLR loss (Croce & Hein, ICML 2020, eq. 6 and 7) on log-probabilities, to minimise: the
    counter to random logit scaling (`rnd.defenses.logit_scaling`, Dashtbani et al., TMLR 2026).

    Untargeted: `(l_y - max_{i != y} l_i) / (l_(1) - l_(3))`; targeted: `(max_{i != t} l_i - l_t) /
    (l_(1) - (l_(3) + l_(4)) / 2)`, with `l = log p` and `l_(k)` the k-th largest. Why it is scale
    invariant: for logits `z` and a scale `m > 0`, `log softmax(m z)_i = m z_i - logsumexp(m z)`, so
    every difference `l_i - l_j` becomes `m (z_i - z_j)` and the order of the classes is unchanged.
    Numerator and denominator are differences of log-probabilities, both scale by `m`, and the ratio
    does not move; the plain margin moves by the factor `m` itself. Hence a random search comparing
    two answers scaled by different `m` compares the true losses again. (Exact up to float rounding
    while no probability underflows; the denominator is floored at 1e-12.)
    """
    ordered = logp.sort(dim=1, descending=True).values
    if target is None:
        own = logp.gather(1, y[:, None]).squeeze(1)
        other = logp.scatter(1, y[:, None], -math.inf).amax(1)
        spread = ordered[:, 0] - ordered[:, 2]
        return (own - other) / spread.clamp_min(1e-12)
    own = logp.gather(1, target[:, None]).squeeze(1)
    other = logp.scatter(1, target[:, None], -math.inf).amax(1)
    spread = ordered[:, 0] - (ordered[:, 2] + ordered[:, 3]) / 2
    return (other - own) / spread.clamp_min(1e-12)


def init_plateau(state: PlateauState, lr: float, length: int) -> None:
    """Per-image step sizes `state.lr` and loss windows `state.history` for `plateau_update`."""
    n = state.x0.shape[0]
    state.lr = torch.full((n,), float(lr), device=state.device)
    state.history = torch.full((n, max(length, 1)), float("nan"), device=state.device)


def plateau_update(
    state: PlateauState, rows: torch.Tensor, loss: torch.Tensor, drop: float, min_lr: float
) -> None:
    """The plateau schedule of Ilyas et al.'s NES code, per image: divide the step by `drop`
    (not below `min_lr`) where the newest loss is higher than `length` steps before; the window
    then restarts. Shared by every attack that takes gradient-estimate steps."""
    hist = torch.cat([state.history[rows, 1:], loss[:, None]], 1)
    rising = ~hist[:, 0].isnan() & (hist[:, -1] > hist[:, 0])
    lr = state.lr[rows]
    state.lr[rows] = torch.where(rising, (lr / drop).clamp_min(min_lr), lr)
    hist[rising] = float("nan")
    state.history[rows] = hist


def check_plateau(length: int, drop: float, lr: float, min_lr: float | None) -> tuple[int, float, float]:
    """Validated (plateau_length, plateau_drop, min_lr); min_lr defaults to lr / 200 (1e-2 -> 5e-5)."""
    length = check_int(length, "plateau_length", minimum=0)
    drop = check_positive(drop, "plateau_drop")
    if drop <= 1:
        raise InputError(f"plateau_drop must be > 1 (the step is divided by it), got {drop!r}")
    return length, drop, lr / 200 if min_lr is None else check_positive(min_lr, "min_lr")
