"""Results pages rendered from committed records, never typed by hand.

A record is `docs/results/records/NAME.json`: its provenance (date, commit, checkpoint sha256,
machine, command) and where its numbers are: an audit's `report.json` (schema `rnd-audit/1`,
written by `rnd audit`), a sweep's SQLite results store, or rows written by a bench script
(`bench/attack_throughput.py --json`). The directive

    ```{rnd-results} NAME
    :view: provenance | verdict | cells | strength | labels | grid | rivals | throughput | memory | floor
          | profile | transfer | oars | surrogate | keystore | attacks
    ```

reads the record (and what it points to) at build time and renders a table, so a figure on a
results page is always the record's, and every page names where and on what it was measured.
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from docutils import nodes
from docutils.parsers.rst import directives
from sphinx.util.docutils import SphinxDirective

from rnd.defenses import DEFENSES, DefenseSpec
from rnd.evaluation.cells import CellRecord
from rnd.evaluation.store import ResultsStore

DOCS = Path(__file__).resolve().parent.parent
RECORDS = DOCS / "results" / "records"
ROOT = DOCS.parent
#: Every record names these (tests/test_docs.py holds the committed records to it).
PROVENANCE = ("date", "commit", "checkpoint_sha256", "machine", "command")


def load_record(name: str) -> dict[str, Any]:
    record = json.loads((RECORDS / f"{name}.json").read_text())
    missing = [k for k in PROVENANCE if not record.get(k)]
    if missing:
        raise ValueError(f"results record {name}: no {', '.join(missing)}")
    return record


def source(record: dict[str, Any], key: str) -> Path:
    """A file the record points to: relative to the records folder, else to the repository."""
    rel = record[key]
    here = RECORDS / rel
    return here if here.exists() else ROOT / rel


def pct(r: dict[str, Any] | None) -> str:
    """`67.4 [63.2, 71.4]`: a failure rate with its 95 % Wilson interval."""
    if r is None:
        return "n/a"
    return f"{r['failure']:.1f} [{r['low']:.1f}, {r['high']:.1f}]"


def num(v: float | None, digits: int = 0) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:,.{digits}f}"


def table(head: list[str], rows: Iterable[list[str]]) -> nodes.table:
    """A docutils table with one header row."""
    rows = list(rows)
    tab = nodes.table(classes=["rnd-results"])
    group = nodes.tgroup(cols=len(head))
    tab += group
    for _ in head:
        group += nodes.colspec(colwidth=1)
    thead, tbody = nodes.thead(), nodes.tbody()
    group += thead
    group += tbody
    for target, cells in ((thead, [head]), (tbody, rows)):
        for cells_of_row in cells:
            row = nodes.row()
            for text in cells_of_row:
                entry = nodes.entry()
                entry += nodes.paragraph(text=str(text))
                row += entry
            target += row
    return tab


def provenance(record: dict[str, Any]) -> list[nodes.Node]:
    """Where, when and on what the record's numbers were measured."""
    items = [
        ("Measured", record["date"]),
        ("Commit", record["commit"]),
        ("Checkpoint sha256", record["checkpoint_sha256"]),
        ("Machine", record["machine"]),
        ("Command", record["command"]),
    ]
    if record.get("images"):
        items.insert(3, ("Images", record["images"]))
    fields = nodes.field_list()
    for name, value in items:
        field = nodes.field()
        field += nodes.field_name(text=name)
        body = nodes.field_body()
        body += nodes.paragraph("", "", nodes.literal(text=str(value)))
        field += body
        fields += field
    return [fields]


# -- audits (report.json, schema rnd-audit/1) ------------------------------------------------------


def audit_report(record: dict[str, Any]) -> dict[str, Any]:
    report = json.loads(source(record, "report").read_text())
    if report.get("schema") != "rnd-audit/1":
        raise ValueError(f"{record['report']}: not an rnd audit report")
    return report


def verdict(report: dict[str, Any]) -> nodes.table:
    head = [
        "threat model",
        "worst case, vote [95 %]",
        "by",
        "worst observed",
        "worst clean",
        "undefended worst, vote",
    ]
    rows = []
    for threat, v in sorted(report["verdict"].items(), reverse=True):
        worst, und = v["worst"], v["undefended_worst"]
        rows.append(
            [
                f"{threat} ({v['attacks']} attacks)",
                pct(worst),
                worst["attack"] if worst else "n/a",
                pct(v["worst_observed"]),
                pct(v["worst_clean"]),
                f"{pct(und)} ({und['attack']})" if und else "n/a",
            ]
        )
    return table(head, rows)


