"""Square with OARS (Feng et al., CCS 2023): the adaptive counter to a stateful detector (Blacklight).

OARS does not hide its queries (that is blinding, `rnd.attacks.blinding`); it reads the refusals
as a signal. Two parts (paper Sec. 4; facts from the authors' code, nmangaokar/
ccs_23_oars_stateful_attacks, `attacks/adaptive/Square.py` and the CIFAR-10 Blacklight config):

1. Adaptive step tuning. A proposal changes `squares` random squares at once (each drawn as
   Square draws its one square, one after the other), each of side at least `min_side` (the
   schedule's side otherwise). Two binary searches, run from the current point, choose them:
   first the number of squares in [10, 100] (10 bisections of 5 sampled proposals each; a value
   passes when none is refused, rate 0), then, with that number, the minimum side in [1, 32]
   (10 bisections of 10 samples; passes when at most half are refused, rate 0.5). Each search
   keeps the smallest passing value it tried (starting from the upper end). Integer values are
   the middle rounded down, as in the reference.
2. Rejection sampling. A refused proposal is redrawn (a fresh random proposal, the next step);
   after 300 refused proposals in a row (`max_attempts`) the image stops, failed, as the
   reference ends the attack ("step movement failure").

Every sample and redraw is a real query and counts against the budget. Two choices of rnd's own:
the tuning starts at an image's first refused proposal (an image never refused runs exactly as
`Square`, bit for bit: undefended, OARS is Square), and the searches' samples are proposals like
any other: a sample that is not refused and lowers the loss is kept (the reference discards them).
The squares per proposal are the reference's for 32 x 32 CIFAR images; on 28 x 28 Fashion-MNIST
ten squares of the early side cover much of the image, so a tuned proposal is a larger move.

l_2: a "square" is one window move of Square's Alg. 3 (the window's mass moved into another with a
fresh bump), the proposal `squares` of them in a row; the reference has l_inf only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rnd._checks import check_int
from rnd.attacks.oars import Search, binary_search
from rnd.attacks.square import Square, SquareState


@dataclass(eq=False)
class SquareOARSState(SquareState):
    """Square's state plus the tuned step parameters and the refusal bookkeeping, per image."""

    squares: torch.Tensor = field(init=False)  # squares per proposal (1 until tuned)
    min_side: torch.Tensor = field(init=False)  # floor on the square side (1 until tuned)
    tuned: torch.Tensor = field(init=False)
    pending: torch.Tensor = field(init=False)  # refused once, not yet tuned: tune on the next step
    streak: torch.Tensor = field(init=False)  # refused proposals in a row

    def __post_init__(self) -> None:
        super().__post_init__()
        n = self.x0.shape[0]
        self.squares = torch.ones(n, dtype=torch.int64)
        self.min_side = torch.ones(n, dtype=torch.int64)
        self.tuned = torch.zeros(n, dtype=torch.bool)
        self.pending = torch.zeros(n, dtype=torch.bool)
        self.streak = torch.zeros(n, dtype=torch.int64)


