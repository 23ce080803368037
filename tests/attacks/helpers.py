"""Checks every score-based attack must pass; each attack's test module calls them."""

from __future__ import annotations

import torch

from rnd import Oracle, RandomNoiseDefense
from rnd.attacks.base import QueryAttack
from tests.conftest import CountingModel


def true_margin(model, x, y):
    with torch.no_grad():
        z = model(x).log_softmax(1)
    own = z.gather(1, y[:, None]).squeeze(1)
    return own - z.scatter(1, y[:, None], -float("inf")).amax(1)


def run_checked(attack: QueryAttack, model, x, y, budget: int, nu: float = 0.0, targets=None):
    """Run `attack` through a counting model; check the accounting invariants; return the result."""
    counted = CountingModel(model)
    target_model = RandomNoiseDefense(counted, nu=nu, seed=0) if nu else counted
    oracle = Oracle(target_model, budget=budget)
    result = attack(oracle, x, y, targets)
    # queries reported == images forwarded (times EOT), never above the budget
    assert int(result.queries.sum()) == counted.images
    assert int(result.queries.max()) <= budget
    assert result.x_adv.shape == x.shape
    assert float(result.x_adv.min()) >= 0 and float(result.x_adv.max()) <= 1
    delta = (result.x_adv - x).flatten(1)
    if attack.norm == "linf":
        assert float(delta.abs().max()) <= attack.eps + 1e-6
    else:
        assert float(delta.norm(dim=1).max()) <= attack.eps + 1e-5
    return result


def check_early_stop(attack_factory, model, x, y, budget: int):
    """Images that succeeded are not queried again: with a larger budget their counts do not grow."""
    small = run_checked(attack_factory(), model, x, y, budget)
    large = run_checked(attack_factory(), model, x, y, budget * 2)
    done = small.success
    assert bool(done.any())
    assert torch.equal(small.queries[done], large.queries[done])
