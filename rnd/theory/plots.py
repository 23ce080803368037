"""PNG figures of the theory diagnostics (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from rnd.theory.bounds import theorem1_bound, theorem2_terms
from rnd.theory.convergence import ConvergenceResult
from rnd.theory.signflip import SignFlipResult, linear_flip_probability


def _heat(ax: plt.Axes, values: torch.Tensor, rows: list[float], cols: list[float], title: str) -> None:
    im = ax.imshow(values.numpy(), origin="lower", cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto")
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = float(values[i, j])
            ax.text(
                j, i, f"{v:.2f}", ha="center", va="center", fontsize=8, color="white" if v < 0.6 else "black"
            )
    ax.set_xticks(range(len(cols)), [f"{c:g}" for c in cols], rotation=45)
    ax.set_yticks(range(len(rows)), [f"{r:g}" for r in rows])
    ax.set_xlabel("nu (RND noise)")
    ax.set_ylabel("mu (attack step)")
    ax.set_title(title, fontsize=10)
    plt.colorbar(im, ax=ax, fraction=0.046)


def plot_signflip(result: SignFlipResult, path: str | Path) -> Path:
    """Heatmaps over mu x nu of the measured P(sign flip) and Theorem 3's bound, and both against nu/mu."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8))
    _heat(
        axes[0],
        result.p_flip,
        result.mus,
        result.nus,
        f"measured P(sign h_mu != sign h_nu)\n{result.images} images x {result.draws} draws",
    )
    _heat(
        axes[1],
        result.bound,
        result.mus,
        result.nus,
        f"Theorem 3 bound (eq. 16), mean of min(1, .)\nL0: local estimate ({result.l0_method})",
    )
    ax = axes[2]
    alpha, p, lo, hi, b = [], [], [], [], []
    for i, mu in enumerate(result.mus):
        for j, nu in enumerate(result.nus):
            if nu > 0:
                alpha.append(nu / mu)
                p.append(float(result.p_flip[i, j]))
                lo.append(float(result.p_flip[i, j] - result.ci_low[i, j]))
                hi.append(float(result.ci_high[i, j] - result.p_flip[i, j]))
                b.append(float(result.bound[i, j]))
    ax.errorbar(alpha, p, yerr=[lo, hi], fmt="o", ms=4, capsize=2, label="measured P(flip), 95 % CI")
    ax.scatter(alpha, b, marker="x", color="C3", label="Theorem 3 bound")
    if alpha:
        grid = [min(alpha) * (max(alpha) / min(alpha)) ** (k / 99) for k in range(100)]
        ref = [linear_flip_probability(a, result.direction, result.dim) for a in grid]  # type: ignore[arg-type]
        ax.plot(grid, ref, "k--", lw=1, label="linear f: arctan(c nu/mu)/pi")
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.35)
    ax.set_xlabel("nu / mu")
    ax.set_ylabel("probability")
    ax.set_title("sign-flip probability against nu/mu", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left", ncol=2)
    fig.tight_layout()
    return _save(fig, path)


def plot_convergence(result: ConvergenceResult, path: str | Path) -> Path:
    """E||grad f(x_t)||^2 against t: one line per alpha (smallest M), one per M (largest alpha),
    and the iteration-averaged value (Theorems 1-2's left side) against M for every alpha."""
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.6))
    t = torch.arange(result.curves.shape[-1]).numpy()
    m0 = 0
    for a, alpha in enumerate(result.alphas):
        axes[0].plot(t, result.curves[a, m0].numpy(), label=f"nu/mu = {alpha:g}")
    axes[0].set_title(
        f"{result.function}, d={result.dim}: M = {result.ms[m0]} (larger nu/mu converges slower)", fontsize=10
    )
    a_max = len(result.alphas) - 1
    for k, m in enumerate(result.ms):
        axes[1].plot(t, result.curves[a_max, k].numpy(), label=f"M = {m}")
    if result.alphas[0] == 0:
        axes[1].plot(t, result.curves[0, 0].numpy(), "k--", label="no noise (nu = 0)")
    axes[1].set_title(f"nu/mu = {result.alphas[a_max]:g}: EOT with M answers per query", fontsize=10)
    for ax in axes[:2]:
        ax.set_yscale("log")
        ax.set_xlabel("iteration t")
        ax.set_ylabel("mean ||grad f(x_t)||^2")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    for a, alpha in enumerate(result.alphas):
        axes[2].plot(result.ms, result.average[a].numpy(), "o-", label=f"nu/mu = {alpha:g}")
    axes[2].set_xscale("log", base=2)
    axes[2].set_yscale("log")
    axes[2].set_xlabel("M (EOT samples)")
    axes[2].set_ylabel("(1/(Q+1)) sum_t mean ||grad f(x_t)||^2")
    axes[2].set_title("averaged over iterations: gains from M shrink", fontsize=10)
    axes[2].grid(alpha=0.3)
    axes[2].legend(fontsize=8)
    fig.suptitle(
        f"ZO attack eq. (11) with eq. (13): mu={result.mu:g}, eta={result.eta:.3g}, R={result.radius:g}, "
        f"{result.runs} runs, L0={result.l0:.3g}, L1={result.l1:.3g}",
        fontsize=10,
    )
    fig.tight_layout()
    return _save(fig, path)


def plot_bounds(
    l0: float, l1: float, d: int, r: float, q: int, mu: float, eta: float, path: str | Path
) -> Path:
    """Theorem 1's bound against nu/mu, and Theorem 2's (eq. 14) against M for several nu/mu."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.3))
    alphas = [10 ** (k / 10) for k in range(-20, 11)]
    gap = l0 * r
    axes[0].plot(alphas, [theorem1_bound(l0, d, mu, a * mu, eta, q, gap) for a in alphas])
    axes[0].set_xscale("log")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("nu / mu")
    axes[0].set_ylabel("Theorem 1 bound")
    axes[0].set_title("Theorem 1: grows with nu/mu", fontsize=10)
    ms = [1, 2, 4, 8, 16, 32, 64, 128]

    def bracket(a: float, m: float) -> float:
        t = theorem2_terms(l0, l1, d, r, q, mu, a * mu, m, eta)
        return t.lipschitz + t.cross + t.curvature

    for a in (0.5, 1.0, 2.0, 4.0):
        (line,) = axes[1].plot(ms, [bracket(a, m) for m in ms], "o-", label=f"nu/mu = {a:g}")
        axes[1].axhline(bracket(a, math.inf), color=line.get_color(), ls=":", lw=1)
    axes[1].set_xscale("log", base=2)
    axes[1].set_yscale("log")
    axes[1].set_xlabel("M (EOT samples)")
    axes[1].set_ylabel("eq. 14: coefficient of eta_t^2")
    axes[1].set_title("Theorem 2: falls with M towards the M -> inf limit (dotted)", fontsize=10)
    axes[1].legend(fontsize=8)
    for ax in axes:
        ax.grid(alpha=0.3)
    fig.suptitle(f"L0={l0:g}, L1={l1:g}, d={d}, R={r:g}, Q={q}, mu={mu:g}, eta={eta:.3g}", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: plt.Figure, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p, dpi=110)
    plt.close(fig)
    return p