def audit_cells(report: dict[str, Any], defense: str, threats: Iterable[str]) -> list[dict[str, Any]]:
    cells = report["cells"].get(defense, {})
    return [a for t in threats for a in cells.get(t, {}).get("attacks", [])]


def cells_table(attacks: list[dict[str, Any]]) -> nodes.table:
    head = ["attack", "observed", "vote [95 %]", "clean [95 %]", "mean queries"]
    rows = [
        [
            a["attack"],
            f"{a['observed']['failure']:.1f}",
            pct(a["vote"]),
            pct(a["clean"]),
            num(a["mean_queries"]),
        ]
        for a in sorted(attacks, key=lambda a: (a["vote"]["failure"], a["attack"]))
    ]
    return table(head, rows)


def strength_table(attacks: list[dict[str, Any]]) -> nodes.table:
    """Undefended cells: the three judgements agree on a deterministic model, so one column."""
    head = ["attack", "failure % [95 %]", "mean queries of successes", "images", "budget"]
    rows = [
        [a["attack"], pct(a["clean"]), num(a["mean_queries"]), str(a["images"]), f"{a['queries_budget']:,}"]
        for a in sorted(attacks, key=lambda a: (a["clean"]["failure"], a["attack"]))
    ]
    return table(head, rows)


def grid_table(report: dict[str, Any]) -> nodes.table:
    g = report["mu_nu"]
    head = ["mu \\ nu", *[f"{n:g}" for n in g["nu"]]]
    rows = []
    for i, mu in enumerate(g["mu"]):
        judged = zip(g["observed"][i], g["vote"][i], g["clean"][i], strict=True)
        rows.append([f"{mu:g}"] + [f"{o:.0f} / {v:.0f} / {c:.0f}" for o, v, c in judged])
    return table(head, rows)


# -- sweeps (a results store) ----------------------------------------------------------------------


def sweep_rows(record: dict[str, Any]) -> list[CellRecord]:
    with ResultsStore(source(record, "store"), readonly=True) as store:
        return store.records()


def _variant(r: CellRecord) -> str:
    """An attack setting in words: name, norm, M, and the parameters it was given."""
    c = r.cell
    parts = [c.attack, c.norm] + ([f"M={c.eot}"] if c.eot > 1 else [])
    return " ".join(parts + [f"{k}={v}" for k, v in sorted(c.attack_params.items())])


def stateful(spec: str) -> bool:
    """Whether the defense of a spec keeps state between queries (only those detect)."""
    return DEFENSES[DefenseSpec.parse(spec).name].stateful


def rivals_table(rows: list[CellRecord]) -> nodes.table:
    head = [
        "model",
        "defense",
        "clean acc %",
        "attack",
        "observed",
        "vote",
        "clean",
        "mean queries",
        "detected %",
    ]
    body = [
        [
            r.cell.model,
            r.cell.defense,
            num(r.summary.clean_accuracy, 2),
            _variant(r),
            num(r.summary.failure_rate),
            num(r.summary.failure_rate_vote),
            num(r.summary.failure_rate_clean),
            num(r.summary.mean_queries),
            num(r.summary.detection_rate) if stateful(r.cell.defense) else "-",
        ]
        for r in sorted(rows, key=lambda r: (r.cell.model != "standard", r.cell.defense, _variant(r)))
    ]
    return table(head, body)


def worst_case_table(rows: list[CellRecord]) -> nodes.table:
    """Per (model, defense): the lowest clean-judged failure over every attack run against it."""
    best: dict[tuple[str, str], CellRecord] = {}
    for r in rows:
        clean = r.summary.failure_rate_clean
        if clean is None or math.isnan(clean):
            continue
        k = (r.cell.model, r.cell.defense)
        if k not in best or clean < best[k].summary.failure_rate_clean:
            best[k] = r
    head = ["model", "defense", "clean acc %", "worst case, clean", "by", "attacks run"]
    count = Counter((r.cell.model, r.cell.defense) for r in rows)
    body = [
        [m, d, num(s.clean_accuracy, 2), num(s.failure_rate_clean), _variant(r), str(count[(m, d)])]
        for (m, d), r in sorted(best.items(), key=lambda kv: -kv[1].summary.failure_rate_clean)
        for s in [r.summary]
    ]
    return table(head, body)


# -- bench rows ------------------------------------------------------------------------------------


