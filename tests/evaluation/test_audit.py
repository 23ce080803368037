"""`rnd audit`'s parts: the suite per defense and threat model, the intervals and curves, and the
report's JSON schema (docs/audit-report.md), pinned on a real audit of a small model."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rnd.audit.plan import grid_strength, strength_value
from rnd.audit.suite import TRANSFER_SUITE, AuditSize, family, strength_of, suite
from rnd.audit.verdict import SCHEMA, query_curve
from rnd.errors import InputError
from rnd.evaluation.cells import ImageRow
from rnd.stats import rate_interval, wilson


def names(entries: list[dict]) -> list[str]:
    out = []
    for a in entries:
        label = f"{a['name']} {a['norm']}" + (f" M={a['eot']}" if a["eot"] > 1 else "")
        out += [label + "".join(f" {k}={v}" for k, v in sorted(a["params"].items()))]
    return out


def test_the_suite_is_every_attack_and_the_counters_of_each_defense():
    plain_scores = names(suite("scores", "none"))
    assert len(plain_scores) == 13 and "parsimonious linf" in plain_scores
    assert "parsimonious l2" not in plain_scores and not any("M=" in n for n in plain_scores)
    assert len(suite("labels", "none")) == 8 and "psj l2" not in names(suite("labels", "none"))
    rnd = names(suite("both", "rnd:nu=0.02"))
    for counter in ("square linf M=5", "square linf M=10", "nes linf mu_nu_ratio=2.0", "psj l2", "psj linf",
                    "hsja l2 M=5", "sign-opt l2 M=5"):  # fmt: skip
        assert counter in rnd
    assert len(rnd) == 13 + 14 + 7 + 8 + 4
    assert "square-adaptive linf rule=up" in names(suite("scores", "aaa"))
    assert not any("M=" in n for n in names(suite("scores", "aaa")))  # deterministic: no EOT
    assert "square linf loss=dlr" in names(suite("scores", "rls"))
    assert "nes linf blind=0.05" in names(suite("scores", "blacklight:threshold=45"))
    assert "square-oars linf" in names(suite("scores", "blacklight"))
    assert "hsja-oars l2" in names(suite("labels", "blacklight"))
    assert "hsja-oars l2" not in names(suite("scores", "blacklight"))  # a label-only counter
    for plain in (suite("both", "none"), suite("both", "rnd:nu=0.02"), suite("both", "aaa")):
        assert not any(a["name"].endswith("-oars") for a in plain)  # counters to Blacklight only
    assert len(names(suite("scores", "remote"))) == 34  # the server's defense may be random
    with pytest.raises(InputError, match="unknown threat"):
        suite("pixels", "none")


def test_the_surrogate_family_runs_transfer_on_each_model_and_the_ensemble_and_the_hybrids():
    three = suite("surrogate", "none", surrogates=3)
    transfer = [a for a in three if a["name"] in TRANSFER_SUITE]
    assert {tuple(a["surrogates"]) for a in transfer} == {(0,), (1,), (2,), (0, 1, 2)}
    assert len(transfer) == 2 * 4 * (len(TRANSFER_SUITE) + 1)  # two norms, four sets, K=10 MI-FGSM too
    hybrids = [a for a in three if a["name"] not in TRANSFER_SUITE]
    assert {a["name"] for a in hybrids} == {"gfcs", "p-rgf", "square-ts", "signhunter-ts", "hsja-ts"}
    assert all(a["surrogates"] == [0, 1, 2] for a in hybrids) and not any(a["eot"] > 1 for a in three)
    rnd = suite("surrogate", "rnd:nu=0.02", surrogates=3)
    adaptive = [names([a])[0] for a in rnd if a["eot"] > 1 or a["name"] == "psj-ts"]
    assert sorted(adaptive) == [
        "gfcs linf M=5",
        "p-rgf linf M=5",
        "psj-ts l2",
        "psj-ts linf",
        "square-ts linf M=5",
    ]
    labels_only = suite("surrogate", "remote", surrogates=1, scores=False)
    assert not {a["name"] for a in labels_only} & {"gfcs", "p-rgf", "square-ts", "signhunter-ts"}
    assert len(suite("all", "none", surrogates=1)) == 13 + 8 + 2 * (len(TRANSFER_SUITE) + 1 + 5)
    assert family("vmi-fgsm") == family("gfcs") == "surrogate" and family("square") == "scores"
    with pytest.raises(InputError, match="at least one surrogate"):
        suite("all", "none", surrogates=0)


def test_strength_is_calibrated_only_when_the_spec_leaves_it_open():
    assert strength_of("rnd") == ("rnd", "nu")
    assert strength_of("rnd:nu=0.02") == ("rnd:nu=0.02", None)
    assert strength_of("feature-noise:layers=stages") == ("feature-noise:layers=stages", "sigma")
    assert strength_of("aaa") == ("aaa", None)


def test_the_grid_varies_each_random_defense_by_its_own_strength():
    assert grid_strength("rnd:nu=0.0525") == ("nu", 0.0525)
    assert grid_strength("feature-noise:sigma=0.775") == ("sigma", 0.775)
    assert grid_strength("low-confidence:nu=0.05,tau=0.97") == ("nu", 0.05)
    for fixed in ("none", "aaa", "rls", "blacklight", "remote", "rnd:nu=0"):
        assert grid_strength(fixed) is None, fixed
    assert strength_value("feature-noise:sigma=0.5", "sigma") == 0.5 and strength_value("none", "sigma") == 0


def test_intervals_and_curves():
    lo, hi = wilson(3, 10)
    assert (round(lo, 1), round(hi, 1)) == (10.8, 60.3)
    assert rate_interval(30.0, 10) == (lo, hi)
    assert all(math.isnan(v) for v in rate_interval(math.nan, 10))
    # (success, queries) per image: fooled after 10, 300 and 1 queries; one never fooled
    seen = [(True, 10), (True, 300), (False, 1000), (True, 1)]
    rows = [ImageRow(i, i, 0, ok, q, ok, ok) for i, (ok, q) in enumerate(seen)]
    curve = dict(query_curve(rows, 1000))
    assert curve[10] == 50.0 and curve[300] == 25.0 and curve[1000] == 25.0
    assert AuditSize().quick() == AuditSize(20, 1000, 2000, 10)


TOP = {
    "schema", "progress", "request", "model", "defense", "calibration", "clean_accuracy", "not_measured",
    "attacks_run", "verdict", "cells", "mu_nu", "db", "preflight", "findings", "cost",
}  # fmt: skip
PREFLIGHT = {
    "output", "declared", "randomised", "stateful", "first_refusal", "quantises", "rate_limited",
    "retry_after", "queries", "notes", "traits",
}  # fmt: skip
RATE = {"failure", "low", "high"}


def check_schema(report: dict, remote: bool = False) -> None:
    """The keys and types docs/audit-report.md documents."""
    assert set(report) == TOP and report["schema"] == SCHEMA
    surrogate_family = "surrogate" in report["verdict"]
    assert set(report["request"]) == {
        "checkpoint_sha256", "url", "defense", "max_drop", "threat", "size", "seed", "dataset", "assume",
        "quick", *(["surrogates"] if surrogate_family else []),
    }  # fmt: skip
    for m in report["request"].get("surrogates", []):
        assert set(m) == {"name", "sha256"} and len(m["sha256"]) == 64
    assert set(report["request"]["size"]) == {"images", "budget", "accuracy_images", "grid_images"}
    assert set(report["model"]) == ({"url"} if remote else {"label", "checkpoint_sha256"})
    assert set(report["clean_accuracy"]) == {"defended", "undefended", "images"}
    if report["calibration"] is not None:
        cal = report["calibration"]
        assert set(cal) == {
            "defense", "param", "value", "spec", "max_drop", "confidence", "clean_accuracy", "images",
            "draws", "tried", "key",
        }  # fmt: skip
        assert all(set(t) == {"value", "drop", "std", "upper", "accuracy"} for t in cal["tried"])
        assert [t["value"] for t in cal["tried"]] == sorted(t["value"] for t in cal["tried"])
    pf = report["preflight"]
    if pf is not None:  # null: an endpoint not probed yet (a report written before its run)
        assert set(pf) == PREFLIGHT | ({"key"} if remote else set())
        assert pf["queries"] > 0 and pf["output"] in ("probs", "logits", "topk", "labels")
        assert (pf["traits"] is None) == (not remote)  # an endpoint's suite follows them
        if remote:
            want = "preflight" if report["request"]["assume"] is None else "assume"
            assert pf["traits"]["from"] == want
    p = report["progress"]
    assert set(p) == {"complete", "cells", "done", "grid_cells", "grid_done"} and 0 <= p["done"] <= p["cells"]
    assert (p["grid_cells"] is None) == (p["grid_done"] is None)
    for threat, v in report["verdict"].items():
        assert set(v) == {
            "headline", "worst", "worst_observed", "worst_clean", "undefended_worst", "attacks",
            "attacks_pending", "rechecked_attacks", "resubmission", "encoded",
            *(["surrogates"] if threat == "surrogate" else []),
        }  # fmt: skip
        assert set(v["resubmission"]) == {"1", "10", "100"} and set(v["encoded"]) == {"png", "jpeg"}
        for w in [*v["resubmission"].values(), *v["encoded"].values()]:
            assert w is None or set(w) == {"attack", *RATE}
        assert v["headline"] == "vote" and v["attacks_pending"] >= 0
        if v["worst"] is None:  # a partial report: no attack against the defense finished yet
            assert v["attacks"] == 0 and not p["complete"]
            continue
        assert set(v["worst"]) == {"attack", "cell_key", *RATE}
        assert v["worst"]["low"] <= v["worst"]["failure"] <= v["worst"]["high"]
    for by_threat in report["cells"].values():
        for entry in by_threat.values():
            assert set(entry) == {"attacks", "worst_observed", "worst_vote", "worst_clean"}
            for a in entry["attacks"]:
                assert set(a) == {
                    "attack", "cell_key", "images", "queries_budget", "mean_queries", "clean_accuracy",
                    "curve", "curve_vote", "queries_total", "observed", "vote", "clean", "resubmission",
                    "encoded",
                }  # fmt: skip
                assert [q for q, _ in a["curve_vote"]] == [q for q, _ in a["curve"]]
                # the vote never finds more fooled than the attacker saw
                assert all(v >= o for (_, v), (_, o) in zip(a["curve_vote"], a["curve"], strict=True))
                for r in [*a["resubmission"].values(), *a["encoded"].values()]:
                    assert r is None or set(r) == RATE
                assert set(a["vote"]) == RATE and len(a["cell_key"]) == 64
                assert all(len(p) == 2 for p in a["curve"])
    if report["mu_nu"] is not None:
        g = report["mu_nu"]
        assert set(g) == {
            "attack", "chosen_from", "images", "param", "mu", "nu", "observed", "vote", "clean", "cell_keys",
        }  # fmt: skip
        assert len(g["vote"]) == len(g["mu"]) and all(len(row) == len(g["nu"]) for row in g["vote"])
    for f in report["findings"]:
        assert set(f) == {"threat", "attack", "cell_key", "failure", "low", "high", "judged_by", "atlas"}
        assert f["atlas"] and all(t["id"].startswith("AML.T0043.00") for t in f["atlas"])
    assert {f["threat"] for f in report["findings"]} == {
        t for t, v in report["verdict"].items() if v["worst"]
    }
    if report["cost"] is not None:
        assert set(report["cost"]) == {"quota", "rate", "source", "families"}
    json.dumps(report, allow_nan=False)  # strict JSON


def test_a_calibration_key_names_the_model_the_images_and_the_budget():
    """Any change to what a calibration measures gives a new key: the model's weights, one pixel
    or label of the images it uses, the defense, the budget, the seed; images beyond those it uses
    do not."""
    from rnd.audit.calibration import calibration_key, calibration_request
    from rnd.data.base import ImageDataset

    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (30, 1, 4, 4), dtype=torch.uint8, generator=gen)
    data = ImageDataset("d", "test", images, torch.arange(30) % 3, ["a", "b", "c"])

    def key(d=data, sha="m1", defense="rnd", max_drop=1.0, n=20, seed=0) -> str:
        return calibration_key(calibration_request(sha, d, defense, "nu", max_drop, n, seed))

    base = key()
    assert key() == base and len(base) == 64
    pixel = images.clone()
    pixel[3, 0, 1, 2] ^= 1
    label = data.labels.clone()
    label[5] = (label[5] + 1) % 3
    later = images.clone()
    later[25] = 0  # beyond the 20 images calibrated on
    changed = [
        key(sha="m2"),
        key(d=ImageDataset("d", "test", pixel, data.labels, data.classes)),
        key(d=ImageDataset("d", "test", images, label, data.classes)),
        key(defense="low-confidence"),
        key(max_drop=2.0),
        key(n=21),
        key(seed=1),
    ]
    assert base not in changed and len(set(changed)) == len(changed)
    assert key(d=ImageDataset("d", "test", later, data.labels, data.classes)) == base
