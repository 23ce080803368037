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

from rnd.audit.cost import human_time
from rnd.audit.preflight import Fingerprint
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
.reading { font-size: 1.1em; background: #f4f8ff; border-left: 4px solid #4a78c2; padding: .6em .9em; }
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


#: Curves per panel of the failure-against-queries figure (the strongest attacks; the undefended
#: worst case dotted makes the last).
MAX_CURVES = 8


def _norm_of(label: str) -> str:
    return label.split()[1] if len(label.split()) > 1 else ""


def curve_panels(
    report: dict[str, Any],
) -> list[tuple[str, str, list[dict[str, Any]], dict[str, Any] | None, int]]:
    """(family, norm, the strongest attacks' rows against the defense, the undefended worst row or
    None, how many attacks the panel leaves out) per panel, judged by vote as the headline is."""
    defense = report["defense"]
    out = []
    for threat in report["verdict"]:
        entry = report["cells"].get(defense, {}).get(threat)
        if not entry:
            continue
        base = report["cells"].get("none", {}).get(threat) if defense != "none" else None
        for norm in ("linf", "l2"):
            rows = [a for a in entry["attacks"] if _norm_of(a["attack"]) == norm]
            if not rows:
                continue
            rows.sort(key=lambda a: (a["vote"]["failure"], a["attack"]))
            plain = [a for a in (base or {}).get("attacks", []) if _norm_of(a["attack"]) == norm]
            undefended = min(plain, key=lambda a: (a["vote"]["failure"], a["attack"])) if plain else None
            keep = MAX_CURVES - (undefended is not None)
            out.append((threat, norm, rows[:keep], undefended, max(0, len(rows) - keep)))
    return out


def curve_figure(report: dict[str, Any]) -> str | None:
    """Failure % by vote against queries, small multiples: one panel per threat family and norm,
    each with its strongest attacks (at most `MAX_CURVES` curves, the undefended worst case dotted
    grey among them), and the per-image budget one API key buys for the audit's images when the
    report is priced (`cost`)."""
    panels = curve_panels(report)
    if not panels:
        return None
    cols = 2 if len(panels) > 1 else 1
    rows = (len(panels) + cols - 1) // cols
    fig = Figure(figsize=(11, 3.6 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    cost = report.get("cost")
    for ax, (threat, norm, attacks, undefended, left) in zip(axes.flat, panels, strict=False):
        for a in attacks:
            curve = a.get("curve_vote") or a["curve"]
            ax.plot([p[0] for p in curve], [p[1] for p in curve], "-", marker=".", label=a["attack"])
        if undefended is not None:
            curve = undefended.get("curve_vote") or undefended["curve"]
            ax.plot([p[0] for p in curve], [p[1] for p in curve], ":", color="grey", lw=1.2,
                    label=f"undefended: {undefended['attack']}")  # fmt: skip
        if cost and attacks:
            per_image = cost["quota"] / max(attacks[0]["images"], 1)
            if per_image <= attacks[0]["queries_budget"]:
                ax.axvline(per_image, color="red", ls="--", lw=0.9, label="one key's quota per image")
        ax.set_xscale("log")
        ax.set_ylim(-2, 102)
        ax.set_xlabel("queries per image")
        ax.set_ylabel("failure % (vote)")
        more = f"; {left} weaker not drawn" if left else ""
        ax.set_title(f"{threat}, {norm}: the strongest attacks{more}", fontsize=9)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=6, loc="lower left")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.tight_layout()
    return _png(fig)


def reading(report: dict[str, Any]) -> str:
    """One paragraph saying what the verdict means for this deployment (plain text)."""
    v = report["verdict"]
    worst = [(t, x["worst"]) for t, x in v.items() if x.get("worst")]
    if not worst:
        return "No attack has finished against the defense yet: there is no verdict to read."
    threat, w = min(worst, key=lambda tw: (tw[1]["failure"], tw[0]))
    n = report["request"]["size"]["images"]
    text = [
        f"Against the strongest attacker the audit knows, {w['failure']:.1f} % of {n} test images "
        f"(95 % interval {w['low']:.1f} to {w['high']:.1f}) keep their label as the deployment answers "
        f"(a vote of fresh answers); the rest are turned by {w['attack']} ({threat} family)."
    ]
    base = v[threat].get("undefended_worst")
    if base:
        text.append(f"Without the defense that attack family leaves {base['failure']:.1f} %.")
    others = {t: x["worst"]["failure"] for t, x in v.items() if x.get("worst") and t != threat}
    if others:
        text.append(
            "The other families do less: "
            + ", ".join(f"{t} {f:.1f} %" for t, f in sorted(others.items(), key=lambda tf: tf[1]))
            + "."
        )
    if "surrogate" in v and v["surrogate"].get("worst") and threat == "surrogate":
        text.append(
            "The worst attacker needs no query to craft: an adversarial example made on a model of "
            "their own passes the defense, which only sees the final query."
        )
    resub = (v[threat].get("resubmission") or {}).get("100")
    if resub and resub["failure"] < w["failure"] - 1:
        text.append(
            f"An attacker who may submit each point 100 times does better still: {resub['failure']:.1f} % "
            "stay correct."
        )
    jpeg = (v[threat].get("encoded") or {}).get("jpeg")
    if jpeg and jpeg["failure"] > w["failure"] + 1:
        text.append(
            f"If the deployment only takes JPEG files, the same points keep {jpeg['failure']:.1f} % correct "
            "after encoding; an attacker would adapt to that interface."
        )
    cost = (report.get("cost") or {}).get("families", {}).get(threat)
    if cost:
        days = "" if cost["days"] is None else f" and about {human_time(cost['days'])}"
        text.append(f"At the given key terms that takes {cost['keys']} key(s){days}.")
    text.append(
        "The figure is an upper bound on robustness: a stronger attack found later can only lower it."
    )
    return " ".join(text)


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


def deployment_section(report: dict[str, Any]) -> list[str]:
    """The verdict as the deployment meets it: the worst case when each final point is submitted
    k times (any wrong answer wins), and by vote after the PNG and JPEG round trips."""
    e = html.escape
    rows = []
    for threat, v in report["verdict"].items():
        resub, enc = v.get("resubmission") or {}, v.get("encoded") or {}
        cells = [resub.get(k) for k in ("1", "10", "100")] + [enc.get(c) for c in ("png", "jpeg")]
        if any(c is not None for c in cells):
            rows.append(
                [
                    e(threat),
                    *(f"{_rate(c)}<br><small>{e((c or {}).get('attack', ''))}</small>" for c in cells),
                ]
            )
    if not rows:
        return []
    head = ["threat model", "resubmitted once", "10 times", "100 times", "after PNG", "after JPEG"]
    return [
        "<h2>Resubmission and the input path</h2>",
        "<p class='note'>Worst case over the attacks (failure %, 95 % interval) when the attacker "
        "submits each final point k times and wins if any answer is wrong (from fresh answers drawn "
        "on each point: a random defense that errs sometimes errs for a patient attacker); and by vote "
        "after the point is encoded as an 8-bit PNG or a JPEG and decoded, as a deployment taking "
        "image files receives it.</p>",
        render_table(head, rows, "html", classes=["", *["n"] * 5]),
    ]


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
    ]
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
        f"<p class='reading'>{e(reading(report))}</p>",
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
    parts += deployment_section(report)
    parts += [
        "<h2>What was audited</h2>",
        f"<p>Threat model {e(req['threat'])}; {req['size']['images']} correctly classified test images "
        f"per attack, {req['size']['budget']:,} queries each{' (quick)' if req['quick'] else ''}; "
        f"seed {req['seed']}. "
        f"Clean accuracy under the defense {_pct(acc['defended'], 2)} %, without it "
        f"{_pct(acc['undefended'], 2)} % ({acc['images']:,} test images).</p>",
    ]
    pf = report.get("preflight")
    if pf:
        line = Fingerprint.from_dict(pf).line()
        used = ""
        if pf.get("traits"):
            t = pf["traits"]
            how = "random" if t["randomised"] else "deterministic"
            counters = f", with the counters of {t['counters']}" if t.get("counters") else ""
            used = f" The suite took the endpoint as {how}{counters} (from the {t['from']})."
        parts.append(f"<p>Target fingerprint: {e(line)}.{e(used)}</p>")
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
    cost = report.get("cost")
    if cost:
        rate = "" if cost["rate"] is None else f", {cost['rate']:g} queries/s"
        rows = [
            [
                e(t),
                e(c["attack"]),
                f"{c['fooled']} of {c['images']}",
                f"{c['queries_total']:,}",
                _pct(c["queries_per_success"], 0),
                str(c["keys"]),
                _pct(c["days"], 2),
            ]
            for t, c in cost["families"].items()
            if c
        ]
        parts += [
            f"<h3>Cost to the attacker: keys of {cost['quota']:,} queries{e(rate)} "
            f"({e(cost['source'])})</h3>",
            render_table(
                ["threat", "worst attack", "fooled (vote)", "queries", "per success", "keys", "days"],
                rows,
                "html",
                classes=["", "", "n", "n", "n", "n", "n"],
            ),
        ]
    fig = accuracy_figure(report)
    if fig:
        parts += [
            "<h2>Clean accuracy against the defense's strength</h2>",
            f"<img alt='accuracy' src='{fig}'>",
        ]
    fig = curve_figure(report)
    if fig:
        parts += [
            "<h2>Failure rate against queries</h2>",
            "<p class='note'>Judged by vote, as the headline is: an image counts as fooled from the "
            "query at which the attacker saw it fooled, if a vote of fresh answers on the final point "
            "agrees. One panel per threat family and norm, each with its strongest attacks; dotted "
            "grey: the undefended worst case.</p>",
            f"<img alt='failure against queries' src='{fig}'>",
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
                    *(_rate(a.get("resubmission", {}).get(k)) for k in ("10", "100")),
                    *(_rate(a.get("encoded", {}).get(c)) for c in ("png", "jpeg")),
                    _pct(a["mean_queries"], 0),
                    _key(a["cell_key"]),
                ]
                for a in entry["attacks"]
            ]
            head = ["attack", "vote", "observed", "clean", "resubmitted 10x", "100x", "PNG", "JPEG"]
            head += ["mean queries", "cell"]
            classes = ["", *["n"] * 8, ""]
            parts.append(render_table(head, rows, "html", classes=classes))
    parts.append(
        f"<p class='note'>Every number comes from the results store {e(report['db'])}: a cell key names its "
        "row in <code>cells</code>, its images in <code>image_results</code>. Schema "
        f"{e(report['schema'])}.</p></body></html>"
    )
    return "\n".join(parts)


def write_html(report: dict[str, Any], path: Path) -> None:
    path.write_text(render(report), encoding="utf-8")
