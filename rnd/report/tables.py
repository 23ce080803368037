"""Tables: the one renderer (`render_table`: text for the terminal, markdown for the report, HTML
for the audit page) and the tables built on it: the attack table of `rnd attack` / `rnd demo`
(`format_table` of `AttackEvaluation` rows), and the report's main (pivot) and full tables.

May import: rnd.report.points, labels; rnd.evaluation (the row types).
"""

from __future__ import annotations

import dataclasses
import math
from collections import defaultdict
from collections.abc import Sequence
from typing import Any, Literal

from rnd.attacks import ATTACKS
from rnd.evaluation.execute import AttackEvaluation
from rnd.report.labels import ci, defense_label, fmt, row_defense, variant
from rnd.report.points import Point, mean

Style = Literal["text", "markdown", "html"]


def main_table(points: list[Point]) -> list[str]:
    """Markdown: one row per (model, defense), one column per attack setting (attack, norm, eps,
    and M, mu, parameters or target where they differ from the plain attack); cells of the pivot
    are "observed / vote / clean failure % (mean queries)", plus the % of images detected where a
    stateful defense refused queries. A mu grid of more than two values (a heatmap sweep) enters
    at the attack's default mu only (the full list follows)."""

    def default_mu(r: Point) -> float:
        cls = ATTACKS.get(r.attack)
        return cls.default_mu.get(r.norm, math.nan) if cls else math.nan

    mus: dict[tuple, set[float]] = defaultdict(set)
    for r in points:
        mus[(r.model, r.attack, r.norm, r.eps)].add(r.mu)
    chosen = [
        r
        for r in points
        if len(mus[(r.model, r.attack, r.norm, r.eps)]) <= 2 or math.isclose(r.mu, default_mu(r))
    ]
    col_of = {id(r): variant(r, default_mu(r)) for r in chosen}
    cols = sorted(set(col_of.values()))
    rows = sorted({(r.model, row_defense(r)) for r in chosen}, key=lambda md: (md[0], md[1] != "none", md[1]))
    at: dict[tuple, list[Point]] = defaultdict(list)
    for r in chosen:
        at[(r.model, row_defense(r), col_of[id(r)])].append(r)
    head = ["model", "defense", "clean acc %", *cols]
    lines = []
    for model, defense in rows:
        accs = [r.clean_accuracy for r in chosen if r.model == model and row_defense(r) == defense]
        line = [model, defense_label(defense), fmt(mean(accs))]
        for col in cols:
            rs = at.get((model, defense, col), [])
            if len(rs) != 1:
                line.append("" if not rs else "several")
                continue
            r = rs[0]
            det = r.detection_rate
            line.append(
                f"{ci(r, 'failure_rate', True)} / {ci(r, 'failure_rate_vote', True)} / "
                f"{ci(r, 'failure_rate_clean', True)} ({fmt(r.mean_queries, 0)})"
                + (f" det {fmt(det, 0)}%" if det is not None and not math.isnan(det) and det > 0 else "")
            )
        lines.append(line)
    return render_table(head, lines, "markdown").splitlines()


def full_table(points: list[Point]) -> list[str]:
    """Markdown: every point, one row each, every metric."""
    head = [
        "model",
        "defense",
        "attack",
        "norm",
        "eps",
        "mu",
        "M",
        "budget",
        "images",
        "seeds",
        "fail % obs",
        "fail % vote",
        "fail % clean",
        "mean q",
        "median q",
        "median dist",
        "clean acc %",
    ]
    lines = []
    for r in sorted(points, key=lambda r: (r.model, r.attack, r.norm, r.eps, r.eot, r.mu, r.defense)):
        vals = [
            r.model,
            row_defense(r),
            r.attack,
            r.norm,
            f"{r.eps:g}",
            f"{r.mu:g}",
            str(r.eot),
            str(r.budget),
            str(r.images),
            str(r.seeds),
            ci(r, "failure_rate"),
            ci(r, "failure_rate_vote"),
            ci(r, "failure_rate_clean"),
            fmt(r.mean_queries, 0),
            fmt(r.median_queries, 0),
            fmt(r.median_distance, 3),
            fmt(r.clean_accuracy),
        ]
        lines.append(vals)
    return render_table(head, lines, "markdown").splitlines()


def _cell(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def render_table(
    head: Sequence[str],
    rows: Sequence[Sequence[str]],
    style: Style = "text",
    *,
    classes: Sequence[str] | None = None,
    table_class: str | None = None,
) -> str:
    """The one table renderer. `text`: right-aligned columns under a rule (the terminal);
    `markdown`: `| a | b |` lines under `|---|` (the report); `html`: a `<table>` whose cells are
    HTML already, `classes` giving each column's class (the audit page)."""
    if style == "markdown":
        lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])
    if style == "html":
        cls = list(classes or [""] * len(head))
        attr = lambda c: f" class='{c}'" if c else ""  # noqa: E731
        out = [f"<table{attr(table_class or '')}><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"]
        out += [
            "<tr>" + "".join(f"<td{attr(c)}>{v}</td>" for v, c in zip(r, cls, strict=True)) + "</tr>"
            for r in rows
        ]
        return "".join(out) + "</table>"
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(head)]
    line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths, strict=True))  # noqa: E731
    return "\n".join([line(head), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])


def format_table(items: Sequence[Any], columns: Sequence[tuple[str, str]] | None = None) -> str:
    """Dataclasses or dicts as an aligned text table; `columns` = [(field, header), ...]."""
    rows = [dataclasses.asdict(i) if dataclasses.is_dataclass(i) else dict(i) for i in items]
    if columns is None:
        columns = [(k, k) for k in (rows[0] if rows else {})]
    return render_table([h for _, h in columns], [[_cell(r.get(k, "")) for k, _ in columns] for r in rows])


TABLE_COLUMNS = [
    ("attack", "attack"),
    ("norm", "norm"),
    ("defense", "defense"),
    ("clean_accuracy", "clean acc %"),
    ("images", "images"),
    ("failure_rate", "fail % (observed)"),
    ("failure_rate_vote", "fail % (vote)"),
    ("failure_rate_clean", "fail % (clean)"),
    ("mean_queries", "mean q"),
    ("median_queries", "median q"),
    ("median_distance", "median dist"),
]


def table_columns(rows: list[AttackEvaluation]) -> list[tuple[str, str]]:
    """TABLE_COLUMNS, without the distance column when no row has one (score attacks only), and
    with the detection column when some row was refused (a stateful defense)."""
    cols = TABLE_COLUMNS
    if all(math.isnan(r.median_distance) for r in rows):
        cols = [c for c in cols if c[0] != "median_distance"]
    if any(r.detection_rate > 0 for r in rows):
        cols = [*cols, ("detection_rate", "detected %")]
    return cols
