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

import json
import math
import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from rnd.attacks import ATTACKS
from rnd.defenses import rnd_nu
from rnd.evaluation.cells import REMOTE_DEFENSE
from rnd.evaluation.store import ResultsStore
from rnd.stats import rate_interval

RATES = (
    ("failure_rate", "observed"),
    ("failure_rate_vote", "noisy vote"),
    ("failure_rate_clean", "clean model"),
)
METRICS = (
    "failure_rate",
    "failure_rate_vote",
    "failure_rate_clean",
    "mean_queries",
    "median_queries",
    "clean_accuracy",
    "model_accuracy",
    "median_distance",
)


def effective_mu(r: dict[str, Any]) -> float:
    """The probe size a cell used (its own mu, or the attack's default recorded with the result)."""
    if r.get("mu") is not None:
        return float(r["mu"])
    return float(r["attack_params"].get("mu", math.nan))


def _mean(values: Iterable[float]) -> float:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return sum(vals) / len(vals) if vals else math.nan


def average_seeds(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One record per grid point: metrics averaged over seeds, `seeds` = how many."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in results:
        k = (
            r["model"],
            r["checkpoint_sha256"],
            r["dataset"],
            r["images"],
            r["start"],
            r["attack"],
            r["norm"],
            r["eps"],
            effective_mu(r),
            r["eot"],
            r["budget"],
            r["defense"],
            r["output"],
            r["params"],
            r.get("target"),
            r.get("url"),
            r.get("assume"),
        )
        groups[k].append(r)
    out = []
    for rs in groups.values():
        d = dict(rs[0])
        d["mu"] = effective_mu(rs[0])
        d["mu_given"] = rs[0].get("mu") is not None  # False: the attack's own default
        d["seeds"] = len(rs)
        for m in METRICS:
            d[m] = _mean(r.get(m, math.nan) for r in rs)
        d["distance_curve"] = mean_curve([r.get("distance_curve") for r in rs])
        out.append(d)
    return out


def mean_curve(curves: list[list[tuple[int, float]] | None]) -> list[tuple[int, float]] | None:
    """Pointwise mean of distance curves recorded at the same query counts (None if there are none;
    the first one when the counts differ)."""
    have = [c for c in curves if c]
    if not have:
        return None
    if any([q for q, _ in c] != [q for q, _ in have[0]] for c in have):
        return have[0]
    return [(q, _mean(c[j][1] for c in have)) for j, (q, _) in enumerate(have[0])]


def _slug(*parts: Any) -> str:
    return re.sub(r"[^A-Za-z0-9.]+", "-", "_".join(str(p) for p in parts)).strip("-")


def _fmt(v: float, digits: int = 1) -> str:
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _ci(r: dict[str, Any], col: str, compact: bool = False) -> str:
    """A failure rate with its 95 % Wilson interval over the record's images (times its seeds):
    `51.0 [41.3, 60.6]`, or `51 [41-61]` when compact; `n/a` when not measured."""
    v = r[col]
    if v is None or math.isnan(v):
        return "n/a"
    lo, hi = rate_interval(v, int(r["images"]) * int(r.get("seeds", 1)))
    if compact:
        return f"{v:.0f} [{lo:.0f}-{hi:.0f}]"
    return f"{v:.1f} [{lo:.1f}, {hi:.1f}]"


@dataclass
class Heatmap:
    """Failure rates (%) over mu (rows) x nu (columns) for one attack setting."""

    title: str
    mu: list[float]
    nu: list[float]
    rates: dict[str, list[list[float]]]  # metric -> [mu index][nu index]
    file: str = ""
    strength: str = "nu"  # the columns' defense parameter (sigma for feature noise)


@dataclass
class Report:
    """Everything `write_report` produced."""

    markdown: str
    heatmaps: list[Heatmap] = field(default_factory=list)
    figures: list[str] = field(default_factory=list)


def rnd_points(points: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The points whose defense is plain RND or none (those with a place on a nu axis)."""
    return [r for r in points if rnd_nu(r["defense"]) is not None]


def heatmaps(points: list[dict[str, Any]]) -> list[Heatmap]:
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rnd_points(points):
        groups[(r["model"], r["attack"], r["norm"], r["eps"], r["eot"], r["budget"], r["images"])].append(r)
    out = []
    for (model, attack, norm, eps, eot, budget, images), rs in sorted(groups.items()):
        mus = sorted({r["mu"] for r in rs})
        nus = sorted({r["nu"] for r in rs})
        if len(mus) < 2 or len(nus) < 2:
            continue
        at = {(r["mu"], r["nu"]): r for r in rs}
        rates = {
            m: [[at[(mu, nu)][m] if (mu, nu) in at else math.nan for nu in nus] for mu in mus]
            for m, _ in RATES
        }
        title = f"{attack} {norm} eps={eps:g} M={eot} on {model} ({images} images, {budget} queries)"
        out.append(Heatmap(title, mus, nus, rates))
    return out


def plot_heatmap(h: Heatmap, path: Path | BinaryIO) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(RATES), figsize=(4.2 * len(RATES), 3.6), squeeze=False)
    for ax, (metric, label) in zip(axes[0], RATES, strict=True):
        grid = h.rates[metric]
        im = ax.imshow(grid, origin="lower", cmap="viridis", vmin=0, vmax=100, aspect="auto")
        ax.set_xticks(range(len(h.nu)), [f"{v:g}" for v in h.nu])
        ax.set_yticks(range(len(h.mu)), [f"{v:g}" for v in h.mu])
        ax.set_xlabel(f"defense {h.strength} (log-spaced grid)")
        ax.set_ylabel("attacker mu (log-spaced grid)")
        ax.set_title(f"failure % ({label})", fontsize=10)
        for i, row in enumerate(grid):
            for j, v in enumerate(row):
                if not math.isnan(v):
                    ax.text(
                        j,
                        i,
                        f"{v:.0f}",
                        ha="center",
                        va="center",
                        fontsize=8,
                        color="white" if v < 60 else "black",
                    )
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.suptitle(h.title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def eot_groups(points: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in rnd_points(points):
        groups[(r["model"], r["attack"], r["norm"], r["eps"], r["budget"], r["images"])].append(r)
    out = {}
    for k, rs in groups.items():
        lines: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
        for r in rs:
            lines[(r["mu"], r["nu"])].append(r)
        lines = {lk: sorted(v, key=lambda r: r["eot"]) for lk, v in lines.items() if len(v) >= 2}
        if lines:
            out[k] = lines
    return out


def plot_eot(key: tuple, lines: dict[tuple, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model, attack, norm, eps, budget, images = key
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.6))
    for (mu, nu), rs in sorted(lines.items()):
        m = [r["eot"] for r in rs]
        a1.plot(m, [r["failure_rate"] for r in rs], "o-", label=f"mu={mu:g} nu={nu:g} observed")
        a1.plot(m, [r["failure_rate_vote"] for r in rs], "s--", label=f"mu={mu:g} nu={nu:g} vote")
        a2.plot(m, [r["mean_queries"] for r in rs], "o-", label=f"mu={mu:g} nu={nu:g}")
    ms = sorted({r["eot"] for rs in lines.values() for r in rs})
    for ax in (a1, a2):
        ax.set_xscale("log")
        ax.set_xticks(ms, [str(m) for m in ms])
        ax.minorticks_off()
        ax.set_xlabel("EOT samples M")
        ax.grid(alpha=0.3)
    a1.set_ylabel("failure rate %")
    a1.set_ylim(-2, 102)
    a2.set_ylabel("mean queries (successes)")
    a1.legend(fontsize=7)
    a2.legend(fontsize=7)
    fig.suptitle(
        f"EOT: {attack} {norm} eps={eps:g} on {model} ({images} images, {budget} queries)", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_accuracy(curves: dict[str, list[tuple[float, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.6))
    for model, pts in sorted(curves.items()):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=model)
    ax.set_xlabel("defense nu")
    ax.set_ylabel("clean accuracy % under RND")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def distance_groups(points: list[dict[str, Any]]) -> dict[tuple, list[dict[str, Any]]]:
    """Label-only cells by (model, norm, eps, budget, images): one distance figure each."""
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in points:
        if r.get("distance_curve"):
            groups[(r["model"], r["norm"], r["eps"], r["budget"], r["images"])].append(r)
    return {k: sorted(v, key=_line_key) for k, v in groups.items()}


def _line_key(r: dict[str, Any]) -> tuple:
    return (r["attack"], r["defense"], r["eot"], r["mu"])


def _line_label(r: dict[str, Any]) -> str:
    extra = f" M={r['eot']}" if r["eot"] > 1 else ""
    return f"{r['attack']} {_defense(r['defense'])}{extra}"


def plot_distances(key: tuple, rs: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    model, norm, eps, budget, images = key
    cols = 1 + len(rs) // 18  # legend columns beside the plot
    fig, ax = plt.subplots(figsize=(6.0 + 2.4 * cols, 4.2))
    for r in rs:
        pts = [(q, d) for q, d in r["distance_curve"] if math.isfinite(d)]
        if pts:
            style = "-" if r["defense"] == "none" else "--"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], style, marker=".", label=_line_label(r))
    ax.axhline(eps, color="black", lw=0.8, ls=":", label=f"eps = {eps:g}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("queries per image")
    ax.set_ylabel(f"median {norm} distance (best adversarial point)")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0), ncol=cols)
    ax.set_title(f"label-only attacks on {model} ({images} images, {budget} queries)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def curve_at(curve: list[tuple[int, float]], queries: int) -> float:
    """The curve's value at the largest recorded count <= `queries` (NaN before the first)."""
    vals = [d for q, d in curve if q <= queries]
    return vals[-1] if vals else math.nan


def row_defense(r: dict[str, Any]) -> str:
    """A record's defense as a table row tells it: the spec, or for a served endpoint `remote`
    with the defense its attackers were told."""
    return r["defense"] if not r.get("assume") else f"{r['defense']} (told {r['assume']})"


def _defense(spec: str) -> str:
    """How a defense spec reads in a table: `none`, `RND nu=0.02`, or the spec itself."""
    if spec.startswith(REMOTE_DEFENSE):
        return spec
    nu = rnd_nu(spec)
    if nu is None:
        return spec
    return "none" if nu == 0 else f"RND nu={nu:g}"


def _variant(r: dict[str, Any], default_mu: float) -> str:
    """An attack setting's column label: attack, norm, eps, and what differs from the plain attack
    (M, mu, extra parameters, target)."""
    out = f"{r['attack']} {r['norm']} eps={r['eps']:g}"
    if r["eot"] > 1:
        out += f" M={r['eot']}"
    if r.get("mu_given", True) and not math.isclose(r["mu"], default_mu):
        out += f" mu={r['mu']:g}"
    params = json.loads(r["params"]) if isinstance(r["params"], str) else dict(r["params"])
    out += "".join(f" {k}={v}" for k, v in sorted(params.items()))
    if r.get("target"):
        out += f" target={r['target']}"
    return out


def main_table(points: list[dict[str, Any]]) -> list[str]:
    """Markdown: one row per (model, defense), one column per attack setting (attack, norm, eps,
    and M, mu, parameters or target where they differ from the plain attack); cells of the pivot
    are "observed / vote / clean failure % (mean queries)", plus the % of images detected where a
    stateful defense refused queries. A mu grid of more than two values (a heatmap sweep) enters
    at the attack's default mu only (the full list follows)."""

    def default_mu(r: dict[str, Any]) -> float:
        cls = ATTACKS.get(r["attack"])
        return cls.default_mu.get(r["norm"], math.nan) if cls else math.nan

    mus: dict[tuple, set[float]] = defaultdict(set)
    for r in points:
        mus[(r["model"], r["attack"], r["norm"], r["eps"])].add(r["mu"])
    chosen = [
        r
        for r in points
        if len(mus[(r["model"], r["attack"], r["norm"], r["eps"])]) <= 2
        or math.isclose(r["mu"], default_mu(r))
    ]
    col_of = {id(r): _variant(r, default_mu(r)) for r in chosen}
    cols = sorted(set(col_of.values()))
    rows = sorted(
        {(r["model"], row_defense(r)) for r in chosen}, key=lambda md: (md[0], md[1] != "none", md[1])
    )
    at: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for r in chosen:
        at[(r["model"], row_defense(r), col_of[id(r)])].append(r)
    head = ["model", "defense", "clean acc %", *cols]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for model, defense in rows:
        accs = [r["clean_accuracy"] for r in chosen if r["model"] == model and row_defense(r) == defense]
        line = [model, _defense(defense), _fmt(_mean(accs))]
        for col in cols:
            rs = at.get((model, defense, col), [])
            if len(rs) != 1:
                line.append("" if not rs else "several")
                continue
            r = rs[0]
            det = r.get("detection_rate")
            line.append(
                f"{_ci(r, 'failure_rate', True)} / {_ci(r, 'failure_rate_vote', True)} / "
                f"{_ci(r, 'failure_rate_clean', True)} ({_fmt(r['mean_queries'], 0)})"
                + (f" det {_fmt(det, 0)}%" if det is not None and not math.isnan(det) and det > 0 else "")
            )
        out.append("| " + " | ".join(line) + " |")
    return out


def full_table(points: list[dict[str, Any]]) -> list[str]:
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
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in sorted(
        points, key=lambda r: (r["model"], r["attack"], r["norm"], r["eps"], r["eot"], r["mu"], r["defense"])
    ):
        vals = [
            r["model"],
            row_defense(r),
            r["attack"],
            r["norm"],
            f"{r['eps']:g}",
            f"{r['mu']:g}",
            str(r["eot"]),
            str(r["budget"]),
            str(r["images"]),
            str(r["seeds"]),
            _ci(r, "failure_rate"),
            _ci(r, "failure_rate_vote"),
            _ci(r, "failure_rate_clean"),
            _fmt(r["mean_queries"], 0),
            _fmt(r["median_queries"], 0),
            _fmt(r.get("median_distance", math.nan), 3),
            _fmt(r["clean_accuracy"]),
        ]
        out.append("| " + " | ".join(vals) + " |")
    return out


def write_report(db: str | Path, out: str | Path) -> Report:
    """Read `db` (read-only) and write `out`/report.md plus PNG figures; returns what was written."""
    out = Path(out)
    with ResultsStore(db, readonly=True) as store:
        results = store.results()
        counts = store.status_counts()
        sweeps = store.sweeps()
    out.mkdir(parents=True, exist_ok=True)
    points = average_seeds(results)
    md = [f"# rnd results: {Path(db).name}", ""]
    md.append(
        f"Cells: {counts.get('done', 0)} done, {counts.get('pending', 0)} pending, "
        f"{counts.get('failed', 0)} failed. Sweeps: "
        + ", ".join(
            f"{s['name']}{' (quick)' if s['quick'] and '(quick)' not in s['name'] else ''}" for s in sweeps
        )
        + "."
    )
    if results:
        versions = sorted({r["rnd_version"] for r in results})
        shas = sorted({f"{r['model']}: {r.get('url') or r['checkpoint_sha256'][:12]}" for r in results})
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
    for h in heatmaps(points):
        name = f"heatmap_{_slug(h.title.split(' (')[0])}.png"
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
        md.append("| mu \\ nu | " + " | ".join(f"{v:g}" for v in h.nu) + " |")
        md.append("|" + "---|" * (len(h.nu) + 1))
        for mu, row in zip(h.mu, h.rates["failure_rate"], strict=True):
            md.append(f"| {mu:g} | " + " | ".join(_fmt(v, 0) for v in row) + " |")
        md.append("")
    for key, lines in sorted(eot_groups(points).items()):
        model, attack, norm, eps, budget, _images = key
        name = f"eot_{_slug(model, attack, norm, f'eps{eps:g}', f'q{budget}')}.png"
        plot_eot(key, lines, out / name)
        report.figures.append(name)
        md += [
            f"## EOT: {attack} {norm} eps={eps:g} on {model}",
            "",
            f"![EOT {attack}]({name})",
            "",
            "| mu | nu | M | fail % obs | fail % vote | fail % clean | mean q |",
            "|---|---|---|---|---|---|---|",
        ]
        for (mu, nu), rs in sorted(lines.items()):
            for r in rs:
                md.append(
                    f"| {mu:g} | {nu:g} | {r['eot']} | {_ci(r, 'failure_rate')} | "
                    f"{_ci(r, 'failure_rate_vote')} | {_ci(r, 'failure_rate_clean')} | "
                    f"{_fmt(r['mean_queries'], 0)} |"
                )
        md.append("")
    for key, rs in sorted(distance_groups(points).items()):
        model, norm, eps, budget, images = key
        name = f"distance_{_slug(model, norm, f'eps{eps:g}', f'q{budget}', f'n{images}')}.png"
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
            "| attack | defense | M | fail % obs | fail % vote | fail % clean | "
            + " | ".join(f"dist @ {q} q" for q in marks)
            + " |",
            "|" + "---|" * (6 + len(marks)),
        ]
        for r in rs:
            md.append(
                f"| {r['attack']} | {_defense(r['defense'])} | {r['eot']} | {_ci(r, 'failure_rate')} | "
                f"{_ci(r, 'failure_rate_vote')} | {_ci(r, 'failure_rate_clean')} | "
                + " | ".join(_fmt(curve_at(r["distance_curve"], q), 3) for q in marks)
                + " |"
            )
        md.append("")
    acc: dict[str, dict[float, list[float]]] = defaultdict(lambda: defaultdict(list))
    for r in rnd_points(points):
        acc[r["model"]][r["nu"]].append(r["clean_accuracy"])
    curves = {m: sorted((nu, _mean(v)) for nu, v in d.items()) for m, d in acc.items() if len(d) >= 2}
    if curves:
        plot_accuracy(curves, out / "clean_accuracy.png")
        report.figures.append("clean_accuracy.png")
        nus = sorted({nu for pts in curves.values() for nu, _ in pts})
        md += [
            "## Clean accuracy against nu",
            "",
            "![clean accuracy](clean_accuracy.png)",
            "",
            "| model | " + " | ".join(f"nu={nu:g}" for nu in nus) + " |",
            "|" + "---|" * (1 + len(nus)),
        ]
        for m, pts in sorted(curves.items()):
            at = dict(pts)
            md.append(f"| {m} | " + " | ".join(_fmt(at[nu]) if nu in at else "" for nu in nus) + " |")
        md.append("")
    if points:
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
        md += main_table(points)
        md += ["", "## All cells", ""]
        md += full_table(points)
    else:
        md.append("No finished cells yet.")
    report.markdown = "\n".join(md) + "\n"
    (out / "report.md").write_text(report.markdown)
    return report
