"""`rnd theory ...`: the seed's Theorems 1-3 as diagnostics (see rnd.theory)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import click
import torch

from rnd.cli.app import json_option, main, progress_option
from rnd.cli.checks import (
    MAX_BUDGET,
    MAX_COUNT,
    MAX_IMAGES,
    FiniteFloat,
    check_writable_dir,
    check_writable_file,
    count,
    seed_option,
)
from rnd.data import load_fashion_mnist
from rnd.errors import InputError
from rnd.evaluation import correctly_classified
from rnd.models import load_checkpoint
from rnd.theory import bounds as b
from rnd.theory.convergence import convergence_experiment
from rnd.theory.functions import make_function
from rnd.theory.objective import MarginObjective
from rnd.theory.plots import plot_bounds, plot_convergence, plot_signflip
from rnd.theory.signflip import estimate_l0, sign_flip_probability
from rnd.theory.smoothing import smoothing_check
from rnd.training import default_checkpoint_path


def _floats(ctx: click.Context, param: click.Parameter, value: str | None) -> list[float] | None:
    """Parse a comma-separated list of numbers."""
    if value is None:
        return None
    try:
        vals = [float(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise click.BadParameter(f"expected comma-separated numbers, got {value!r}") from None
    if not all(math.isfinite(v) for v in vals):
        raise click.BadParameter(f"expected finite numbers (no nan or inf), got {value!r}")
    return vals


def _ints(ctx: click.Context, param: click.Parameter, value: str | None) -> list[int] | None:
    vals = _floats(ctx, param, value)
    if vals is None:
        return None
    if any(not v.is_integer() for v in vals):
        raise click.BadParameter(f"expected comma-separated integers, got {value!r}")
    if any(abs(v) > MAX_COUNT for v in vals):
        raise click.BadParameter(f"each value must be at most 10**6, got {value!r}")
    return [int(v) for v in vals]


def log_grid(lo: float, hi: float, steps: int) -> list[float]:
    """`steps` values log-spaced from lo to hi (rounded to 3 significant digits)."""
    if lo <= 0 or hi <= 0:
        raise InputError(f"grid ends must be > 0, got {lo:g} and {hi:g}")
    if steps == 1:
        return [lo]
    return [float(f"{lo * (hi / lo) ** (k / (steps - 1)):.3g}") for k in range(steps)]


def _write_json(path: Path, payload: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")


def _table(rows: list[dict[str, Any]], cols: list[tuple[str, str, str]]) -> str:
    """Plain-text table; cols = (key, header, format)."""
    head = "  ".join(f"{h:>10}" for _, h, _ in cols)
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append("  ".join(f"{format(r[k], f):>10}" for k, _, f in cols))
    return "\n".join(lines)


@main.group()
def theory() -> None:
    """The seed's Theorems 1-3 as measurements on your model and on analytic functions."""


def _load_model_and_images(checkpoint: Path | None, n_images: int) -> tuple[torch.nn.Module, Any, Any, str]:
    path = checkpoint or default_checkpoint_path()
    model, meta = load_checkpoint(path)
    if meta.dataset != "fashion-mnist":
        raise InputError(
            f"rnd theory takes its images from Fashion-MNIST; {path} was trained on {meta.dataset}: "
            "give a --checkpoint trained on fashion-mnist"
        )
    data = load_fashion_mnist("test")
    idx = correctly_classified(model, data, n_images)
    x, y = data.get(idx)
    return model, x, y, str(path)


