"""The verdict: per defense and threat model, every attack's three failure rates with their Wilson
intervals and failure-against-queries curve, the worst case over attacks (headline: by a vote of
fresh answers), the strongest score attack, and the JSON-ready report (`build_report`,
`write_json`; schema in docs/reference/audit-report.md). Reads the store's `CellRecord` objects.

May import: rnd.audit.suite, plan; rnd.report (labels, points); rnd.evaluation.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rnd.audit.cost import findings
from rnd.audit.plan import AuditPlan, grid_strength, strength_value
from rnd.audit.suite import families, family
from rnd.evaluation.cells import JUDGEMENTS, CellRecord, ImageRow
from rnd.evaluation.store import ResultsStore
from rnd.report.labels import setting_label
from rnd.report.points import effective_mu
from rnd.stats import rate_interval

#: Query counts of the failure-rate-against-queries curves, as fractions of the budget.
CURVE_POINTS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
#: Resubmissions k of each final point the report gives the risk of (DiffHammer; Lucas et al. 2023).
RESUBMISSIONS = (1, 10, 100)
#: The deployment's input paths a final point is re-checked after (`rnd.data.encoding`).
ENCODINGS = ("png", "jpeg")


SCHEMA = "rnd-audit/1"


def variant_label(r: CellRecord, surrogates: Mapping[str, str] | None = None) -> str:
    """An attack setting as a verdict row names it: `square linf eps=0.1 M=5 mu_nu_ratio=2`; a
    surrogate attack adds its models (`on=a+b`, names from `surrogates`, sha256 -> name; else
    the first 8 hex digits of each sha256)."""
    c = r.cell
    label = setting_label(c.attack, c.norm, c.eps, c.eot, c.attack_params)
    if c.surrogate_sha256:
        names = surrogates or {}
        label += " on=" + "+".join(names.get(h, h[:8]) for h in c.surrogate_sha256.split(","))
    return label


def query_curve(rows: Sequence[ImageRow], budget: int, by: str = "observed") -> list[tuple[int, float]]:
    """Failure % against queries: at q, the images not yet fooled after q queries, as the attacker
    observed it (`by="observed"`) or as a vote of fresh answers on its final point judges it
    (`by="vote"`: fooled in the attacker's view within q queries, and by the vote)."""
    n = len(rows)
    points = sorted({max(1, round(f * budget)) for f in CURVE_POINTS})
    won = [r.success and (by == "observed" or r.success_vote) for r in rows]
    return [
        (q, 100.0 * sum(1 for r, w in zip(rows, won, strict=True) if not (w and r.queries <= q)) / max(n, 1))
        for q in points
    ]


def _rated(failure: float, n: int) -> dict[str, float]:
    lo, hi = rate_interval(failure, n)
    return {"failure": failure, "low": lo, "high": hi}


def resubmission_failure(rows: Sequence[ImageRow], k: int) -> dict[str, float] | None:
    """Failure % when the attacker submits each final point k times and wins if any fresh answer
    is wrong: per image, P(all k answers right) estimated without bias from its R drawn answers, w
    of them wrong, as C(R - w, k) / C(R, k) (k draws without replacement); averaged over images.
    The interval is Wilson's at the image count (per-image values in [0, 1] vary no more than a
    count's). Every image counts; one whose final point lies outside the eps ball (a label-only
    attack that never got within eps) has no wrong answer recorded, so never counts as fooled.
    None when a row has no counts (written before they were kept) or k > R."""
    counts = [(r.answer_draws, r.wrong_answers) for r in rows]
    if not rows or any(n is None or w is None or k > n for n, w in counts):
        return None
    kept = sum(math.comb(n - w, k) / math.comb(n, k) for n, w in counts)  # type: ignore[operator]
    return _rated(100.0 * kept / len(rows), len(rows))


def encoded_failure(rows: Sequence[ImageRow], codec: str) -> dict[str, float] | None:
    """Failure % by vote after the `codec` round trip of each final point (None: not re-checked)."""
    hits = [getattr(r, f"success_{codec}") for r in rows]
    if not rows or any(h is None for h in hits):
        return None
    return _rated(100.0 * sum(not h for h in hits) / len(rows), len(rows))


def verdicts(records: Sequence[CellRecord], surrogates: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Per (defense, threat model): every attack's three failure rates with their intervals, and
    the worst case over attacks (headline: by vote), each traceable to its cell key. The records
    carry their image rows (the failure-against-queries curve); `surrogates` names the surrogate
    models by sha256."""
    out: dict[str, Any] = {}
    for r in records:
        c, s = r.cell, r.summary
        entry = out.setdefault(c.defense, {}).setdefault(family(c.attack), {"attacks": []})
        row = {
            "attack": variant_label(r, surrogates),
            "cell_key": r.key,
            "images": s.images,
            "queries_budget": c.budget,
            "mean_queries": s.mean_queries,
            "clean_accuracy": s.clean_accuracy,
            "curve": query_curve(r.rows or (), c.budget),
            "curve_vote": query_curve(r.rows or (), c.budget, by="vote"),
            "queries_total": sum(x.queries for x in r.rows) if r.rows else None,
        }
        for what, metric in JUDGEMENTS.items():
            row[what] = _rated(getattr(s, metric), s.images)
        rows = r.rows or ()
        row["resubmission"] = {str(k): resubmission_failure(rows, k) for k in RESUBMISSIONS}
        row["encoded"] = {c: encoded_failure(rows, c) for c in ENCODINGS}
        entry["attacks"].append(row)
    for by_threat in out.values():
        for entry in by_threat.values():
            entry["attacks"].sort(key=lambda a: a["attack"])
            for what in JUDGEMENTS:
                rated = [a for a in entry["attacks"] if not math.isnan(a[what]["failure"])]
                entry[f"worst_{what}"] = (
                    None
                    if not rated
                    else min(rated, key=lambda a: (a[what]["failure"], a["attack"]))["attack"]
                )
    return out


def _worst_of(entry: dict[str, Any] | None, pick: Any) -> dict[str, Any] | None:
    """The attack whose `pick(attack row)` rate is lowest, with it (None: no attack has one)."""
    rated = [(pick(a), a["attack"]) for a in (entry or {}).get("attacks", [])]
    rated = [(r, name) for r, name in rated if r is not None and not math.isnan(r["failure"])]
    if not rated:
        return None
    r, name = min(rated, key=lambda x: (x[0]["failure"], x[1]))
    return {"attack": name, **r}


def deployment_worst(entry: dict[str, Any] | None) -> dict[str, Any]:
    """The worst case a resubmitting attacker reaches (k = 1, 10, 100) and the vote's worst case
    after each encoding, over a family's attacks that have the re-checks (`rechecked_attacks` of
    them: cells run before rnd kept them have none; None where no attack measured it)."""
    attacks = (entry or {}).get("attacks", [])
    return {
        "rechecked_attacks": sum(a["encoded"]["png"] is not None for a in attacks),
        "resubmission": {
            str(k): _worst_of(entry, lambda a, k=k: a["resubmission"][str(k)]) for k in RESUBMISSIONS
        },
        "encoded": {c: _worst_of(entry, lambda a, c=c: a["encoded"][c]) for c in ENCODINGS},
    }


def strongest_score_attack(records: Sequence[CellRecord], defense: str) -> dict[str, Any] | None:
    """The plain (M = 1, no extra parameters) score attack with the lowest vote failure against
    `defense`; None when there is none."""
    plain = [
        r
        for r in records
        if r.cell.defense == defense
        and family(r.cell.attack) == "scores"
        and r.cell.eot == 1
        and r.cell.attack_params == {}
    ]
    if not plain:
        return None
    best = min(plain, key=lambda r: (r.summary.failure_rate_vote, r.cell.attack, r.cell.norm))
    c = best.cell
    return {"attack": c.attack, "norm": c.norm, "eps": c.eps, "cell_key": best.key}


def write_json(report: dict[str, Any], path: Path) -> None:
    """report.json: strict JSON (NaN -> null)."""

    def clean(v: Any) -> Any:
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, list | tuple):
            return [clean(x) for x in v]
        if isinstance(v, float) and not math.isfinite(v):
            return None
        return v

    path.write_text(json.dumps(clean(report), indent=1, sort_keys=True, allow_nan=False) + "\n")


def _worst(entry: dict[str, Any] | None, what: str) -> dict[str, Any] | None:
    """The worst case of a threat model's entry judged by `what`, with its cell key (None if none)."""
    if entry is None or entry[f"worst_{what}"] is None:
        return None
    a = next(a for a in entry["attacks"] if a["attack"] == entry[f"worst_{what}"])
    return {"attack": a["attack"], "cell_key": a["cell_key"], **a[what]}


def build_report(
    plan: AuditPlan, db: str | Path, grid: Any, strongest: dict[str, Any] | None
) -> dict[str, Any]:
    """The audit report (plain data, JSON-ready) from the store: no wall-clock values, so a
    resumed audit gives the same report as an uninterrupted one."""
    keys = [c.key for c in plan.sweep.cells]
    gkeys = [] if grid is None else [c.key for c in grid.cells]
    with ResultsStore(db, readonly=True) as store:
        by_key = {r.key: r for r in store.records(rows=True, keys=[*keys, *gkeys])}
    results = [by_key[k] for k in keys if k in by_key]
    grid_done = sum(k in by_key for k in gkeys)
    progress = {
        "complete": len(results) == len(keys) and grid_done == len(gkeys),
        "cells": len(keys),
        "done": len(results),
        "grid_cells": None if grid is None else len(gkeys),
        "grid_done": None if grid is None else grid_done,
    }
    attacker_models = plan.request.get("surrogates") or []
    cells = verdicts(results, {m["sha256"]: m["name"] for m in attacker_models})
    remote = plan.defense == "remote"
    threats = families(plan.request["threat"])
    verdict: dict[str, Any] = {}
    for t in threats:
        mine = cells.get(plan.defense, {}).get(t)
        base = cells.get("none", {}).get(t)
        planned = sum(c.defense == plan.defense and family(c.attack) == t for c in plan.sweep.cells)
        if mine is None and not planned:
            continue
        ran = 0 if mine is None else len(mine["attacks"])
        verdict[t] = {
            "headline": "vote",
            "worst": _worst(mine, "vote"),
            "worst_observed": _worst(mine, "observed"),
            "worst_clean": None if remote else _worst(mine, "clean"),
            "undefended_worst": _worst(base, "vote"),
            "attacks": ran,
            "attacks_pending": planned - ran,
            **deployment_worst(mine),
        }
        if t == "surrogate":  # states the attacker's models it stands for
            verdict[t]["surrogates"] = [m["name"] for m in attacker_models]
    first = next((r for r in results if r.cell.defense == plan.defense), results[0] if results else None)
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "progress": progress,
        "request": plan.request,
        "model": {"url": None if first is None else first.cell.url}
        if remote
        else {
            "label": None if first is None else first.cell.model,
            "checkpoint_sha256": None if first is None else first.cell.checkpoint_sha256,
        },
        "defense": plan.defense,
        "calibration": plan.calibration,
        "preflight": plan.preflight,
        "clean_accuracy": {
            "defended": None if first is None else first.summary.clean_accuracy,
            "undefended": None if remote or first is None else first.summary.model_accuracy,
            "images": plan.config.data.accuracy_images,
        },
        "not_measured": ["clean-model success", "clean accuracy without the defense", "strength calibration"]
        if remote
        else [],
        "attacks_run": sorted(
            {a["attack"] for by in cells.values() for e in by.values() for a in e["attacks"]}
        ),
        "verdict": verdict,
        "cells": cells,
        "mu_nu": None,
        "findings": [],
        "cost": None,
        "db": str(db),
    }
    if grid is not None and strongest is not None:
        param, _ = grid_strength(plan.defense)  # type: ignore[misc]
        g = [by_key[k] for k in gkeys if k in by_key]
        if g:  # a partial report may have none yet
            mus = sorted({effective_mu(r) for r in g})
            nus = sorted({strength_value(r.cell.defense, param) for r in g})
            at = {(effective_mu(r), strength_value(r.cell.defense, param)): r for r in g}

            def matrix(metric: str) -> list[list[float | None]]:
                return [
                    [getattr(at[(m, n)].summary, metric) if (m, n) in at else None for n in nus] for m in mus
                ]

            report["mu_nu"] = {
                "attack": f"{strongest['attack']} {strongest['norm']} eps={strongest['eps']:g}",
                "chosen_from": strongest["cell_key"],
                "images": plan.request["size"]["grid_images"],
                "param": param,
                "mu": mus,
                "nu": nus,
                **{what: matrix(metric) for what, metric in JUDGEMENTS.items()},
                "cell_keys": [[at[(m, n)].key if (m, n) in at else None for n in nus] for m in mus],
            }
    report["findings"] = findings(report)
    return report
