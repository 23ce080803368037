"""The three success definitions under RND, on a model where they disagree by construction.

`Fringe` predicts class 0 at its centre point and class 1 when the first pixel is more than
`Z * nu` away from it. At x = centre under RND(nu) one noisy answer is "fooled" with probability
p = P(|N(0, 1)| > Z) = erfc(Z / sqrt 2) = 0.70, the clean model never is, and a majority of 11
fresh answers is with probability q = P(Binomial(11, p) >= 6) = 0.92. `Idle` only queries the
clean image, so x_adv = x and all three outcomes are known: observed = one noisy answer (rate p),
clean = never, vote = q (a vote of one answer would give p).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rnd.attacks import ATTACKS
from rnd.attacks.base import AttackState
from rnd.attacks.score import ScoreAttack
from rnd.data.base import ImageDataset
from rnd.defenses import legacy_defense
from rnd.evaluation.cells import Cell
from rnd.evaluation.execute import attack_and_recheck, evaluate_attack, execute_cell
from rnd.evaluation.targets import LocalTarget, Workspace

CENTRE = 128 / 255  # representable as a uint8 image (the sweep's data sets store uint8)
NU, Z, VOTES = 0.1, 0.38532, 11  # Z = Phi^-1(0.65)
P_ONE = math.erfc(Z / math.sqrt(2))  # 0.700: one noisy answer is fooled
P_VOTE = sum(math.comb(VOTES, k) * P_ONE**k * (1 - P_ONE) ** (VOTES - k) for k in range(6, VOTES + 1))
N = 4000  # images: a rate's standard deviation is at most 0.8 points; every band below is >= 4 sd


class Idle(ScoreAttack[AttackState]):
    """Queries the clean image once (observed success = that one answer), then stops."""

    name = "idle"

    def init(self, state: AttackState) -> None:
        self.query_start(state)

    def step(self, state: AttackState, rows: torch.Tensor) -> None:
        state.done[rows] = True


class Fringe(nn.Module):
    input_shape = (1, 2, 2)
    num_classes = 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        far = (x.flatten(1)[:, 0] - CENTRE).abs() - Z * NU
        return torch.stack([torch.zeros_like(far), far], 1) * 100


def _points() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.full((N, 1, 2, 2), CENTRE), torch.zeros(N, dtype=torch.int64)


def test_the_construction():
    assert pytest.approx(0.70, abs=1e-3) == P_ONE and pytest.approx(0.9218, abs=1e-3) == P_VOTE


def test_clean_rechecks_the_undefended_model_and_vote_is_a_majority_of_fresh_answers():
    x, y = _points()
    attack = Idle(eps=0.1, seed=0)
    result, clean_hit, vote_hit, _ = attack_and_recheck(
        attack, Fringe(), x, y, nu=NU, budget=10, defense_seed=5, votes=VOTES
    )
    assert torch.equal(result.x_adv, x) and bool((result.queries == 1).all())  # one query each
    assert float(result.success.float().mean()) == pytest.approx(P_ONE, abs=0.03)
    assert not bool(clean_hit.any())  # the clean model is never fooled at the centre
    # a majority of 11 fresh answers: q = 0.92, not p = 0.70 (one answer, or the observed one)
    assert float(vote_hit.float().mean()) == pytest.approx(P_VOTE, abs=0.03)
    assert not torch.equal(vote_hit, result.success)  # fresh answers, not the attacker's own


def test_evaluate_attack_reports_the_three_failure_rates():
    x, y = _points()
    ev, _ = evaluate_attack(Idle(eps=0.1, seed=0), Fringe(), x, y, nu=NU, budget=10, defense_seed=6)
    assert ev.failure_rate == pytest.approx(100 * (1 - P_ONE), abs=3)
    assert ev.failure_rate_clean == 100.0
    # vote success counts only observed successes; independent draws, so P = p q = 0.645 (a vote of
    # one fresh answer: p^2 = 0.49; the observed answer reused: p = 0.70)
    assert ev.failure_rate_vote == pytest.approx(100 * (1 - P_ONE * P_VOTE), abs=3)


def test_sweep_cell_rows_follow_the_same_three_definitions(monkeypatch):
    monkeypatch.setitem(ATTACKS, "idle", Idle)
    x, _ = _points()
    data = ImageDataset("stub", "test", (x * 255).round().to(torch.uint8), torch.zeros(N, dtype=torch.int64))
    model = Fringe()

    class Stub(Workspace):  # the model and data set held in memory instead of loaded from disk
        def model(self, cell: Cell) -> Fringe:
            return model

        def dataset(self, cell: Cell) -> ImageDataset:
            return data

    cell = Cell(
        model="fringe",
        checkpoint="-",
        checkpoint_sha256="fringe-" + "0" * 57,
        dataset="stub",
        split="test",
        images=N,
        start=0,
        attack="idle",
        norm="linf",
        eps=0.1,
        mu=None,
        eot=1,
        budget=10,
        defense=legacy_defense(NU),
        seed=0,
        votes=VOTES,
        accuracy_images=N,
    )
    rows = execute_cell(cell, target=LocalTarget(cell, Stub())).rows
    observed = torch.tensor([r.success for r in rows])
    vote = torch.tensor([r.success_vote for r in rows])
    assert float(observed.float().mean()) == pytest.approx(P_ONE, abs=0.03)
    assert not any(r.success_clean for r in rows)
    assert bool((vote <= observed).all())  # re-checks count observed successes only
    # among observed successes the vote holds with q = 0.92 (one fresh answer: 0.70; the observed
    # answer reused: 1.0); about 2,800 of them, so the standard deviation is 0.5 points
    assert float(vote[observed].float().mean()) == pytest.approx(P_VOTE, abs=0.03)
