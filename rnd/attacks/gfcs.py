"""GFCS (Lord, Mueller and Bertinetto, ICLR 2022, "Attacking deep networks with surrogate-based
adversarial black-box methods is easy", Alg. 1): SimBA whose candidate directions come from the
attacker's surrogates, "gradient first, coimage second".

Per image, at its current point x (victim loss L, minimised, from the oracle's scores):

    if some surrogate s has not been tried at x:  q = unit(grad_x Lsur_s(x))   (a random untried s)
    else (every surrogate's gradient failed):     q = unit(grad_x w^T f_s(x)), w ~ U(-1, 1)^C,
                                                  s drawn at random        (ODS, the "coimage")
    try x + mu q, then x - mu q (SimBA's two-sided step; the second only if the first failed),
    keeping the first that lowers L (or is observed adversarial); any move marks every surrogate
    untried again,

then projects onto the threat ball and [0, 1]. Lsur is the surrogate's CW margin of the true label
(of the target, targeted), raised; l_2 steps along q, l_inf along sign(q) (the paper is l_2 only;
l_inf is the same search with the FGSM direction). A step costs 1 or 2 queries (2M with EOT); the
surrogate gradients cost none. Per-image generators (the surrogate order, ODS weights): a result
does not depend on how the images are batched.

Default step: mu = 0.2 (l_2) and 0.02 (l_inf), chosen on the undefended default Fashion-MNIST model
(its surrogate zoo, 100 images, 2,000 queries; `bench/hybrid_tuning.py`, record
`docs/results/records/hybrid-tuning.json`): l_2 steps 0.1 / 0.2 / 0.5 fail on 20 / 19 / 22 %, l_inf
steps 0.02 / 0.05 / 0.1 on 23 / 29 / 35 %. The paper's ImageNet step, 2.0 for a bound of
sqrt(0.001 D) = 16.4, is the same share of its ball as 0.18 is of eps_2 1.5.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from rnd.attacks.base import AttackResult, Norm, row_draws, unit
from rnd.attacks.decision import image_seeds
from rnd.attacks.score import ScoreAttack, ScoreState
from rnd.attacks.surrogate import SurrogateAttack


@dataclass(eq=False)
class GFCSState(ScoreState):
    """GFCS's per-image state: which surrogates were tried at the current point, and generators."""

    tried: torch.Tensor = field(init=False)  # (N, S) bool
    gens: list[torch.Generator] = field(init=False)
    ods_steps: torch.Tensor = field(init=False)  # how many steps took an ODS direction


class GFCS(SurrogateAttack, ScoreAttack[GFCSState]):
    """GFCS: surrogate-gradient candidates for SimBA, with the ODS fallback (l_2 and l_inf).

    Args:
        surrogate: the attacker's model or models (pixel inputs in [0, 1]; the target's shape
            and classes).
        mu: the step (l_2 length of a step, or per-pixel size in l_inf).
        eps, norm, loss, eot, seed, ...: see `ScoreAttack`.
    """

    name = "gfcs"
    state_type = GFCSState
    norms = ("l2", "linf")
    default_mu = {"l2": 0.2, "linf": 0.02}

    def __init__(
        self,
        eps: float,
        norm: Norm = "l2",
        *,
        surrogate: nn.Module | Sequence[nn.Module] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(eps, norm, surrogate=surrogate, **kwargs)

    @property
    def step_cost(self) -> int:
        return 2 * self.eot

    def init(self, state: GFCSState) -> None:
        self.query_start(state)
        n = state.x0.shape[0]
        state.tried = torch.zeros(n, len(self.surrogates), dtype=torch.bool)
        state.ods_steps = torch.zeros(n, dtype=torch.int64)
        state.gens = [torch.Generator().manual_seed(s) for s in image_seeds(self.seed, state.x0, state.y)]

    def directions(self, state: GFCSState, rows: torch.Tensor) -> torch.Tensor:
        """One unit direction per row: an untried surrogate's gradient, else an ODS direction."""
        x, y = state.x[rows], state.y[rows]
        target = None if state.target is None else state.target[rows]
        s_count = len(self.surrogates)
        assert self.oracle is not None
        classes = self.oracle.num_classes
        draws = row_draws(state.gens, rows, (s_count + classes,), torch.rand).cpu()
        tried = state.tried[rows].cpu()
        ods = tried.all(1)
        # a random untried surrogate (the largest random key among the untried); any for ODS
        pick = torch.where(tried & ~ods[:, None], -1.0, draws[:, :s_count]).argmax(1)
        q = torch.empty_like(x)
        for s in range(s_count):
            for use_ods in (False, True):
                sel = ((pick == s) & (ods == use_ods)).nonzero().flatten()
                if not sel.numel():
                    continue
                sel_d = sel.to(x.device)
                if use_ods:
                    w = (2 * draws[sel, s_count:] - 1).to(x.device)
                    g = self.surrogates.ods_gradient(x[sel_d], w, s)
                else:
                    t = None if target is None else target[sel_d]
                    g = self.surrogates.loss_gradient(
                        x[sel_d], y[sel_d], t, loss="margin", models=[self.surrogates.models[s]]
                    )
                q[sel_d] = unit(g)
        state.tried[rows[~ods.to(rows.device)], pick[~ods].to(rows.device)] = True
        state.ods_steps[rows[ods.to(rows.device)]] += 1
        return q if self.norm == "l2" else q.sign()

    def step(self, state: GFCSState, rows: torch.Tensor) -> None:
        q = self.directions(state, rows)
        x, x0, mu = state.x[rows], state.x0[rows], self.cur_mu
        old = state.loss[rows]
        x_plus = self.project(x + mu * q, x0)
        loss, adv = self.evaluate(state, x_plus, rows)
        better = (loss < old) | adv
        self.accept(state, rows, x_plus, loss, adv, better)
        second = (~better).nonzero().flatten()
        if second.numel():
            x_minus = self.project(x[second] - mu * q[second], x0[second])
            loss2, adv2 = self.evaluate(state, x_minus, rows[second])
            ok = (loss2 < old[second]) | adv2
            self.accept(state, rows[second], x_minus, loss2, adv2, ok)
            better[second] = ok
        state.tried[rows[better]] = False  # a new point: every surrogate's gradient is new

    def result(self, state: GFCSState) -> AttackResult:
        out = super().result(state)
        out.params["ods_steps"] = float(state.ods_steps.double().mean()) if state.ods_steps.numel() else 0.0
        return out