def throughput_table(record: dict[str, Any]) -> nodes.table:
    head = ["attack", "feedback", "defense", "attack img/s", "raw img/s", "ratio", "bar", "in model"]
    body = []
    for r in record["rows"]:
        bar = 0.95 if r["feedback"] == "scores" else 0.90
        body.append(
            [
                r["attack"],
                r["feedback"],
                r["defense"],
                num(r["attack_images_per_s"]),
                num(r["raw_images_per_s"]),
                f"{r['ratio']:.2f}",
                f"{bar:.2f} {'met' if r['ratio'] >= bar else 'not met'}",
                f"{r['in_model']:.2f}",
            ]
        )
    return table(head, body)


def memory_table(record: dict[str, Any]) -> nodes.table:
    """Peak RSS of audit cells (bench/memory_peak.py): per run, the code it ran and where it peaked."""
    head = ["code", "attack", "M", "images", "budget", "peak RSS GB", "wall s", "peak reached in"]
    body = [
        [
            f"{r['when']} ({r['commit']})",
            f"{r['attack']} {r['norm']} nu={r['nu']:g}",
            str(r["eot"]),
            str(r["images"]),
            num(r["budget"]),
            f"{r['peak_rss_gb']:.2f}",
            num(r["wall_s"]),
            r["at"][-1] if r["at"] else "",
        ]
        for r in record["rows"]
    ]
    return table(head, body)


def floor_tables(record: dict[str, Any]) -> list[nodes.table]:
    """The per-step floor (bench/step_floor.py): the loops' step times and ratios, where the null
    attack's iteration goes, small pieces hot and right after a forward, and the audit's floor."""
    steps = table(
        ["loop", "ms per step", "outside the model, ms", "ratio"],
        [
            [r["loop"], f"{r['ms_per_step']:.2f}", f"{r['outside_model_ms']:.2f}", f"{r['ratio']:.3f}"]
            for r in record["steps"]
        ],
    )
    gaps = [g for g in record["timeline_us"] if not g["between"].startswith("model in")]
    timeline = table(["between", "µs (median)"], [[g["between"], f"{g['us']:.0f}"] for g in gaps[:12]])
    pieces = table(
        ["piece", "hot µs", "after a forward µs"],
        [[r["piece"], f"{r['hot']:.1f}", f"{r['after_forward']:.1f}"] for r in record["pieces_us"]],
    )
    out = [steps, timeline, pieces]
    floor = record.get("audit_floor")
    if floor:
        out.append(
            table(
                [
                    "cells",
                    "attack queries",
                    "raw images/s (RND nu)",
                    "forwards alone, 1 / 2 cells at once",
                    "stored cell wall time",
                ],
                [
                    [
                        str(floor["cells"]),
                        num(floor["queries"]),
                        f"{num(floor['raw_images_per_s'])} ({floor['nu']:g})",
                        f"{floor['forward_hours_1_cell_at_once']:.2f} h / "
                        f"{floor['forward_hours_2_cells_at_once']:.2f} h",
                        f"{floor['cell_wall_hours']:.2f} h",
                    ]
                ],
            )
        )
    return out


def transfer_table(record: dict[str, Any]) -> nodes.table:
    """rnd's transfer attacks beside the reference's, judged on the clean target, and rnd's through
    RND (the one observed answer) at each level the record measured."""
    levels = sorted(k for k in record["rows"][0] if k.startswith("rnd_observed_nu"))
    head = ["attack", "rnd (clean)", "torchattacks (clean)"]
    head += [f"rnd through RND nu={k.removeprefix('rnd_observed_nu')} (observed)" for k in levels]
    body = [
        [f"{r['attack']} {r['norm']} eps={r['eps']:g}", pct(r["rnd_clean"]), pct(r["torchattacks_clean"])]
        + [pct(r[k]) for k in levels]
        for r in record["rows"]
    ]
    return table(head, body)


def oars_table(record: dict[str, Any]) -> nodes.table:
    """Counters to a stateful detector (bench/oars_blacklight.py): per attack, defense and variant,
    failure as observed and on the clean model, and the share of queries the detector refused."""
    head = ["attack", "defense", "variant", "observed", "clean", "refused %", "mean queries"]
    body = [
        [
            f"{r['attack']} {r['norm']} eps={r['eps']:g}",
            r["defense"],
            r["variant"],
            pct(r["observed"]),
            pct(r["clean"]),
            f"{100 * r['detection']:.1f}",
            num(r["mean_queries"]),
        ]
        for r in record["rows"]
    ]
    return table(head, body)


def surrogate_table(record: dict[str, Any], defense: str) -> nodes.table:
    """The surrogate family's finished cells against `defense` (bench/surrogate_record.py): each
    judged three ways, with mean and median queries per success."""
    head = [
        "attack (on: the attacker's models)",
        "observed",
        "vote",
        "clean",
        "mean queries",
        "median queries",
    ]
    body = [
        [
            r["attack"],
            pct(r["observed"]),
            pct(r["vote"]),
            pct(r["clean"]),
            num(r["mean_queries"], 1),
            num(r["median_queries"]),
        ]
        for r in record["cells"].get(defense, [])
    ]
    return table(head, body)


