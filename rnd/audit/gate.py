"""The audit as an owner's gate: a report's overall verdict against a threshold (`rnd audit
--fail-under PCT`) and the change between two reports, attack by attack (`rnd audit diff`).

Both judge with 95 % Wilson intervals (`rnd.stats.wilson`), by the report's headline (a vote of
fresh answers) unless told otherwise:

- a verdict is **below** PCT when its interval's upper bound is: the audit shows, at 95 %, that
  the worst attack leaves fewer than PCT % of the images unfooled. A point estimate under PCT whose
  interval still reaches PCT is *inconclusive* and passes (more images narrow the interval);
- a change is a **regression** when the two intervals separate with the new failure rate lower
  (the new upper bound under the old lower bound), an **improvement** when they separate the other
  way; overlapping intervals are no measured change.

A partial report (an audit still running) can fail the gate but never pass it: its worst case is an
upper bound of the final one.

May import: rnd.report (the table renderer), rnd.errors. Reads reports as plain data.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from rnd.errors import InputError
from rnd.report.tables import render_table

#: Exit status of `rnd audit --fail-under` and `rnd audit diff` (2 is a bad input, as everywhere).
EXIT_PASS = 0
EXIT_FAIL = 1
EXIT_UNDECIDED = 3

#: The report schema these read (rnd.audit.verdict.SCHEMA; kept literal: this module sits beside it).
SCHEMAS = ("rnd-audit/1",)
#: `by` -> the verdict's worst-case field.
WORST_FIELD = {"vote": "worst", "observed": "worst_observed", "clean": "worst_clean"}
Judgement = Literal["vote", "observed", "clean"]
Change = Literal["regression", "improvement", "no change", "added", "removed", "not measured"]


@dataclass(frozen=True)
class Rate:
    """A failure rate in % with its 95 % interval."""

    failure: float
    low: float
    high: float

    @classmethod
    def of(cls, d: Mapping[str, Any] | None) -> Rate | None:
        """From a report's `{failure, low, high}` (None, or a null failure: not measured)."""
        if not d or d.get("failure") is None:
            return None
        return cls(float(d["failure"]), float(d["low"]), float(d["high"]))

    def text(self) -> str:
        return f"{self.failure:.1f} [{self.low:.1f}, {self.high:.1f}]"


def change_of(old: Rate | None, new: Rate | None) -> Change:
    """regression / improvement when the intervals separate; no change when they overlap."""
    if old is None and new is None:
        return "not measured"
    if old is None:
        return "added"
    if new is None:
        return "removed"
    if new.high < old.low:
        return "regression"
    if new.low > old.high:
        return "improvement"
    return "no change"


