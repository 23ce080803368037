"""`rnd report`: a markdown report and PNG figures from a results database.

The figures are found in the data, not declared: every group of finished cells that varies in both
`mu` and `nu` (same model, attack, norm, eps, M, budget, images) becomes a mu x nu heatmap of the
failure rate (the seed's figures: geometric grids drawn on evenly spaced, i.e. logarithmic, axes);
every group that varies in M becomes an EOT curve (failure rate and mean queries against M); the
label-only attacks of one (model, norm, eps, budget) share a figure of the median distance of their
best adversarial point against queries (the usual plot for decision-based attacks); every
model measured at two or more nu gives a clean-accuracy-against-nu curve; and all cells form the
main table (model / defense x attack: failure rate observed, by noisy vote, by the clean model,
and mean queries). Several seeds of one grid point are averaged.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

from rnd.evaluation.store import ResultsStore
from rnd.report.labels import ci, defense_label, fmt, slug
from rnd.report.plots import (
    Heatmap,
    curve_at,
    distance_groups,
    eot_groups,
    heatmaps,
    plot_accuracy,
    plot_distances,
    plot_eot,
    plot_heatmap,
)
from rnd.report.points import JUDGEMENT_HEADS, RATE_FIELDS, average_seeds, mean, rnd_points
from rnd.report.tables import full_table, main_table, render_table


@dataclass
class Report:
    """Everything `write_report` produced."""

    markdown: str
    heatmaps: list[Heatmap] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)


def write_report(db: str | Path, out: str | Path) -> Report:
    """Read `db` (read-only) and write `out`/report.md plus PNG figures; returns what was written."""
    out = Path(out)
    with ResultsStore(db, readonly=True) as store:
        records = store.records()
        counts = store.status_counts()
        sweeps = store.sweeps()
    out.mkdir(parents=True, exist_ok=True)
    pts = average_seeds(records)
    md = [f"# rnd results: {Path(db).name}", ""]
    md.append(
        f"Cells: {counts.get('done', 0)} done, {counts.get('pending', 0)} pending, "
        f"{counts.get('failed', 0)} failed. Sweeps: "
        + ", ".join(
            f"{s['name']}{' (quick)' if s['quick'] and '(quick)' not in s['name'] else ''}" for s in sweeps
        )
        + "."
    )
    if records:
        versions = sorted({r.rnd_version for r in records})
        shas = sorted({f"{r.cell.model}: {r.cell.url or r.cell.checkpoint_sha256[:12]}" for r in records})
        md.append(
            f"rnd version(s): {', '.join(versions)}. Checkpoints (sha256) or endpoints: {'; '.join(shas)}."
        )
    md += [
        "",
        "Failure rate = failed / attacked (correctly classified) images, in %. Three ways: "
        "**observed** = the attacker's own noisy answer said success (the paper's protocol, the "
        "headline); **vote** = x_adv also fools a majority of fresh noisy answers; **clean** = x_adv "
        "also fools the undefended model (n/a for a served endpoint, whose model is not visible from "
        "outside; its clean accuracy is the endpoint's own, under its defense). Each rate carries its "
        "95 % Wilson interval over the images attacked (times the seeds averaged), in brackets: 20-100 "
        "images leave wide ones. Mean / median queries over observed successes.",
        "",
    ]
    report = Report("")
    for h in heatmaps(pts):
        name = f"heatmap_{slug(h.title.split(' (')[0])}.png"
        plot_heatmap(h, out / name)
        h.file = name
        report.heatmaps.append(h)
        report.figures.append(name)
        md += [
            f"## Heatmap: {h.title}",
            "",
            f"![{h.title}]({name})",
            "",
            "Observed failure % (rows: attacker mu, columns: defense nu):",
            "",
        ]
        rows = [
            [f"{mu:g}", *(fmt(v, 0) for v in row)]
            for mu, row in zip(h.mu, h.rates["failure_rate"], strict=True)
        ]
        md += [render_table(["mu \\ nu", *(f"{v:g}" for v in h.nu)], rows, "markdown"), ""]
    for key, lines in sorted(eot_groups(pts).items()):
        model, attack, norm, eps, budget, _images = key
        name = f"eot_{slug(model, attack, norm, f'eps{eps:g}', f'q{budget}')}.png"
        plot_eot(key, lines, out / name)
        report.figures.append(name)
        md += [
            f"## EOT: {attack} {norm} eps={eps:g} on {model}",
            "",
            f"![EOT {attack}]({name})",
            "",
        ]
        rows = [
            [f"{mu:g}", f"{nu:g}", str(r.eot), *(ci(r, m) for m in RATE_FIELDS), fmt(r.mean_queries, 0)]
            for (mu, nu), rs in sorted(lines.items())
            for r in rs
        ]
        md += [render_table(["mu", "nu", "M", *JUDGEMENT_HEADS, "mean q"], rows, "markdown"), ""]
    for key, rs in sorted(distance_groups(pts).items()):
        model, norm, eps, budget, images = key
        name = f"distance_{slug(model, norm, f'eps{eps:g}', f'q{budget}', f'n{images}')}.png"
        plot_distances(key, rs, out / name)
        report.figures.append(name)
        marks = sorted({budget // 10, budget // 2, budget} - {0})
        md += [
            f"## Label-only attacks: median {norm} distance against queries on {model} ({images} images)",
            "",
            f"![distance {norm}]({name})",
            "",
            f"Median over images of the distance of the best point observed adversarial (eps = {eps:g}; "
            "inf = no adversarial point yet).",
            "",
        ]
        head = ["attack", "defense", "M", *JUDGEMENT_HEADS, *(f"dist @ {q} q" for q in marks)]
        rows = [
            [r.attack, defense_label(r.defense), str(r.eot), *(ci(r, m) for m in RATE_FIELDS)]
            + [fmt(curve_at(r.distance_curve or [], q), 3) for q in marks]
            for r in rs
        ]
        md += [render_table(head, rows, "markdown"), ""]
    acc: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rnd_points(pts):
        acc[r.model][r.nu].append(r.clean_accuracy)
    curves = {m: sorted((nu, mean(v)) for nu, v in d.items()) for m, d in acc.items() if len(d) >= 2}
    if curves:
        plot_accuracy(curves, out / "clean_accuracy.png")
        report.figures.append("clean_accuracy.png")
        nus = sorted({nu for line in curves.values() for nu, _ in line})
        md += [
            "## Clean accuracy against nu",
            "",
            "![clean accuracy](clean_accuracy.png)",
            "",
        ]
        rows = [
            [m, *(fmt(dict(line)[nu]) if nu in dict(line) else "" for nu in nus)]
            for m, line in sorted(curves.items())
        ]
        md += [render_table(["model", *(f"nu={nu:g}" for nu in nus)], rows, "markdown"), ""]
    if pts:
        md += [
            "## Main table",
            "",
            "Cells: failure % observed / vote / clean, each with its 95 % interval, (mean queries), and "
            "det = % of images a stateful "
            "defense detected. One column per attack setting: M, mu (as used) and parameters are named "
            "where they differ from the plain attack; an empty cell was not run (an adaptive attack is "
            "aimed at the defenses it counters).",
            "",
        ]
        md += main_table(pts)
        md += ["", "## All cells", ""]
        md += full_table(pts)
    else:
        md.append("No finished cells yet.")
    report.markdown = "\n".join(md) + "\n"
    (out / "report.md").write_text(report.markdown)
    return report
