"""The audit's `report.html`: one self-contained page (figures embedded as PNG data URIs, inline
CSS, no script, no request leaves the machine) drawn from the report dict of `rnd.audit.verdict.build_report`.

Sections: the verdict per threat model (worst case over attacks, by vote, with its 95 % interval
and cell key), the clean accuracy against the defense's strength (the calibration), failure rate
against queries for each attack, the mu x strength picture of the strongest score attack, and every
attack's three failure rates with intervals and cell keys.
"""

from __future__ import annotations

import base64
import html
import io
import math
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from rnd.evaluation.cells import JUDGEMENTS
from rnd.report.plots import Heatmap, plot_heatmap
from rnd.report.tables import render_table

CSS = """
body { font: 15px/1.45 system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { font-size: 1.6em; } h2 { font-size: 1.25em; margin-top: 1.8em; border-bottom: 1px solid #ccc; }
table { border-collapse: collapse; margin: .6em 0; } td, th { padding: .25em .7em; border: 1px solid #ddd; }
th { background: #f3f3f3; text-align: left; } td.n { text-align: right; font-variant-numeric: tabular-nums; }
.verdict td.big { font-size: 1.35em; font-weight: 600; } code { font-size: .9em; color: #555; }
.note { color: #555; } img { max-width: 100%; }
.partial { background: #fff4d6; border: 1px solid #e0b84c; padding: .5em .8em; }
"""


def _pct(v: float | None, digits: int = 1) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _rate(r: dict[str, Any] | None) -> str:
    if r is None or r.get("failure") is None or math.isnan(r["failure"]):
        return "n/a"
    return f"{r['failure']:.1f} % [{r['low']:.1f}, {r['high']:.1f}]"


def _key(k: str | None) -> str:
    return "" if not k else f"<code title='{html.escape(k)}'>{html.escape(k[:12])}</code>"


