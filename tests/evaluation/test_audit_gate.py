"""The audit as a gate (`rnd.audit.gate`): --fail-under's outcomes at the interval's edges, a
partial report that can fail but never pass, and the diff's regressions, improvements, added and
removed attacks and refusals, on small hand-made reports."""

from __future__ import annotations

import json

import pytest

from rnd.audit.gate import (
    EXIT_FAIL,
    EXIT_PASS,
    EXIT_UNDECIDED,
    Rate,
    change_of,
    diff_reports,
    gate,
    load_report,
    overall,
)
from rnd.errors import InputError


def rate(failure: float, low: float, high: float) -> dict:
    return {"failure": failure, "low": low, "high": high}


def report(
    scores: dict[str, dict], labels: dict[str, dict] | None = None, complete: bool = True, **req
) -> dict:
    """A report of the audited defense `rnd:nu=0.02` with these attacks' vote rates per family."""
    cells, verdict = {}, {}
    for fam, attacks in (("scores", scores), ("labels", labels)):
        if attacks is None:
            continue
        rows = [{"attack": a, "vote": r, "observed": r, "clean": r} for a, r in attacks.items()]
        cells[fam] = {"attacks": rows}
        worst = min(rows, key=lambda a: a["vote"]["failure"], default=None)
        verdict[fam] = {"worst": None if worst is None else {"attack": worst["attack"], **worst["vote"]}}
    request = {
        "threat": "both",
        "dataset": "fashion-mnist",
        "seed": 0,
        "size": {"images": 20, "budget": 1000},
    }
    request.update(req)
    return {
        "schema": "rnd-audit/1",
        "request": request,
        "defense": "rnd:nu=0.02",
        "cells": {"rnd:nu=0.02": cells},
        "verdict": verdict,
        "progress": {"complete": True},
        "model": {"checkpoint_sha256": "ab" * 32},
    }


BASE = report(
    {"square": rate(60.0, 50.0, 70.0), "nes": rate(80.0, 70.0, 88.0)},
    {"hsja": rate(90.0, 82.0, 95.0)},
)


def test_the_overall_verdict_is_the_family_that_fails_least():
    threat, worst = overall(BASE)
    assert (threat, worst["attack"], worst["failure"]) == ("scores", "square", 60.0)
    assert overall(report({})) is None  # no attack finished: no verdict
    assert overall({"verdict": {}}) is None


@pytest.mark.parametrize(
    ("threshold", "outcome", "code"),
    [
        (0.0, "pass", EXIT_PASS),
        (50.0, "pass", EXIT_PASS),  # at the lower bound: not below
        (65.0, "inconclusive", EXIT_PASS),  # the estimate is under 65, the interval reaches it
        (70.0, "inconclusive", EXIT_PASS),  # the upper bound equals the threshold: not shown below
        (70.5, "below", EXIT_FAIL),
        (100.0, "below", EXIT_FAIL),
    ],
)
def test_fail_under_is_judged_on_the_interval(threshold, outcome, code):
    g = gate(BASE, threshold)
    assert (g.outcome, g.exit_code) == (outcome, code)
    assert (g.threat, g.attack) == ("scores", "square")
    assert str(threshold).rstrip("0").rstrip(".") in g.line() or threshold == 0.0
    assert ("FAIL" in g.line()) == (outcome == "below")


def test_a_partial_report_can_fail_the_gate_but_never_pass_it():
    part = {**BASE, "progress": {"complete": False}}
    assert gate(part, 71.0).outcome == "below"  # the final worst case can only be lower
    g = gate(part, 10.0)
    assert (g.outcome, g.exit_code) == ("undecided", EXIT_UNDECIDED) and "partial" in g.line()
    nothing = {**BASE, "verdict": {"scores": {"worst": None}}, "progress": {"complete": False}}
    assert gate(nothing, 10.0).exit_code == EXIT_UNDECIDED


@pytest.mark.parametrize("bad", [-1.0, 100.5, float("nan"), float("inf")])
def test_a_threshold_outside_0_100_is_refused(bad):
    with pytest.raises(InputError, match=r"outside \[0, 100\]"):
        gate(BASE, bad)


def test_a_change_is_a_separation_of_the_intervals():
    old = Rate(60.0, 50.0, 70.0)
    assert change_of(old, Rate(45.0, 35.0, 49.9)) == "regression"
    assert change_of(old, Rate(45.0, 35.0, 50.0)) == "no change"  # touching intervals overlap
    assert change_of(old, Rate(80.0, 70.1, 88.0)) == "improvement"
    assert change_of(None, old) == "added" and change_of(old, None) == "removed"
    assert change_of(None, None) == "not measured"


def test_diff_lists_every_attack_and_exits_1_on_a_regression():
    new = report(
        {"square": rate(30.0, 20.0, 40.0), "simba": rate(95.0, 90.0, 98.0)},
        {"hsja": rate(97.0, 95.5, 99.0)},
    )
    d = diff_reports(BASE, new)
    by = {(r.threat, r.attack): r for r in d.attacks}
    assert by[("scores", "square")].change == "regression" and by[("scores", "square")].delta == -30.0
    assert by[("scores", "nes")].change == "removed" and by[("scores", "simba")].change == "added"
    assert by[("labels", "hsja")].change == "improvement"
    worst = {r.threat: r for r in d.worst}
    assert worst["scores"].change == "regression" and worst["overall"].change == "regression"
    assert worst["labels"].change == "improvement"
    assert worst["overall"].new_attack == "scores square"
    assert d.exit_code == EXIT_FAIL and len(d.regressions) == 3
    text = d.render()
    assert "1 attack regression(s), 1 improvement(s) of 4 attack settings; 2 worst-case" in text
    assert text.endswith("exit 1")
    assert json.loads(json.dumps(d.to_dict()))["regressions"] == 3
    same = diff_reports(BASE, BASE)
    assert same.exit_code == EXIT_PASS and {r.change for r in same.attacks} == {"no change"}


def test_diff_refuses_reports_of_other_questions_unless_told():
    for other, words in (
        (report({}, threat="scores"), "threat models differ"),
        (report({}, size={"images": 500, "budget": 1000}), "images differ"),
        (report({}, size={"images": 20, "budget": 10000}), "query budgets differ"),
        (report({}, dataset="cifar10"), "data sets differ"),
    ):
        with pytest.raises(InputError, match=words):
            diff_reports(BASE, other)
        assert diff_reports(BASE, other, allow_mismatch=True).mismatches


def test_load_report_refuses_what_is_not_an_audit_report(tmp_path):
    good = tmp_path / "report.json"
    good.write_text(json.dumps(BASE))
    assert load_report(good)["defense"] == "rnd:nu=0.02"
    cases = {
        "missing.json": (None, "is not a file"),
        "broken.json": ('{"schema": ', "not valid JSON"),
        "other.json": (json.dumps({"schema": "rnd-sweep/9"}), "schema 'rnd-sweep/9'"),
        "list.json": ("[1, 2]", "no schema"),
        "cut.json": (json.dumps({"schema": "rnd-audit/1", "request": {}}), "lacks 'verdict'"),
        "binary.json": (b"\xff\xfe\x00", "not text"),
    }
    for name, (content, words) in cases.items():
        p = tmp_path / name
        if isinstance(content, bytes):
            p.write_bytes(content)
        elif content is not None:
            p.write_text(content)
        with pytest.raises(InputError, match=words):
            load_report(p)