def load_report(path: str | Path, what: str = "report") -> dict[str, Any]:
    """A `report.json` of `rnd audit`, checked: one-line InputError for a missing or unreadable file,
    text that is not JSON, or a JSON of another schema."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{what} {p} is not a file; give the report.json an audit wrote")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{what} {p} is not text; give the report.json an audit wrote") from None
    except json.JSONDecodeError as exc:
        raise InputError(
            f"{what} {p} is not valid JSON (line {exc.lineno}): is it a damaged report?"
        ) from None
    schema = data.get("schema") if isinstance(data, dict) else None
    if schema not in SCHEMAS:
        found = "no schema" if schema is None else f"schema {schema!r}"
        raise InputError(f"{what} {p} has {found}, not an rnd audit report ({', '.join(SCHEMAS)})")
    for key in ("request", "verdict", "cells", "defense", "progress"):
        if key not in data:
            raise InputError(f"{what} {p} lacks {key!r}: it is not a whole rnd audit report")
    return data


def overall(report: Mapping[str, Any], by: Judgement = "vote") -> tuple[str, dict[str, Any]] | None:
    """(threat family, its worst case) of the family whose worst case fails least: the audit's
    overall verdict. None when no attack has finished against the defense."""
    worst = [(t, v[WORST_FIELD[by]]) for t, v in report["verdict"].items() if v.get(WORST_FIELD[by])]
    worst = [(t, w) for t, w in worst if w.get("failure") is not None]
    if not worst:
        return None
    return min(worst, key=lambda tw: (tw[1]["failure"], tw[0]))


@dataclass(frozen=True)
class GateResult:
    """`--fail-under`: the overall verdict against the threshold, and the exit status it gives."""

    threshold: float
    by: str
    threat: str | None
    attack: str | None
    verdict: Rate | None
    complete: bool
    outcome: Literal["pass", "inconclusive", "below", "undecided"]

    @property
    def exit_code(self) -> int:
        return {"below": EXIT_FAIL, "undecided": EXIT_UNDECIDED}.get(self.outcome, EXIT_PASS)

    def line(self) -> str:
        """The one line the command prints."""
        head = f"gate --fail-under {self.threshold:g}: "
        if self.verdict is None:
            return head + "undecided, no attack has finished against the defense (exit 3)"
        v = f"worst case {self.verdict.text()} % failure (by {self.by}) from {self.threat} {self.attack}"
        return (
            head
            + {
                "pass": f"pass, {v}",
                "inconclusive": f"pass, inconclusive: {v}; the interval reaches {self.threshold:g}, "
                "more images would decide",
                "below": f"FAIL, {v}: below {self.threshold:g} at 95 % (exit 1)",
                "undecided": f"undecided, {v} so far; the audit is partial and may still fall (exit 3)",
            }[self.outcome]
        )


def check_threshold(threshold: float) -> float:
    """A threshold in [0, 100] (a failure rate in %), else a one-line InputError."""
    if not (isinstance(threshold, int | float) and math.isfinite(threshold) and 0 <= threshold <= 100):
        raise InputError(f"--fail-under {threshold} is outside [0, 100]: give a failure rate in %")
    return float(threshold)


def gate(report: Mapping[str, Any], threshold: float, by: Judgement = "vote") -> GateResult:
    """The overall verdict of `report` against `threshold` (see the module docstring)."""
    threshold = check_threshold(threshold)
    complete = bool(report["progress"]["complete"])
    found = overall(report, by)
    if found is None:
        return GateResult(threshold, by, None, None, None, complete, "undecided")
    threat, w = found
    rate = Rate.of(w)
    assert rate is not None
    if rate.high < threshold:
        outcome = "below"
    elif not complete:
        outcome = "undecided"
    else:
        outcome = "inconclusive" if rate.failure < threshold else "pass"
    return GateResult(threshold, by, threat, w["attack"], rate, complete, outcome)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Row:
    """One line of a diff: an attack setting (or a family's worst case) in the old and new report."""

    threat: str
    attack: str
    old: Rate | None
    new: Rate | None
    change: Change
    old_attack: str | None = None  # worst-case lines: which attack it was in each report
    new_attack: str | None = None

    @property
    def delta(self) -> float | None:
        return None if self.old is None or self.new is None else self.new.failure - self.old.failure


@dataclass(frozen=True)
class AuditDiff:
    """What changed between two audit reports (`diff_reports`)."""

    old: str
    new: str
    by: str
    worst: list[Row]
    attacks: list[Row]
    mismatches: list[str] = field(default_factory=list)

    @property
    def regressions(self) -> list[Row]:
        return [r for r in [*self.worst, *self.attacks] if r.change == "regression"]

    @property
    def exit_code(self) -> int:
        return EXIT_FAIL if self.regressions else EXIT_PASS

    def to_dict(self) -> dict[str, Any]:
        """Plain data (`--json`), with the exit status."""
        return {**asdict(self), "regressions": len(self.regressions), "exit_code": self.exit_code}

    def render(self) -> str:
        """The text the command prints: worst cases, then every attack, then the count."""

        def cells(r: Row) -> list[str]:
            d = r.delta
            return [
                r.threat,
                r.attack,
                "-" if r.old is None else r.old.text(),
                "-" if r.new is None else r.new.text(),
                "" if d is None else f"{d:+.1f}",
                r.change,
            ]

        head = ["threat", "", "old failure %", "new failure %", "change", ""]
        worst = [
            [*cells(r)[:1], f"worst: {r.old_attack or '-'} -> {r.new_attack or '-'}", *cells(r)[2:]]
            for r in self.worst
        ]
        counts = {c: sum(r.change == c for r in self.attacks) for c in ("regression", "improvement")}
        lines = [
            f"audit diff, judged by {self.by} (95 % intervals; a change is a separation of them)",
            f"  old: {self.old}",
            f"  new: {self.new}",
        ]
        lines += [f"  warning: {m} (--allow-mismatch)" for m in self.mismatches]
        lines += ["", render_table(head, worst), "", render_table(head, [cells(r) for r in self.attacks]), ""]
        w = sum(r.change == "regression" for r in self.worst)
        lines.append(
            f"{counts['regression']} attack regression(s), {counts['improvement']} improvement(s) of "
            f"{len(self.attacks)} attack settings; {w} worst-case regression(s)"
            + ("; exit 1" if self.regressions else "")
        )
        return "\n".join(lines)


def describe(report: Mapping[str, Any], path: str | Path) -> str:
    """One line naming a report: file, model, defense, images, budget, completeness."""
    req = report["request"]
    size = req.get("size", {})
    model = report.get("model", {})
    who = model.get("url") or (model.get("checkpoint_sha256") or "?")[:12]
    part = "" if report["progress"].get("complete") else ", partial"
    return (
        f"{path} ({who} behind {report['defense']}, {size.get('images')} images, "
        f"{size.get('budget'):,} queries, threat {req.get('threat')}{part})"
    )


def mismatches(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """How the two audits' questions differ: threat model, images, budget (the things that make
    their failure rates incomparable). The model and the defense may differ: that is what a diff
    is for."""
    o, n = old["request"], new["request"]
    os_, ns = o.get("size", {}), n.get("size", {})
    out = []
    if o.get("threat") != n.get("threat"):
        out.append(f"threat models differ ({o.get('threat')} vs {n.get('threat')})")
    for what, a, b in (
        ("images", os_.get("images"), ns.get("images")),
        ("data sets", o.get("dataset"), n.get("dataset")),
        ("image seeds", o.get("seed"), n.get("seed")),
    ):
        if a != b:
            out.append(f"{what} differ ({a} vs {b})")
    if os_.get("budget") != ns.get("budget"):
        out.append(f"query budgets differ ({os_.get('budget')} vs {ns.get('budget')})")
    if old.get("schema") != new.get("schema"):
        out.append(f"schemas differ ({old.get('schema')} vs {new.get('schema')})")
    return out


def _attack_rates(report: Mapping[str, Any], by: Judgement) -> dict[tuple[str, str], Rate | None]:
    """(threat, attack label) -> its rate against the audited defense."""
    mine = report["cells"].get(report["defense"], {})
    return {(t, a["attack"]): Rate.of(a.get(by)) for t, e in mine.items() for a in e["attacks"]}


def diff_reports(
    old: Mapping[str, Any],
    new: Mapping[str, Any],
    *,
    by: Judgement = "vote",
    allow_mismatch: bool = False,
    names: tuple[str, str] = ("OLD", "NEW"),
) -> AuditDiff:
    """Attack by attack and worst case by worst case, what changed from `old` to `new` (reports as
    `load_report` gives them), against each report's own audited defense. Refuses (InputError)
    reports whose threat models, images or budgets differ unless `allow_mismatch`."""
    found = mismatches(old, new)
    if found and not allow_mismatch:
        raise InputError(
            f"the reports answer different questions: {found[0]}; pass --allow-mismatch to diff anyway"
        )
    worst = []
    for t in sorted(set(old["verdict"]) | set(new["verdict"])):
        ow = (old["verdict"].get(t) or {}).get(WORST_FIELD[by])
        nw = (new["verdict"].get(t) or {}).get(WORST_FIELD[by])
        o, n = Rate.of(ow), Rate.of(nw)
        worst.append(Row(t, "worst", o, n, change_of(o, n), ow and ow["attack"], nw and nw["attack"]))
    oall, nall = overall(old, by), overall(new, by)
    if len(worst) > 1:
        o, n = (None if x is None else Rate.of(x[1]) for x in (oall, nall))
        worst.append(
            Row(
                "overall",
                "worst",
                o,
                n,
                change_of(o, n),
                None if oall is None else f"{oall[0]} {oall[1]['attack']}",
                None if nall is None else f"{nall[0]} {nall[1]['attack']}",
            )
        )
    orates, nrates = _attack_rates(old, by), _attack_rates(new, by)
    attacks = [
        Row(t, a, orates.get((t, a)), nrates.get((t, a)), change_of(orates.get((t, a)), nrates.get((t, a))))
        for t, a in sorted(set(orates) | set(nrates))
    ]
    return AuditDiff(describe(old, names[0]), describe(new, names[1]), by, worst, attacks, found)
