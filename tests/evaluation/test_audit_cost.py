"""The attacker's cost in the owner's units and the ATLAS findings (`rnd.audit.cost`), on
hand-made report rows: keys are the queries over the quota rounded up, days the queries one key
sends at its rate; each family's worst case is tagged with its technique."""

from __future__ import annotations

import math

import pytest

from rnd.audit.cost import KeyTerms, attacker_cost, cost_of, findings, human_time, techniques
from rnd.errors import InputError


def row(attack: str, vote: float, total: int, images: int = 20) -> dict:
    return {
        "attack": attack,
        "images": images,
        "queries_total": total,
        "vote": {"failure": vote, "low": 0, "high": 100},
    }


def test_keys_and_days_follow_the_quota_and_the_rate():
    c = cost_of(row("square linf eps=0.1", 25.0, 12_345), KeyTerms(1000, 0.5, "given"))
    assert (c["fooled"], c["keys"]) == (15, 13)  # 75 % of 20 images; 12,345 / 1,000 rounded up
    assert c["queries_per_success"] == pytest.approx(12_345 / 15)
    assert c["days"] == pytest.approx(1000 / 0.5 / 86_400)  # each key spends its whole quota
    assert c["days_one_key"] == pytest.approx(12_345 / 0.5 / 86_400)
    small = cost_of(row("nes linf eps=0.1", 100.0, 300), KeyTerms(1000, None, "given"))
    assert (small["keys"], small["days"], small["queries_per_success"]) == (1, None, None)


@pytest.mark.parametrize(("quota", "rate"), [(0, None), (-5, 1.0), (10, 0.0), (10, math.inf), (True, None)])
def test_bad_terms_are_refused(quota, rate):
    with pytest.raises(InputError, match=r"quota|rate"):
        KeyTerms(quota, rate, "given")


def report() -> dict:
    d = "rnd:nu=0.02"
    scores = [row("square linf eps=0.1", 60.0, 8000), row("nes linf eps=0.1", 80.0, 9000)]
    surrogate = [row("mi-fgsm linf eps=0.1 on=a", 40.0, 20), row("gfcs linf eps=0.1 on=a+b", 30.0, 900)]

    def worst(rows: list[dict]) -> dict:
        w = min(rows, key=lambda r: r["vote"]["failure"])
        return {
            "attack": w["attack"],
            "cell_key": "k",
            "failure": w["vote"]["failure"],
            "low": 1.0,
            "high": 99.0,
        }

    return {
        "defense": d,
        "cells": {d: {"scores": {"attacks": scores}, "surrogate": {"attacks": surrogate}}},
        "verdict": {
            "scores": {"worst": worst(scores)},
            "surrogate": {"worst": worst(surrogate)},
            "labels": {"worst": None},
        },
    }


def test_the_cost_of_each_family_s_worst_case():
    cost = attacker_cost(report(), KeyTerms(500, 2.0, "keys.sqlite: auditor"))
    assert cost["quota"] == 500 and cost["source"] == "keys.sqlite: auditor"
    assert (
        cost["families"]["scores"]["attack"] == "square linf eps=0.1"
        and cost["families"]["scores"]["keys"] == 16
    )
    assert cost["families"]["surrogate"]["attack"] == "gfcs linf eps=0.1 on=a+b"
    assert cost["families"]["labels"] is None


def test_findings_carry_the_atlas_technique_of_their_attack():
    assert techniques("square linf eps=0.1") == ["AML.T0043.001"]
    assert techniques("mi-fgsm l2 eps=1.5 on=a") == ["AML.T0043.002"]
    assert techniques("gfcs linf eps=0.1 on=a+b") == ["AML.T0043.001", "AML.T0043.002"]
    found = {f["threat"]: f for f in findings(report())}
    assert set(found) == {"scores", "surrogate"}  # no finished labels attack: no finding
    assert [t["id"] for t in found["surrogate"]["atlas"]] == ["AML.T0043.001", "AML.T0043.002"]
    assert (
        "Black-Box Transfer" in found["surrogate"]["atlas"][1]["name"]
        and found["scores"]["judged_by"] == "vote"
    )


def test_durations_read_as_a_person_reads_them():
    assert [human_time(d / 86_400) for d in (20, 600, 7200, 86_400 * 3)] == [
        "20 s",
        "10 min",
        "2.0 h",
        "3.0 days",
    ]
