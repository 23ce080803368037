"""The re-checks of each final point (`judge_local`, and the verdict's `resubmission_failure` and
`encoded_failure`): the vote is the one `recheck` gives, drawn first; the wrong-answer counts agree
with it; a deterministic defense answers as the clean model; the resubmission estimate is exact on
hand-made counts and never rises with k; rows written before the counts are not measured."""

from __future__ import annotations

import math

import pytest
import torch

from rnd.audit.verdict import encoded_failure, resubmission_failure
from rnd.data.encoding import roundtrip
from rnd.defenses import build_defense
from rnd.evaluation.cells import ImageRow
from rnd.evaluation.targets import RESUBMIT_DRAWS, judge_local, recheck
from rnd.models.predict import predict


@pytest.fixture(scope="module")
def boundary_points(tiny_model, attack_batch):
    """Points near the decision boundary (halfway to another class's image): the answers of a noisy
    defense there are split, which is what the counts measure."""
    x, y = attack_batch
    other = x.roll(1, 0)
    return (0.5 * x + 0.5 * other).clamp(0, 1), y


def test_the_vote_is_recheck_s_and_the_counts_agree_with_it(tiny_model, boundary_points):
    x, y = boundary_points
    old = recheck(build_defense("rnd:nu=0.1", tiny_model, seed=5), tiny_model, x, y, votes=11)
    got = judge_local(build_defense("rnd:nu=0.1", tiny_model, seed=5), tiny_model, x, y, votes=11)
    assert torch.equal(got.clean, old[0]) and torch.equal(got.vote, old[1])  # drawn first: unchanged
    assert got.draws == RESUBMIT_DRAWS and got.wrong.dtype == torch.long
    assert bool(((got.wrong >= 0) & (got.wrong <= got.draws)).all())
    assert bool((got.wrong[got.vote] >= 6).all())  # a vote won means 6 of its 11 answers were wrong
    assert bool(((got.wrong > 0) & (got.wrong < got.draws)).any())  # some points are split
    # the encoded votes are votes on the decoded points, with fresh draws of the same defense
    assert got.png.dtype == torch.bool and got.jpeg.shape == got.vote.shape


def test_a_deterministic_defense_answers_as_the_clean_model(tiny_model, boundary_points):
    x, y = boundary_points
    got = judge_local(build_defense("none", tiny_model), tiny_model, x, y, votes=11, draws=50)
    wrong = predict(tiny_model, x) != y
    assert torch.equal(got.vote, wrong) and torch.equal(got.clean, wrong)
    assert torch.equal(got.wrong, wrong.long() * 50) and got.draws == 50
    assert torch.equal(got.png, predict(tiny_model, roundtrip(x, "png")) != y)
    assert torch.equal(got.jpeg, predict(tiny_model, roundtrip(x, "jpeg")) != y)


def rows(counts: list[tuple[int | None, int | None]]) -> list[ImageRow]:
    return [
        ImageRow(i, i, 0, False, 10, None, False, wrong_answers=w, answer_draws=n)
        for i, (w, n) in enumerate(counts)
    ]


def test_resubmission_failure_is_the_chance_all_k_answers_are_right():
    assert resubmission_failure(rows([(0, 100)] * 4), 100)["failure"] == 100.0  # never wrong
    assert resubmission_failure(rows([(100, 100)] * 4), 1)["failure"] == 0.0  # always wrong
    one = rows([(1, 100), (0, 100)])
    assert resubmission_failure(one, 1)["failure"] == pytest.approx(100 * (0.99 + 1) / 2)
    assert resubmission_failure(one, 10)["failure"] == pytest.approx(100 * (0.90 + 1) / 2)
    assert resubmission_failure(one, 100)["failure"] == pytest.approx(50.0)  # 100 of 100 sees it
    r = resubmission_failure(rows([(3, 11)] * 50), 2)
    assert r["failure"] == pytest.approx(100 * math.comb(8, 2) / math.comb(11, 2))
    assert r["low"] < r["failure"] < r["high"]
    split = rows([(w, 100) for w in range(0, 100, 7)])
    rates = [resubmission_failure(split, k)["failure"] for k in (1, 2, 10, 50, 100)]
    assert rates == sorted(rates, reverse=True)
    assert resubmission_failure(rows([(3, 11)]), 12) is None  # more resubmissions than draws
    assert resubmission_failure(rows([(None, None), (0, 100)]), 1) is None  # an older row
    assert resubmission_failure([], 1) is None


def test_resubmission_is_unbiased_for_a_known_error_rate():
    """Images whose answers are wrong with probability p, counted on 100 draws: the estimate of the
    failure after k resubmissions is near (1 - p)^k."""
    g = torch.Generator().manual_seed(0)
    p = 0.03
    counts = torch.binomial(torch.full((4000,), 100.0), torch.full((4000,), p), generator=g).long()
    got = resubmission_failure(rows([(int(w), 100) for w in counts]), 10)["failure"]
    assert got == pytest.approx(100 * (1 - p) ** 10, abs=1.5)


def test_encoded_failure_counts_the_vote_after_the_round_trip():
    rs = [ImageRow(i, i, 0, True, 1, True, True, success_png=i < 3, success_jpeg=False) for i in range(4)]
    assert encoded_failure(rs, "png")["failure"] == 25.0
    assert encoded_failure(rs, "jpeg")["failure"] == 100.0
    assert encoded_failure(rows([(0, 100)]), "png") is None