@theory.command()
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path),
    default=None,
    help="model checkpoint (default: the Fashion-MNIST small CNN)",
)
@click.option(
    "--images",
    "n_images",
    type=count(1, MAX_IMAGES),
    default=50,
    show_default=True,
    help="first correctly classified test images",
)
@click.option("--mu", "mus", callback=_floats, default=None, help="attack steps, comma-separated")
@click.option("--nu", "nus", callback=_floats, default=None, help="RND noise levels, comma-separated")
@click.option(
    "--grid",
    nargs=3,
    type=FiniteFloat(),
    default=(0.001, 0.1, 5),
    show_default=True,
    help="LO HI STEPS: log grid used for --mu / --nu when not given",
)
@click.option("--draws", type=count(), default=200, show_default=True, help="(u, v1, v2) draws per image")
@click.option(
    "--direction", type=click.Choice(["gaussian", "sphere", "sign"]), default="gaussian", show_default=True
)
@click.option(
    "--l0-method",
    type=click.Choice(["grad", "secant"]),
    default="grad",
    show_default=True,
    help="local Lipschitz estimate: max gradient norm or max secant slope on the noise segments",
)
@click.option("--l0-points", type=count(), default=32, show_default=True)
@click.option("--clip/--no-clip", default=True, show_default=True, help="clip every query to [0, 1]")
@seed_option
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="folder for signflip.png and signflip.json"
)
@json_option
@progress_option
def signflip(
    checkpoint: Path | None,
    n_images: int,
    mus: list[float] | None,
    nus: list[float] | None,
    grid: tuple[float, float, float],
    draws: int,
    direction: str,
    l0_method: str,
    l0_points: int,
    clip: bool,
    seed: int,
    out: Path | None,
    as_json: bool,
    progress: bool,
) -> None:
    """Theorem 3: P(sign h_mu != sign h_nu) by Monte Carlo beside 2 L0 nu sqrt(d) / abs(h_mu) (eq. 16)."""
    if not (grid[2].is_integer() and 1 <= grid[2] <= 1000):
        raise InputError(f"--grid STEPS must be an integer in [1, 1000], got {grid[2]:g}")
    steps = int(grid[2])
    mus = mus or log_grid(grid[0], grid[1], steps)
    nus = nus or log_grid(grid[0], grid[1], steps)
    if out is not None:
        check_writable_dir(out, "--out")
    model, x, y, path = _load_model_and_images(checkpoint, n_images)
    result = sign_flip_probability(
        model,
        x,
        y,
        mus,
        nus,
        draws=draws,
        direction=direction,  # type: ignore[arg-type]
        l0_method=l0_method,  # type: ignore[arg-type]
        l0_points=l0_points,
        clip=clip,
        seed=seed,
        progress=progress,
    )
    payload = {
        "checkpoint": path,
        "images": result.images,
        "dim": result.dim,
        **result.params,
        "violations": result.violations,
        "cells": result.rows(),
    }
    if out is not None:
        _write_json(out / "signflip.json", payload)
        plot_signflip(result, out / "signflip.png")
    if as_json:
        click.echo(json.dumps(payload, indent=2, default=str))
        return
    click.echo(
        f"model: {path}; {result.images} images, {draws} draws each, u ~ {direction}, d = {result.dim}"
    )
    click.echo(f"L0: local estimate ({l0_method}, {l0_points} points per image and nu); 95 % Wilson CI\n")
    click.echo(
        _table(
            result.rows(),
            [
                ("mu", "mu", "g"),
                ("nu", "nu", "g"),
                ("nu_over_mu", "nu/mu", ".3g"),
                ("p_flip", "P(flip)", ".3f"),
                ("ci_low", "ci_low", ".3f"),
                ("ci_high", "ci_high", ".3f"),
                ("bound", "bound", ".3f"),
                ("vacuous", "vacuous", ".2f"),
                ("mean_abs_h_mu", "|h_mu|", ".3g"),
                ("median_l0", "L0", ".3g"),
            ],
        )
    )
    bad = result.violations
    click.echo(
        "\ncells above the bound: " + (", ".join(f"mu={m:g} nu={n:g}" for m, n in bad) if bad else "none")
    )
    if out is not None:
        click.echo(f"wrote {out / 'signflip.png'} and {out / 'signflip.json'}")


