"""Clean accuracy under RND against the noise level nu, and choosing nu for an accuracy budget.

RND's price is clean accuracy: |f_nu(x) - f(x)| <= nu L0 sqrt(d) (Qin et al., NeurIPS 2021,
section 4). `accuracy_vs_nu` measures it (mean and spread over independent noise draws) for one or
more models, the seed's "clean accuracy for different models" figure; `calibrate_nu` picks the
largest nu whose accuracy drop stays within a budget with a one-sided confidence bound.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from rnd._checks import check_int, check_positive
from rnd.data.base import ImageDataset
from rnd.defense import RandomNoiseDefense
from rnd.errors import InputError
from rnd.evaluation.metrics import predict


@dataclass
class NuAccuracy:
    """Accuracy (in %) of one model under RND at one nu, over `len(draws)` noise draws."""

    nu: float
    mean: float
    std: float
    draws: list[float] = field(default_factory=list)


def _correct_counts(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> int:
    return int((predict(model, x, batch_size) == y).sum())


def _draw_accuracies(
    model: nn.Module,
    data: ImageDataset,
    nu: float,
    draws: int,
    seed: int,
    indices: torch.Tensor | None,
    batch_size: int,
) -> list[float]:
    """Accuracy in % for each of `draws` noise draws (one draw when nu = 0: nothing is random)."""
    if nu == 0:
        draws = 1
    defended = RandomNoiseDefense(model, nu=nu, seed=seed) if nu > 0 else model
    out = []
    for _ in range(draws):
        correct = total = 0
        for x, y in data.batches(batch_size, indices):
            correct += _correct_counts(defended, x, y, batch_size)
            total += len(y)
        out.append(100.0 * correct / max(total, 1))
    return out


def _summary(nu: float, values: list[float]) -> NuAccuracy:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return NuAccuracy(nu, mean, std, values)


def _check_nus(nus: Sequence[float]) -> list[float]:
    if len(nus) == 0:
        raise InputError("give at least one nu")
    return [check_positive(v, "nu", allow_zero=True) for v in nus]


def accuracy_vs_nu(
    model: nn.Module,
    data: ImageDataset,
    nus: Sequence[float],
    *,
    draws: int = 5,
    seed: int = 0,
    indices: torch.Tensor | None = None,
    batch_size: int = 1000,
) -> list[NuAccuracy]:
    """Clean accuracy (%) of `model` behind RND at each nu: mean and sample std over `draws` draws.

    The noise of nu's i-th entry comes from a defense seeded with `seed + i` (reproducible).
    """
    nus = _check_nus(nus)
    check_int(draws, "draws")
    return [
        _summary(nu, _draw_accuracies(model, data, nu, draws, seed + i, indices, batch_size))
        for i, nu in enumerate(nus)
    ]


def compare_models(
    models: Mapping[str, nn.Module],
    data: ImageDataset,
    nus: Sequence[float],
    **kwargs: object,
) -> dict[str, list[NuAccuracy]]:
    """`accuracy_vs_nu` for each named model, with the same noise seeds for every model."""
    if not models:
        raise InputError("give at least one model")
    return {name: accuracy_vs_nu(m, data, nus, **kwargs) for name, m in models.items()}  # type: ignore[arg-type]


def plot_accuracy_vs_nu(
    results: Mapping[str, list[NuAccuracy]], path: str | Path, *, title: str | None = None
) -> Path:
    """Write a PNG of accuracy against nu, one line per model, error bars = std over draws."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = Path(path)
    if path.suffix.lower() != ".png":
        raise InputError(f"the plot is written as PNG; give a path ending in .png, got {path.name!r}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(5.5, 4))
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
    plt.close(fig)
    return path


# --- calibration ------------------------------------------------------------------------------------


def t_quantile(p: float, df: int) -> float:
    """Quantile of Student's t distribution with `df` degrees of freedom (bisection on its CDF)."""
    if not 0.5 <= p < 1:
        raise InputError(f"confidence must lie in [0.5, 1), got {p}")
    check_int(df, "degrees of freedom")
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def pdf(t: float) -> float:
        return math.exp(log_c - (df + 1) / 2 * math.log1p(t * t / df))

    def cdf(t: float, n: int = 2000) -> float:  # Simpson's rule on [0, t], t >= 0
        h = t / n
        s = pdf(0) + pdf(t) + sum((4 if k % 2 else 2) * pdf(k * h) for k in range(1, n))
        return 0.5 + s * h / 3

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        lo, hi = hi, 2 * hi
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2


@dataclass
class DropMeasure:
    """Accuracy drop (percentage points) of RND at `nu` against the clean model, over noise draws."""

    nu: float
    drop: float  # mean over draws
    std: float
    upper: float  # one-sided upper confidence bound of the mean drop
    accuracy: float  # mean accuracy under RND, %

    def as_dict(self) -> dict[str, float]:
        return {
            "nu": self.nu,
            "drop": self.drop,
            "std": self.std,
            "upper": self.upper,
            "accuracy": self.accuracy,
        }


@dataclass
class Calibration:
    """The largest nu whose drop's upper bound is within `max_drop`, with what was measured."""

    nu: float
    max_drop: float
    confidence: float
    clean_accuracy: float
    chosen: DropMeasure | None  # None when even the smallest nu tried exceeds the budget
    next_over: DropMeasure | None  # the smallest nu tried above `nu` that exceeded it (None: none did)
    tried: list[DropMeasure] = field(default_factory=list)
    images: int = 0
    draws: int = 0


DEFAULT_GRID = (0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.07, 0.1, 0.15, 0.2, 0.3)


def measure_drop(
    model: nn.Module,
    data: ImageDataset,
    nu: float,
    clean_accuracy: float,
    *,
    draws: int = 5,
    confidence: float = 0.95,
    seed: int = 0,
    indices: torch.Tensor | None = None,
    batch_size: int = 1000,
) -> DropMeasure:
    """Drop = clean accuracy - accuracy under RND(nu), per draw; mean, std and a one-sided t bound."""
    accs = _draw_accuracies(model, data, nu, draws, seed, indices, batch_size)
    drops = [clean_accuracy - a for a in accs]
    s = _summary(nu, drops)
    upper = s.mean + (
        t_quantile(confidence, len(drops) - 1) * s.std / math.sqrt(len(drops)) if len(drops) > 1 else 0.0
    )
    return DropMeasure(nu, s.mean, s.std, upper, sum(accs) / len(accs))


def calibrate_nu(
    model: nn.Module,
    data: ImageDataset,
    max_drop: float = 1.0,
    *,
    grid: Sequence[float] = DEFAULT_GRID,
    refine: int = 0,
    draws: int = 5,
    confidence: float = 0.95,
    seed: int = 0,
    indices: torch.Tensor | None = None,
    batch_size: int = 1000,
) -> Calibration:
    """The largest nu whose clean-accuracy drop (percentage points, on held-out `data`) stays within
    `max_drop` with one-sided confidence `confidence` over `draws` noise draws.

    Walks the increasing `grid` until the first nu whose upper bound exceeds the budget (the drop
    grows with nu), then bisects `refine` times between the last passing and the first failing nu.
    `draws >= 2` is needed for a bound.
    """
    max_drop = check_positive(max_drop, "max_drop")
    check_int(draws, "draws", minimum=2)
    check_int(refine, "refine", minimum=0)
    grid = sorted(_check_nus(grid))
    if grid[0] <= 0:
        raise InputError("calibration grid values must be > 0")
    if not 0.5 <= confidence < 1:
        raise InputError(f"confidence must lie in [0.5, 1), got {confidence}")
    ok = None
    x_all, y_all = data.get(indices)
    clean = 100.0 * _correct_counts(model, x_all, y_all, batch_size) / max(len(y_all), 1)
    tried: list[DropMeasure] = []

    def measure(nu: float) -> DropMeasure:
        m = measure_drop(
            model,
            data,
            nu,
            clean,
            draws=draws,
            confidence=confidence,
            seed=seed + len(tried),
            indices=indices,
            batch_size=batch_size,
        )
        tried.append(m)
        return m

    over = None
    for nu in grid:
        m = measure(nu)
        if m.upper <= max_drop:
            ok = m
        else:
            over = m
            break
    if ok is not None and over is not None:
        for _ in range(refine):
            m = measure((ok.nu + over.nu) / 2)
            if m.upper <= max_drop:
                ok = m
            else:
                over = m
    return Calibration(
        nu=ok.nu if ok is not None else 0.0,
        max_drop=max_drop,
        confidence=confidence,
        clean_accuracy=clean,
        chosen=ok,
        next_over=over,
        tried=tried,
        images=len(y_all),
        draws=draws,
    )