def profile_table(record: dict[str, Any]) -> nodes.table:
    """Where each attack's time goes (bench/attack_profile.py): its largest parts by sampled share."""
    return table(
        ["attack", "part", "share of samples"],
        ([r["attack"], r["part"], f"{r['share']:.3f}"] for r in record["rows"]),
    )


def keystore_tables(record: dict[str, Any]) -> list[nodes.table]:
    """The key stores' charges/s and the server's images/s with each (bench/key_store.py)."""
    charges = table(
        ["store", "clients", "keys", "charges/s", "median charge (ms)"],
        (
            [r["store"], str(r["clients"]), r["keys"], f"{r['charges_per_s']:,.0f}", f"{r['p50_ms']:.3f}"]
            for r in record["charges"]
        ),
    )
    server = table(
        ["key store", "clients", "images/s", "p50 (ms)", "p99 (ms)"],
        (
            [
                r["keys"],
                str(r["clients"]),
                f"{r['images_per_s']:,.0f}",
                f"{r['p50_ms']:.1f}",
                f"{r['p99_ms']:.1f}",
            ]
            for r in record["server"]
        ),
    )
    return [charges, server]


def attacks_table(record: dict[str, Any]) -> nodes.table:
    """The server attacked before and after its hardening (bench/server_attacks.py)."""
    rows = []
    for name, sides in record["attacks"].items():
        for side in ("before", "after"):
            r = sides[side]
            answer = r.get("answer", r.get("answers", "-"))
            rows.append(
                [
                    name,
                    side,
                    str(answer),
                    f"{r['server_cpu_s']:.2f}",
                    f"{r['server_peak_rss_mb']:.0f}",
                    f"{r['good_requests'] - r['good_failed']} / {r['good_requests']}",
                    f"{r['good_p50_ms']:.0f}",
                    f"{r['good_max_ms']:.0f}",
                    str(r["server_log_errors"]),
                ]
            )
    return table(
        ["attack", "code", "attacker's answer", "server CPU (s)", "server peak RSS (MB)",
         "good answered", "good p50 (ms)", "good worst (ms)", "log errors"],
        rows,
    )  # fmt: skip


VIEWS = (
    "provenance",
    "verdict",
    "cells",
    "strength",
    "labels",
    "grid",
    "rivals",
    "worst",
    "throughput",
    "memory",
    "floor",
    "profile",
    "transfer",
    "oars",
    "surrogate",
    "keystore",
    "attacks",
)


class ResultsDirective(SphinxDirective):
    """```{rnd-results} RECORD``` with `:view:` (see the module docstring)."""

    required_arguments = 1
    option_spec = {"view": lambda v: directives.choice(v, VIEWS), "defense": directives.unchanged}

    def run(self) -> list[nodes.Node]:
        name = self.arguments[0]
        self.env.note_dependency(str(RECORDS / f"{name}.json"))
        record = load_record(name)
        for key in ("report", "store"):
            if key in record:
                self.env.note_dependency(str(source(record, key)))
        view = self.options.get("view", "provenance")
        if view == "provenance":
            return provenance(record)
        if view == "throughput":
            return [throughput_table(record)]
        if view == "memory":
            return [memory_table(record)]
        if view == "floor":
            return list(floor_tables(record))
        if view == "profile":
            return [profile_table(record)]
        if view == "transfer":
            return [transfer_table(record)]
        if view == "oars":
            return [oars_table(record)]
        if view == "keystore":
            return keystore_tables(record)
        if view == "attacks":
            return [attacks_table(record)]
        if view == "surrogate":
            return [surrogate_table(record, self.options.get("defense", "none"))]
        if view in ("rivals", "worst"):
            rows = sweep_rows(record)
            return [rivals_table(rows) if view == "rivals" else worst_case_table(rows)]
        report = audit_report(record)
        if view == "verdict":
            return [verdict(report)]
        if view == "grid":
            return [grid_table(report)]
        defense = self.options.get("defense", report["defense"])
        if view == "strength":
            return [strength_table(audit_cells(report, "none", ["scores"]))]
        if view == "labels":
            return [cells_table(audit_cells(report, defense, ["labels"]))]
        return [cells_table(audit_cells(report, defense, list(report["verdict"])))]


def setup(app: Any) -> dict[str, Any]:
    app.add_directive("rnd-results", ResultsDirective)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
