"""The report's figures, drawn with matplotlib's object API (no pyplot, no global backend): mu x nu
heatmaps of the failure rate (the seed's figures), EOT curves over M, clean accuracy against nu,
and the median distance of label-only attacks against queries; and the groups of points each
figure is found in (figures are found in the data, not declared).

May import: rnd.report.points, labels.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from matplotlib.figure import Figure

from rnd.errors import InputError
from rnd.evaluation.strength import NuAccuracy
from rnd.report.labels import defense_label
from rnd.report.points import RATES, Point, rnd_points


@dataclass
class Heatmap:
    """Failure rates (%) over mu (rows) x nu (columns) for one attack setting."""

    title: str
    mu: list[float]
    nu: list[float]
    rates: dict[str, list[list[float]]]  # metric -> [mu index][nu index]
    file: str = ""
    strength: str = "nu"  # the columns' defense parameter (sigma for feature noise)


def heatmaps(points: list[Point]) -> list[Heatmap]:
    groups: dict[tuple, list[Point]] = defaultdict(list)
    for r in rnd_points(points):
        groups[(r.model, r.attack, r.norm, r.eps, r.eot, r.budget, r.images)].append(r)
    out = []
    for (model, attack, norm, eps, eot, budget, images), rs in sorted(groups.items()):
        mus = sorted({r.mu for r in rs})
        nus = sorted({r.nu for r in rs})
        if len(mus) < 2 or len(nus) < 2:
            continue
        at = {(r.mu, r.nu): r for r in rs}
        rates = {
            m: [[at[(mu, nu)].rate(m) if (mu, nu) in at else math.nan for nu in nus] for mu in mus]
            for m, _ in RATES
        }
        title = f"{attack} {norm} eps={eps:g} M={eot} on {model} ({images} images, {budget} queries)"
        out.append(Heatmap(title, mus, nus, rates))
    return out


def plot_heatmap(h: Heatmap, path: Path | BinaryIO) -> None:

    fig = Figure(figsize=(4.2 * len(RATES), 3.6))
    axes = fig.subplots(1, len(RATES), squeeze=False)
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


def eot_groups(points: list[Point]) -> dict[tuple, list[Point]]:
    groups: dict[tuple, list[Point]] = defaultdict(list)
    for r in rnd_points(points):
        groups[(r.model, r.attack, r.norm, r.eps, r.budget, r.images)].append(r)
    out = {}
    for k, rs in groups.items():
        lines: dict[tuple, list[Point]] = defaultdict(list)
        for r in rs:
            lines[(r.mu, r.nu)].append(r)
        lines = {lk: sorted(v, key=lambda r: r.eot) for lk, v in lines.items() if len(v) >= 2}
        if lines:
            out[k] = lines
    return out


def plot_eot(key: tuple, lines: dict[tuple, list[Point]], path: Path) -> None:

    model, attack, norm, eps, budget, images = key
    fig = Figure(figsize=(9, 3.6))
    a1, a2 = fig.subplots(1, 2)
    for (mu, nu), rs in sorted(lines.items()):
        m = [r.eot for r in rs]
        a1.plot(m, [r.failure_rate for r in rs], "o-", label=f"mu={mu:g} nu={nu:g} observed")
        a1.plot(m, [r.failure_rate_vote for r in rs], "s--", label=f"mu={mu:g} nu={nu:g} vote")
        a2.plot(m, [r.mean_queries for r in rs], "o-", label=f"mu={mu:g} nu={nu:g}")
    ms = sorted({r.eot for rs in lines.values() for r in rs})
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


def plot_accuracy(curves: dict[str, list[tuple[float, float]]], path: Path) -> None:

    fig = Figure(figsize=(5, 3.6))
    ax = fig.subplots()
    for model, pts in sorted(curves.items()):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=model)
    ax.set_xlabel("defense nu")
    ax.set_ylabel("clean accuracy % under RND")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def distance_groups(points: list[Point]) -> dict[tuple, list[Point]]:
    """Label-only cells by (model, norm, eps, budget, images): one distance figure each."""
    groups: dict[tuple, list[Point]] = defaultdict(list)
    for r in points:
        if r.distance_curve:
            groups[(r.model, r.norm, r.eps, r.budget, r.images)].append(r)
    return {k: sorted(v, key=_line_key) for k, v in groups.items()}


def _line_key(r: Point) -> tuple:
    return (r.attack, r.defense, r.eot, r.mu)


def _line_label(r: Point) -> str:
    extra = f" M={r.eot}" if r.eot > 1 else ""
    return f"{r.attack} {defense_label(r.defense)}{extra}"


def plot_distances(key: tuple, rs: list[Point], path: Path) -> None:

    model, norm, eps, budget, images = key
    cols = 1 + len(rs) // 18  # legend columns beside the plot
    fig = Figure(figsize=(6.0 + 2.4 * cols, 4.2))
    ax = fig.subplots()
    for r in rs:
        pts = [(q, d) for q, d in r.distance_curve if math.isfinite(d)]
        if pts:
            style = "-" if r.defense == "none" else "--"
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


def curve_at(curve: list[tuple[int, float]], queries: int) -> float:
    """The curve's value at the largest recorded count <= `queries` (NaN before the first)."""
    vals = [d for q, d in curve if q <= queries]
    return vals[-1] if vals else math.nan


def plot_accuracy_vs_nu(
    results: Mapping[str, list[NuAccuracy]], path: str | Path, *, title: str | None = None
) -> Path:
    """Write a PNG of accuracy against nu, one line per model, error bars = std over draws."""
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InputError(f"the plot is written as PNG; give a path ending in .png, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    markers = "osv^D<>ph"
    for i, (name, rows) in enumerate(results.items()):
        ax.errorbar(
            [r.nu for r in rows],
            [r.mean for r in rows],
            yerr=[r.std for r in rows],
            marker=markers[i % len(markers)],
            capsize=3,
            label=name,
        )
    ax.set_xlabel("RND noise level nu")
    ax.set_ylabel("clean accuracy under RND (%)")
    ax.set_title(title or "Clean accuracy for different models")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, format="png", dpi=120)
    return path
