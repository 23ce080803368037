"""Live query progress (`rnd.progress`): what attacks report is what the oracle charged."""

from __future__ import annotations

import pytest

from rnd import Oracle, RandomNoiseDefense
from rnd.attacks import make_attack
from rnd.progress import listener, listening


def test_listening_nests_and_resets():
    outer, inner = [], []
    assert listener() is None
    with listening(outer.append):
        with listening(inner.append):
            listener()(3)
        listener()(5)
    assert listener() is None and (outer, inner) == ([5], [3])


@pytest.mark.parametrize(
    ("name", "norm"), [("square", "linf"), ("nes", "linf"), ("hsja", "l2"), ("rays", "linf")]
)
def test_an_attack_reports_every_query_it_spends(name, norm, tiny_model, attack_batch):
    x, y = attack_batch
    output = "labels" if make_attack(name, eps=0.1, norm=norm).feedback == "labels" else "probs"
    oracle = Oracle(RandomNoiseDefense(tiny_model, nu=0.02, seed=0), budget=300, output=output)
    other = oracle.new_ids(3)  # queries outside the attack's call are not the attack's to report
    oracle.query(x[:3], other)
    reports: list[int] = []
    with listening(reports.append):
        result = make_attack(name, eps=0.1, norm=norm, seed=0)(oracle, x[:6], y[:6])
    assert reports and all(k > 0 for k in reports)
    assert sum(reports) == int(result.queries.sum())  # every query of the call, counted once
    assert len(reports) > 1  # reported as the attack goes, not once at the end


def test_nothing_is_reported_without_a_listener(tiny_model, attack_batch):
    x, y = attack_batch
    seen: list[int] = []
    with listening(seen.append):
        pass
    make_attack("square", eps=0.1, seed=0)(Oracle(tiny_model, budget=50), x[:2], y[:2])
    assert seen == []


def test_the_attack_bar_counts_queries_against_the_whole_budget(tiny_model, attack_batch, capsys):
    x, y = attack_batch
    oracle = Oracle(RandomNoiseDefense(tiny_model, nu=0.05, seed=0), budget=60)
    make_attack("square", eps=0.1, seed=0, progress=True)(oracle, x[:2], y[:2])
    err = capsys.readouterr().err
    assert "/120 [" in err and "q/s" in err  # 2 images x 60 queries, in queries per second
