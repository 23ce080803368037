"""Every attack copes with a detector's refusals (all-NaN logits, DESIGN section 3): refused
queries cost, never read as success, and never put NaN into the attack's images."""

from __future__ import annotations

import math

import pytest
import torch

from rnd.attacks import QUERY_ATTACKS, make_attack
from tests.attacks.test_base import _norms, oracle_for

pytestmark = pytest.mark.usefixtures("one_thread")


class RefuseAfterFirst(torch.nn.Module):
    """Answers each image's first query (the clean image) and refuses every later one."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model, self.seen = model, 0
        self.input_shape, self.num_classes = model.input_shape, model.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x).clone()
        first = max(0, min(len(x), self.answer - self.seen))
        self.seen += len(x)
        out[first:] = math.nan
        return out


@pytest.mark.parametrize(("name", "norm"), _norms())
def test_refused_queries_cost_and_never_succeed(tiny_model, attack_batch, name, norm):
    x, y = attack_batch
    x, y = x[:3], y[:3]
    attack = make_attack(name, eps=0.1 if norm == "linf" else 1.0, norm=norm, seed=0)
    model = RefuseAfterFirst(tiny_model)
    model.answer = 3  # the three clean queries
    budget = max(attack.min_budget, 60)
    oracle = oracle_for(attack, model, budget=budget)
    result = attack(oracle, x, y)
    assert bool(result.x_adv.isfinite().all())
    assert not bool(result.success.any())
    assert int(oracle.refusals.sum()) == model.seen - 3 > 0
    assert bool((oracle.first_refusal[oracle.refusals > 0] >= 2).all())


def test_every_attack_is_covered():
    assert {n for n, _ in _norms()} == set(QUERY_ATTACKS)  # transfer attacks: test_transfer.py