@theory.command()
@click.option("--l0", type=FiniteFloat(), default=1.0, show_default=True, help="Lipschitz constant of f")
@click.option("--l1", type=FiniteFloat(), default=1.0, show_default=True, help="Lipschitz constant of grad f")
@click.option(
    "--d", "dim", type=click.IntRange(max=MAX_BUDGET), default=784, show_default=True, help="input dimension"
)
@click.option("--R", "radius", type=FiniteFloat(), default=1.0, show_default=True, help="threat radius (l2)")
@click.option(
    "--Q", "iters", type=click.IntRange(max=MAX_BUDGET), default=10000, show_default=True, help="iterations"
)
@click.option("--mu", type=FiniteFloat(), default=0.01, show_default=True)
@click.option("--nu", type=FiniteFloat(), default=0.01, show_default=True)
@click.option(
    "--M", "m", type=click.IntRange(max=MAX_COUNT), default=1, show_default=True, help="EOT samples"
)
@click.option(
    "--eta", type=FiniteFloat(), default=None, help="step size (default: Theorem 1's constant step)"
)
@click.option("--eps", type=FiniteFloat(), default=None, help="smoothing accuracy (default: mu sqrt(d) L0)")
@click.option(
    "--delta", type=FiniteFloat(), default=0.01, show_default=True, help="target E||grad||^2 (Remark 1)"
)
@click.option("--h-mu", type=FiniteFloat(), default=None, help="abs(h_mu(x)) for Theorem 3's bound")
@click.option("--plot", type=click.Path(path_type=Path), default=None, help="write a PNG of the bounds")
@json_option
def bounds(
    l0: float,
    l1: float,
    dim: int,
    radius: float,
    iters: int,
    mu: float,
    nu: float,
    m: int,
    eta: float | None,
    eps: float | None,
    delta: float,
    h_mu: float | None,
    plot: Path | None,
    as_json: bool,
) -> None:
    """Evaluate Theorem 1 (+ eq. 12, Remark 1), Theorem 2 (eq. 14) and Theorem 3 (eq. 16)."""
    mu, nu = b.check_mu_nu(mu, nu)
    b.check_m(m)
    if plot is not None:
        check_writable_file(plot, "--plot")
    eps = b.smoothing_gap_bound(l0, mu, dim) if eps is None else eps
    alpha = nu / mu
    step = b.theorem1_step_size(radius, eps, alpha, dim, l0, iters) if eta is None else eta
    t2 = b.theorem2_terms(l0, l1, dim, radius, iters, mu, nu, m, step)
    t2_inf = b.theorem2_terms(l0, l1, dim, radius, iters, mu, nu, math.inf, step)
    out: dict[str, Any] = {
        "alpha": alpha,
        "eta": step,
        "eps": eps,
        "mu_for_eps": b.mu_for_accuracy(eps, dim, l0),
        "theorem1_bound": b.theorem1_bound(l0, dim, mu, nu, step, iters, l0 * radius),
        "eq12_rate": b.theorem1_rate(l0, radius, dim, iters, eps, alpha),
        "remark1_queries": b.query_complexity(alpha, dim, l0, radius, eps, delta),
        "theorem2_bound": t2.bound,
        "theorem2_terms": {"lipschitz": t2.lipschitz, "cross": t2.cross, "curvature": t2.curvature},
        "theorem2_bound_M_inf": t2_inf.bound,
        "smoothing_gap_bound": b.smoothing_gap_bound(l0, nu, dim),
    }
    if h_mu is not None:
        out["theorem3_bound"] = b.theorem3_bound(l0, nu, dim, h_mu)
    if plot is not None:
        plot_bounds(l0, l1, dim, radius, iters, mu, step, plot)
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    click.echo(
        f"L0={l0:g} L1={l1:g} d={dim} R={radius:g} Q={iters} mu={mu:g} nu={nu:g} (nu/mu={alpha:.3g}) "
        f"M={m} eta={step:.4g} eps={eps:.4g}"
    )
    click.echo(f"Theorem 1 bound (f0 - f* <= L0 R):     {out['theorem1_bound']:.6g}")
    click.echo(f"eq. 12 rate (mu = eps/(sqrt(d) L0)):   {out['eq12_rate']:.6g}")
    click.echo(f"Remark 1: iterations to reach delta={delta:g}: {out['remark1_queries']:.6g}")
    click.echo(
        f"Theorem 2 bound (eq. 14), M={m}:        {t2.bound:.6g}  "
        f"[terms {t2.lipschitz:.3g} + {t2.cross:.3g} + {t2.curvature:.3g} per eta^2]"
    )
    click.echo(f"Theorem 2 bound, M -> infinity:        {t2_inf.bound:.6g}")
    click.echo(f"|f_nu - f| <= nu L0 sqrt(d) =          {out['smoothing_gap_bound']:.6g}")
    if h_mu is not None:
        click.echo(f"Theorem 3 bound (eq. 16), |h_mu|={h_mu:g}: {out['theorem3_bound']:.6g}")
    if plot is not None:
        click.echo(f"wrote {plot}")


