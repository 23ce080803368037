import math

import pytest
import torch

from rnd import Oracle
from rnd.attacks import Square
from rnd.attacks.decision import DecisionAttack, DecisionState, probe_chunks, query_grid
from rnd.errors import InputError
from rnd.stats import median
from tests.attacks.decision_helpers import check_batch_independent, run_decision


class LineSearch(DecisionAttack[DecisionState]):
    """Each step: a binary search between the clean image and the best point, 4 halvings."""

    name = "line-search"
    default_mu = {"linf": 0.0, "l2": 0.0}

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("mu", 1.0)
        super().__init__(*args, **kwargs)

    def step(self, state, rows):
        x0, xa = state.x0[rows], state.x[rows]

        def point(idx, t):
            return x0[idx] + t.view(-1, 1, 1, 1) * (xa[idx] - x0[idx])

        n = rows.numel()
        lo, hi = self.bisect(state, rows, point, torch.zeros(n), torch.ones(n), 1 / 16)
        self.accept(state, rows, point(torch.arange(n), hi))
        state.done[rows] |= (hi - lo) > 1 / 16  # out of budget mid-search


def test_query_grid():
    assert query_grid(10) == [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]
    g = query_grid(10000)
    assert g[0] == 1 and g[-1] == 10000 and 5000 in g and 7000 in g and g == sorted(set(g))


def test_median_with_inf():
    assert median(torch.tensor([1.0, math.inf, 3.0])) == 3.0
    assert median(torch.tensor([math.inf, math.inf])) == math.inf
    assert math.isnan(median(torch.tensor([])))


@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_line_search_shrinks_and_accounts(tiny_model, attack_batch, norm):
    x, y = attack_batch
    attack = LineSearch(eps=0.3 if norm == "linf" else 3.0, norm=norm, seed=0)
    res = run_decision(attack, tiny_model, x, y, 60)
    assert bool(res.distance.isfinite().any())
    curve = res.distance_curve()
    assert curve[-1][0] == 60 and curve[-1][1] <= curve[0][1]


def test_budget_never_exceeded_mid_search(tiny_model, attack_batch):
    x, y = attack_batch
    for budget in (2, 3, 7, 13):
        res = run_decision(LineSearch(eps=0.1, seed=1, stop_at_eps=False), tiny_model, x, y, budget)
        assert int(res.queries.max()) <= budget


def test_stop_at_eps(tiny_model, attack_batch):
    x, y = attack_batch
    short = run_decision(LineSearch(eps=1.0, seed=2), tiny_model, x, y, 200)
    long = run_decision(LineSearch(eps=1.0, seed=2, stop_at_eps=False), tiny_model, x, y, 200)
    assert torch.equal(short.success, long.success)
    assert int(short.queries.sum()) < int(long.queries.sum())
    assert bool((long.distance <= short.distance).all())


def test_batch_independent(tiny_model, attack_batch):
    x, y = attack_batch
    check_batch_independent(lambda: LineSearch(eps=0.2, seed=3), tiny_model, x[:6], y[:6], 40)


def test_repeat_and_vote_costs_m(tiny_model, attack_batch):
    x, y = attack_batch
    res = run_decision(LineSearch(eps=0.2, seed=4, eot=5), tiny_model, x, y, 100)
    assert bool((res.queries % 5 == 0).all())


def test_given_starts(tiny_model, attack_batch):
    x, y = attack_batch
    starts = torch.roll(x, 1, 0)  # other images; most have another label
    res = run_decision(LineSearch(eps=0.2, seed=5), tiny_model, x, y, 30, starts=starts)
    assert bool(res.distance.isfinite().any())
    with pytest.raises(InputError, match="starts"):
        LineSearch(eps=0.2)(Oracle(tiny_model, output="labels", budget=30), x, y, starts=starts[:3])


def test_oracle_family_checks(tiny_model, attack_batch):
    x, y = attack_batch
    with pytest.raises(InputError, match="label-only"):
        LineSearch(eps=0.2)(Oracle(tiny_model, budget=30), x, y)
    with pytest.raises(InputError, match="scores"):
        Square(eps=0.1)(Oracle(tiny_model, output="labels", budget=30), x, y)
    with pytest.raises(InputError, match="to start"):
        LineSearch(eps=0.2, eot=3)(Oracle(tiny_model, output="labels", budget=5), x, y)


@pytest.fixture(scope="module")
def batch32(tiny_model, fmnist_test):
    from rnd.evaluation import correctly_classified

    return fmnist_test.get(correctly_classified(tiny_model, fmnist_test, 32))


def _decision_norms():
    from rnd.attacks import DECISION_ATTACKS

    return [(cls.name, norm) for cls in DECISION_ATTACKS for norm in cls.norms]


@pytest.mark.parametrize(("name", "norm"), _decision_norms())
def test_every_label_only_attack_is_batch_independent_1_vs_32(tiny_model, batch32, one_thread, name, norm):
    """The same 32 images in one batch of 32 and in 32 batches of 1: equal queries, successes and
    distances (per-image generators; every stage masks per image)."""
    from rnd.attacks import make_attack

    x, y = batch32
    eps = 0.2 if norm == "linf" else 2.5
    check_batch_independent(lambda: make_attack(name, eps=eps, norm=norm, seed=7), tiny_model, x, y, 60)


@pytest.mark.parametrize(("name", "norm"), _decision_norms())
def test_an_image_already_misclassified_costs_one_decision(tiny_model, fmnist_test, one_thread, name, norm):
    """Distance 0 from the first query: the image stops there, even with stop_at_eps=False."""
    from rnd.attacks import make_attack

    x, y = fmnist_test.get(torch.arange(200))
    with torch.no_grad():
        wrong = (tiny_model(x).argmax(1) != y).nonzero().flatten()[:2]
    eps = 0.1 if norm == "linf" else 1.0
    attack = make_attack(name, eps=eps, norm=norm, seed=0, stop_at_eps=False, eot=3)
    res = run_decision(attack, tiny_model, x[wrong], y[wrong], 100)
    assert res.queries.tolist() == [3, 3] and res.distance.tolist() == [0.0, 0.0]


def test_probe_chunks_cut_consecutive_rows_by_their_last_probe():
    groups = probe_chunks(torch.tensor([50, 50, 50, 200, 10]), 100)
    assert [g.tolist() for g in groups] == [[0, 1], [2], [3, 4]]
    assert [g.tolist() for g in probe_chunks(torch.tensor([3, 4]))] == [[0, 1]]  # default: one chunk
    assert probe_chunks(torch.tensor([], dtype=torch.long), 10) == []
