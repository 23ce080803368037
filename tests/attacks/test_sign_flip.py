import math

import pytest
import torch

from rnd import Oracle, RandomNoiseDefense
from rnd.attacks.sign_flip import SignFlip
from rnd.errors import InputError
from tests.attacks.decision_helpers import check_batch_independent, run_decision

pytestmark = pytest.mark.usefixtures("one_thread")


def test_shrinks_and_succeeds(tiny_model, attack_batch):
    x, y = attack_batch
    res = run_decision(SignFlip(eps=0.3, seed=0), tiny_model, x, y, 1000)
    # 0.70-0.80 over attack seeds 0-7 (one image never finds a noise start): floor minus 2 images
    assert float(res.success.float().mean()) >= 0.6
    curve = [(q, d) for q, d in res.distance_curve() if math.isfinite(d)]
    assert curve[-1][1] < curve[0][1]


def test_keeps_shrinking_without_early_stop(tiny_model, attack_batch):
    x, y = attack_batch
    short = run_decision(SignFlip(eps=0.3, seed=1), tiny_model, x[:8], y[:8], 300)
    long = run_decision(SignFlip(eps=0.3, seed=1, stop_at_eps=False), tiny_model, x[:8], y[:8], 300)
    assert torch.equal(short.success, long.success)
    assert int(short.queries.sum()) < int(long.queries.sum())
    assert bool((long.distance <= short.distance).all())


def test_budget_never_exceeded(tiny_model, attack_batch):
    x, y = attack_batch
    for budget in (2, 3, 4, 7, 12, 13, 31):
        res = run_decision(SignFlip(eps=0.01, seed=2, stop_at_eps=False), tiny_model, x, y, budget)
        assert int(res.queries.max()) <= budget


def test_batch_independent(tiny_model, attack_batch):
    x, y = attack_batch
    check_batch_independent(lambda: SignFlip(eps=0.1, seed=3), tiny_model, x[:6], y[:6], 60)


def test_repeat_and_vote_costs_multiples_of_m(tiny_model, attack_batch):
    x, y = attack_batch
    res = run_decision(SignFlip(eps=0.05, seed=4, eot=3), tiny_model, x[:8], y[:8], 100, nu=0.02)
    assert bool((res.queries % 3 == 0).all())


def test_given_starts(tiny_model, attack_batch):
    """Given starts are shrunk from (binary search, then steps): never farther than the start."""
    x, y = attack_batch
    starts = torch.roll(x, 1, 0)
    targets = torch.roll(y, 1)  # the starts' own labels: the model classifies them correctly
    keep = targets != y
    x, y, starts, targets = x[keep], y[keep], starts[keep], targets[keep]
    attack = SignFlip(eps=0.3, targeted=True, seed=5)
    res = run_decision(attack, tiny_model, x, y, 200, targets=targets, starts=starts)
    assert bool(res.distance.isfinite().all())
    assert bool((res.distance < (starts - x).flatten(1).abs().amax(1)).all())


def test_mu_is_the_step_and_scales_with_nu(tiny_model, attack_batch):
    x, y = attack_batch
    assert SignFlip(eps=0.05).mu == 0.004
    attack = SignFlip(eps=0.05, mu_nu_ratio=0.5, assume={"nu": 0.02}, seed=6)
    oracle = Oracle(RandomNoiseDefense(tiny_model, nu=0.02, seed=0), output="labels", budget=20)
    res = attack(oracle, x[:3], y[:3])
    assert res.params["mu"] == 0.004 and res.params["mu_used"] == pytest.approx(0.01)
    with pytest.raises(InputError, match="mu"):
        SignFlip(eps=0.05, mu=-0.1)
    with pytest.raises(InputError, match="norm 'l2'"):
        SignFlip(eps=1.0, norm="l2")


def test_refuses_score_oracle(tiny_model, attack_batch):
    x, y = attack_batch
    with pytest.raises(InputError, match="label-only"):
        SignFlip(eps=0.05)(Oracle(tiny_model, budget=30), x, y)