@theory.command()
@click.option(
    "--function",
    "fname",
    type=click.Choice(["quadratic", "logistic"]),
    default="quadratic",
    show_default=True,
)
@click.option("--d", "dim", type=count(1, 10**4), default=20, show_default=True)
@click.option(
    "--alpha",
    "alphas",
    callback=_floats,
    default="0,1,2,4",
    show_default=True,
    help="nu/mu values, comma-separated",
)
@click.option(
    "--M",
    "ms",
    callback=_ints,
    default="1,2,4,8,16",
    show_default=True,
    help="EOT sample counts, comma-separated",
)
@click.option("--mu", type=FiniteFloat(), default=0.05, show_default=True)
@click.option("--eta", type=FiniteFloat(), default=None, help="step size (default 1 / (4 L1 (d + 4)))")
@click.option("--iters", type=count(), default=300, show_default=True)
@click.option("--runs", type=count(), default=32, show_default=True)
@click.option("--radius", type=FiniteFloat(), default=2.0, show_default=True, help="threat radius R (l2)")
@seed_option
@click.option(
    "--out", type=click.Path(path_type=Path), default=None, help="folder for convergence-FUNCTION.png / .json"
)
@json_option
def convergence(
    fname: str,
    dim: int,
    alphas: list[float],
    ms: list[int],
    mu: float,
    eta: float | None,
    iters: int,
    runs: int,
    radius: float,
    seed: int,
    out: Path | None,
    as_json: bool,
) -> None:
    """Theorems 1-2: ZO attack (eq. 11 with eq. 10/13) on an analytic function over nu/mu x M."""
    if out is not None:
        check_writable_dir(out, "--out")
    fn = make_function(fname, dim, seed=seed)
    result = convergence_experiment(
        fn, alphas, ms, mu=mu, eta=eta, iters=iters, runs=runs, radius=radius, seed=seed
    )
    payload = {
        "function": fname,
        "dim": dim,
        "mu": mu,
        "eta": result.eta,
        "radius": radius,
        "runs": runs,
        "iters": iters,
        "seed": seed,
        "l0": result.l0,
        "l1": result.l1,
        "cells": result.rows(),
    }
    if out is not None:
        _write_json(out / f"convergence-{fname}.json", {**payload, "curves": result.curves.tolist()})
        plot_convergence(result, out / f"convergence-{fname}.png")
    if as_json:
        click.echo(json.dumps(payload, indent=2))
        return
    click.echo(
        f"{fname}, d={dim}: L0={result.l0:.3g} L1={result.l1:.3g} mu={mu:g} eta={result.eta:.3g} "
        f"R={radius:g}, {iters} iterations x {runs} runs"
    )
    click.echo("(1/(Q+1)) sum_t mean ||grad f(x_t)||^2 (rows nu/mu, columns M):\n")
    click.echo("  nu/mu " + "".join(f"{'M=' + str(m):>11}" for m in result.ms))
    for i, a in enumerate(result.alphas):
        click.echo(f"{a:7g} " + "".join(f"{float(v):11.4g}" for v in result.average[i]))
    if out is not None:
        click.echo(f"\nwrote {out / f'convergence-{fname}.png'}")


@theory.command()
@click.option(
    "--function",
    "fname",
    type=click.Choice(["model", "quadratic", "logistic"]),
    default="model",
    show_default=True,
    help="the model's CW margin, or an analytic function with known L0",
)
@click.option("--checkpoint", type=click.Path(path_type=Path), default=None)
@click.option("--images", "n_images", type=count(1, MAX_IMAGES), default=20, show_default=True)
@click.option(
    "--d",
    "dim",
    type=count(1, 10**4),
    default=20,
    show_default=True,
    help="dimension of the analytic function",
)
@click.option("--nu", "nus", callback=_floats, default="0.001,0.01,0.05,0.1", show_default=True)
@click.option("--samples", type=count(2), default=256, show_default=True)
@click.option("--l0-points", type=count(), default=32, show_default=True)
@seed_option
@json_option
def smoothing(
    fname: str,
    checkpoint: Path | None,
    n_images: int,
    dim: int,
    nus: list[float],
    samples: int,
    l0_points: int,
    seed: int,
    as_json: bool,
) -> None:
    """Gaussian smoothing (eq. 9) by Monte Carlo: abs(f_nu - f) against nu L0 sqrt(d)."""
    g = torch.Generator().manual_seed(seed)
    if fname == "model":
        model, x, y, where = _load_model_and_images(checkpoint, n_images)
        objective = MarginObjective(model, y)
        l0_all = estimate_l0(objective, x, [], nus, points=l0_points, generator=g)
        checks = [
            smoothing_check(objective, x, [nu], l0_all[:, j], samples=samples, generator=g)
            for j, nu in enumerate(nus)
        ]
        rows = [r for c in checks for r in c.rows()]
        note = (
            f"{where}, {x.shape[0]} images; L0 = local max gradient norm on x + tau nu v ({l0_points} points)"
        )
    else:
        fn = make_function(fname, dim, seed=seed)
        pts = fn.x0[None] + 0.5 * torch.randn(n_images, dim, generator=g)
        radius = float((pts - fn.x0).norm(dim=1).max()) + 6 * max(nus) * math.sqrt(dim)
        check = smoothing_check(fn, pts, nus, fn.l0(radius), samples=samples, generator=g)
        rows = check.rows()
        note = f"{fname}, d={dim}, {n_images} points; L0={fn.l0(radius):.3g} (exact on the region sampled)"
    if as_json:
        click.echo(json.dumps({"function": fname, "note": note, "rows": rows}, indent=2))
        return
    click.echo(note + f"; {samples} samples per point\n")
    click.echo(
        _table(
            rows,
            [
                ("nu", "nu", "g"),
                ("mean_gap", "mean gap", ".4g"),
                ("max_gap", "max gap", ".4g"),
                ("mean_bound", "bound", ".4g"),
                ("max_ratio", "gap/bound", ".3g"),
                ("violations", "violations", "d"),
            ],
        )
    )