def _png(fig: Figure) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def curve_figure(report: dict[str, Any], threat: str) -> str | None:
    """Failure % (observed) against queries: each attack against the defense, solid; undefended, dotted."""
    defense = report["defense"]
    entry = report["cells"].get(defense, {}).get(threat)
    if not entry:
        return None
    fig = Figure(figsize=(9, 4.4))
    ax = fig.subplots()
    for a in entry["attacks"]:
        q = [p[0] for p in a["curve"]]
        ax.plot(q, [p[1] for p in a["curve"]], "-", marker=".", label=a["attack"])
    base = report["cells"].get("none", {}).get(threat)
    for a in base["attacks"] if base and defense != "none" else []:
        ax.plot([p[0] for p in a["curve"]], [p[1] for p in a["curve"]], ":", color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_ylim(-2, 102)
    ax.set_xlabel("queries per image")
    ax.set_ylabel("failure % (attacker's observation)")
    ax.set_title(f"{threat}-based attacks against {defense} (dotted grey: undefended)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=1 + len(entry["attacks"]) // 22)
    fig.tight_layout()
    return _png(fig)


def accuracy_figure(report: dict[str, Any]) -> str | None:
    """Clean accuracy under the defense against its strength (the calibration's measurements)."""
    cal = report.get("calibration")
    if not cal or not cal.get("tried"):
        return None
    fig = Figure(figsize=(5.5, 3.6))
    ax = fig.subplots()
    pts = [(0.0, cal["clean_accuracy"])] + [(t["value"], t["accuracy"]) for t in cal["tried"]]
    ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-")
    ax.axhline(cal["clean_accuracy"] - cal["max_drop"], color="red", ls=":", lw=0.9, label="budget")
    ax.axvline(cal["value"], color="green", ls="--", lw=0.9, label=f"chosen {cal['param']}={cal['value']:g}")
    ax.set_xlabel(f"{cal['defense']} {cal['param']}")
    ax.set_ylabel("clean accuracy % under the defense")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _png(fig)


def mu_nu_figure(report: dict[str, Any]) -> str | None:
    """The mu x strength heatmaps of the strongest score attack, drawn as `rnd report` draws them."""
    g = report.get("mu_nu")
    if not g:
        return None
    rates = {
        col: [[math.nan if v is None else v for v in row] for row in g[k]] for k, col in JUDGEMENTS.items()
    }
    buf = io.BytesIO()
    param = g.get("param", "nu")
    title = f"mu x {param}: {g['attack']} ({g['images']} images)"
    plot_heatmap(Heatmap(title, g["mu"], g["nu"], rates, strength=param), buf)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode()


def render(report: dict[str, Any]) -> str:
    """The page's HTML text."""
    e = html.escape
    req = report["request"]
    model = report["model"]
    who = model.get("url") or f"{model.get('label')} (sha256 {str(model.get('checkpoint_sha256'))[:12]})"
    acc = report["clean_accuracy"]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<title>rnd audit: {e(str(who))}</title><style>{CSS}</style></head><body>",
        f"<h1>rnd audit: {e(str(who))} behind {e(report['defense'])}</h1>",
        f"<p>Threat model {e(req['threat'])}; {req['size']['images']} correctly classified test images "
        f"per attack, {req['size']['budget']:,} queries each{' (quick)' if req['quick'] else ''}; "
        f"seed {req['seed']}. "
        f"Clean accuracy under the defense {_pct(acc['defended'], 2)} %, without it "
        f"{_pct(acc['undefended'], 2)} % ({acc['images']:,} test images).</p>",
    ]
    models = req.get("surrogates")
    if models:
        listed = ", ".join(f"{e(m['name'])} (sha256 {e(m['sha256'][:12])})" for m in models)
        parts.append(
            "<p>Surrogate family: the attacker's own models, trained without a query to the target: "
            f"{listed}. Transfer attacks run on each and on their logit ensemble; the hybrids on the "
            "ensemble. No query-side defense sees their crafting.</p>"
        )
    cal = report.get("calibration")
    if cal:
        parts.append(
            f"<p>Strength: {e(cal['param'])} = {cal['value']:g}, the largest whose clean-accuracy drop "
            f"stays within {cal['max_drop']:g} points ({100 * cal['confidence']:g} % one-sided bound, "
            f"{cal['draws']} noise draws on {cal['images']:,} images): <b>{e(str(cal['spec']))}</b>.</p>"
        )
    if report["not_measured"]:
        parts.append(
            "<p class='note'>Not measurable from outside the endpoint, so not reported: "
            + e(", ".join(report["not_measured"])) + ".</p>"
        )  # fmt: skip
    prog = report["progress"]
    if not prog["complete"]:
        grid = (
            ""
            if prog["grid_cells"] is None
            else f" and {prog['grid_done']} of {prog['grid_cells']} grid cells"
        )
        parts.append(
            f"<p class='partial'><b>Partial report:</b> {prog['done']} of {prog['cells']} cells done{grid}. "
            "A worst case over the attacks run so far can only fall as more attacks finish: the "
            "headline below is an upper bound of the final one.</p>"
        )
    parts += [
        "<h2>Verdict</h2>",
        "<p class='note'>Failure rate = attacked images the attack did not fool, in %, with its 95 % Wilson "
        "interval. Headline: the worst case over every attack run, judged by a vote of fresh answers of the "
        "defended model (what the deployment answers). Beside it: judged by the attacker's own "
        "observation, and by the clean model.</p>",
    ]
    rows = []
    for threat, v in report["verdict"].items():
        w = v["worst"] or {}
        pending = f" ({v['attacks_pending']} pending)" if v["attacks_pending"] else ""
        rows.append(
            [
                e(threat),
                _rate(v["worst"]),
                e(w.get("attack", "")),
                _key(w.get("cell_key")),
                _rate(v["worst_observed"]),
                _rate(v["worst_clean"]),
                _rate(v["undefended_worst"]),
                f"{v['attacks']}{pending}",
            ]
        )
    head = ["threat model", "worst case (vote)", "by", "cell", "worst observed", "worst clean"]
    head += ["undefended worst", "attacks run"]
    classes = ["", "big n", "", "", "n", "n", "n", "n"]
    parts.append(render_table(head, rows, "html", classes=classes, table_class="verdict"))
    fig = accuracy_figure(report)
    if fig:
        parts += [
            "<h2>Clean accuracy against the defense's strength</h2>",
            f"<img alt='accuracy' src='{fig}'>",
        ]
    for threat in report["verdict"]:
        fig = curve_figure(report, threat)
        if fig:
            parts += [
                f"<h2>Failure rate against queries: {e(threat)}</h2>",
                f"<img alt='curve {e(threat)}' src='{fig}'>",
            ]
    fig = mu_nu_figure(report)
    if fig:
        param = report["mu_nu"].get("param", "nu")
        parts += [
            f"<h2>mu x {e(param)} for the strongest score attack</h2>",
            "<p class='note'>Rows: the attacker's probe size mu; columns: the defense's "
            f"{e(param)} (0: undefended). Noise helps where it is large against mu.</p>",
            f"<img alt='mu x {e(param)}' src='{fig}'>",
        ]
    parts.append("<h2>Every attack</h2>")
    for defense, by_threat in report["cells"].items():
        for threat, entry in by_threat.items():
            parts += [
                f"<h3>{e(threat)}-based, against {e(defense)}</h3>",
            ]
            rows = [
                [
                    e(a["attack"]),
                    _rate(a["vote"]),
                    _rate(a["observed"]),
                    _rate(a["clean"]),
                    _pct(a["mean_queries"], 0),
                    _key(a["cell_key"]),
                ]
                for a in entry["attacks"]
            ]
            head = ["attack", "vote", "observed", "clean", "mean queries", "cell"]
            parts.append(render_table(head, rows, "html", classes=["", "n", "n", "n", "n", ""]))
    parts.append(
        f"<p class='note'>Every number comes from the results store {e(report['db'])}: a cell key names its "
        "row in <code>cells</code>, its images in <code>image_results</code>. Schema "
        f"{e(report['schema'])}.</p></body></html>"
    )
    return "\n".join(parts)


def write_html(report: dict[str, Any], path: Path) -> None:
    path.write_text(render(report), encoding="utf-8")