class SquareOARS(Square):
    """Square Attack with OARS's step tuning and rejection sampling (module docstring).

    Args:
        squares_min, squares_max: range of the number of squares per proposal (10, 100).
        squares_samples, squares_rate: samples per bisection (5) and the refused share that
            passes (0).
        side_min, side_max: range of the minimum square side (1, 32).
        side_samples, side_rate: samples per bisection (10) and the share that passes (0.5).
        search_steps: bisections of each search (10).
        max_attempts: refused proposals in a row after which an image stops (300).
        eps, norm, mu and the rest: see `Square`.

    Example:
        >>> attack = SquareOARS(eps=0.1, seed=0)
        >>> result = attack(Oracle(Blacklight(model), budget=10_000), images, labels)
    """

    name = "square-oars"
    state_type = SquareOARSState

    def __init__(
        self,
        eps: float,
        norm: str = "linf",
        *,
        squares_min: int = 10,
        squares_max: int = 100,
        squares_samples: int = 5,
        squares_rate: float = 0.0,
        side_min: int = 1,
        side_max: int = 32,
        side_samples: int = 10,
        side_rate: float = 0.5,
        search_steps: int = 10,
        max_attempts: int = 300,
        **kwargs,
    ) -> None:
        super().__init__(eps, norm, **kwargs)
        for name, v in (("squares_min", squares_min), ("squares_max", squares_max)):
            check_int(v, name)
        for name, v in (("side_min", side_min), ("side_max", side_max)):
            check_int(v, name)
        self._squares_search = Search.checked(
            squares_min,
            squares_max,
            search_steps,
            squares_samples,
            squares_rate,
            ("squares_min", "squares_max", "search_steps", "squares_samples", "squares_rate"),
        )
        self._side_search = Search.checked(
            side_min,
            side_max,
            search_steps,
            side_samples,
            side_rate,
            ("side_min", "side_max", "search_steps", "side_samples", "side_rate"),
        )
        self.squares_min, self.squares_max = squares_min, squares_max
        self.squares_samples, self.squares_rate = squares_samples, squares_rate
        self.side_min, self.side_max = side_min, side_max
        self.side_samples, self.side_rate = side_samples, side_rate
        self.search_steps = search_steps
        self.max_attempts = check_int(max_attempts, "max_attempts")

    # -- proposals -----------------------------------------------------------------------------
    def sides(self, state: SquareOARSState, rows: torch.Tensor, floor: torch.Tensor) -> torch.Tensor:
        """The square side of each row this step: the schedule's, at least `floor`."""
        _, _, h, w = state.x0.shape
        it = state.iteration + 1
        if self.norm == "linf":
            side = torch.maximum(floor, torch.tensor(self._side(h, w, 1, it)))
            return side.clamp(1, min(h, w) - 1)
        side = torch.maximum(floor, torch.tensor(self._l2_side(h, w, it)))
        side = side + (side % 2 == 0).long()  # odd, as Square's l_2 windows
        return side.clamp(1, min(h, w))

    def propose(
        self, state: SquareOARSState, rows: torch.Tensor, squares: torch.Tensor, side: torch.Tensor
    ) -> torch.Tensor:
        """One proposal per row: `squares[i]` of Square's moves of side `side[i]` in a row from x.
        With one square of the schedule's side for every row: exactly Square's candidate."""
        x = state.x[rows].clone()
        for s in side.unique().tolist():
            with_s = side == s
            for k in range(int(squares[with_s].max())):
                sel = (with_s & (squares > k)).nonzero().flatten()
                r = rows[sel]
                if self.norm == "linf":
                    x[sel] = self._linf_candidate(state.x_plus[r], state.x_minus[r], x[sel], int(s))
                else:
                    x[sel] = self._l2_candidate(state.x0[r], x[sel], int(s))
        return x

    def ask(
        self, state: SquareOARSState, x: torch.Tensor, rows: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query `x`; (loss, adversarial?, refused?) per row (a refused row is never adversarial)."""
        assert self.oracle is not None
        scores = self.oracle.query(x, state.ids[rows], eot=self.eot).to(state.device)
        loss, adv = self.loss_from_scores(scores, state, rows)
        return loss, adv, scores.isnan().all(1)

    # -- the step ------------------------------------------------------------------------------
    def step(self, state: SquareOARSState, rows: torch.Tensor) -> None:  # type: ignore[override]
        tune = state.pending[rows]
        if bool(tune.any()):
            self.tune(state, rows[tune])
            rows = rows[~tune]  # a tuned image takes its next proposal on the next step
        if not rows.numel():
            return
        x_new = self.propose(state, rows, state.squares[rows], self.sides(state, rows, state.min_side[rows]))
        loss, adv, refused = self.ask(state, x_new, rows)
        self.accept(state, rows, x_new, loss, adv, self.improved(state, rows, loss, adv))
        streak = torch.where(refused, state.streak[rows] + 1, 0)
        state.streak[rows] = streak
        state.pending[rows] = refused & ~state.tuned[rows]
        state.done[rows[streak >= self.max_attempts]] = True

    def tune(self, state: SquareOARSState, rows: torch.Tensor) -> None:
        """OARS's two binary searches for `rows`: squares per proposal, then the minimum side."""
        state.pending[rows] = False
        state.tuned[rows] = True

        def sampler(search: Search, which: str):
            def refused_share(idx: torch.Tensor, mid: torch.Tensor) -> torch.Tensor:
                r = rows[idx].repeat_interleave(search.samples)
                value = mid.floor().long().repeat_interleave(search.samples)
                if which == "squares":
                    squares, floor = value, state.min_side[r]
                else:
                    squares, floor = state.squares[r], value
                x = self.propose(state, r, squares, self.sides(state, r, floor))
                loss, adv, refused = self.ask(state, x, r)
                self.keep_best(state, rows[idx], x, loss, adv, search.samples)
                return refused.view(-1, search.samples).float().mean(1)

            return refused_share

        def can_sample(search: Search):
            def go(idx: torch.Tensor) -> torch.Tensor:
                assert self.oracle is not None
                r = rows[idx]
                left = self.oracle.remaining(state.ids[r]) >= search.samples * self.eot
                return left & ~state.success[r]

            return go

        by_squares, by_side = self._squares_search, self._side_search
        squares = binary_search(by_squares, rows, sampler(by_squares, "squares"), can_sample(by_squares))
        state.squares[rows] = squares.floor().long()
        side = binary_search(by_side, rows, sampler(by_side, "side"), can_sample(by_side))
        state.min_side[rows] = side.floor().long()

    def keep_best(
        self,
        state: SquareOARSState,
        rows: torch.Tensor,
        x: torch.Tensor,
        loss: torch.Tensor,
        adv: torch.Tensor,
        m: int,
    ) -> None:
        """Of each row's m samples (refused ones read as no change), move to the lowest loss if it
        is lower than the current one; an adversarial sample wins."""
        score = torch.where(adv, -torch.inf, loss).view(-1, m)
        best = score.argmin(1)
        pick = torch.arange(rows.numel()) * m + best
        better = adv[pick] | (loss[pick] < state.loss[rows])
        self.accept(state, rows, x[pick], loss[pick], adv[pick], better)
