"""Clean accuracy under RND against the noise level nu, and choosing nu for an accuracy budget.

RND's price is clean accuracy: ``|f_nu(x) - f(x)| <= nu L0 sqrt(d)`` (Qin et al., NeurIPS 2021,
section 4). `accuracy_vs_nu` measures it (mean and spread over independent noise draws) for one or
more models, the seed's "clean accuracy for different models" figure; `calibrate_nu` picks the
largest nu whose accuracy drop stays within a budget with a one-sided confidence bound.

The same holds for any defense with a strength parameter (feature noise's `sigma`, low-confidence
noise's `nu` or `tau`): `accuracy_vs_param`, `measure_defense_drop` and `calibrate_defense` take a
defense spec ("feature-noise", "feature-noise:layers=stages") and the name of the parameter to vary,
and build each defense with `rnd.defenses.build_defense`. For RND the two give identical numbers.
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
from rnd.defenses import DEFENSES, DefenseSpec, build_defense
from rnd.errors import InputError, unknown_name
from rnd.models.predict import predict
from rnd.stats import t_quantile


@dataclass
class NuAccuracy:
    """Accuracy (in %) of one model under RND at one nu, over `len(draws)` noise draws."""

    nu: float
    mean: float
    std: float
    draws: list[float] = field(default_factory=list)


def _correct_counts(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> int:
    return int((predict(model, x, batch_size) == y).sum())


#: RND with nu left open: the spec every nu-only function here uses.
RND = DefenseSpec("rnd")


def defense_spec(defense: str | DefenseSpec, param: str) -> DefenseSpec:
    """Check `defense` (a spec or its text, without a value for `param`) and that `param` is one of
    its public parameters; returns the parsed spec."""
    spec = DefenseSpec.parse(defense) if isinstance(defense, str) else defense
    if not isinstance(spec, DefenseSpec):
        raise InputError(f"defense must be a spec such as 'feature-noise', got {defense!r}")
    if spec.name not in DEFENSES:
        raise unknown_name("defense", spec.name, list(DEFENSES))
    public = DEFENSES[spec.name].public
    if not isinstance(param, str) or param not in public:
        raise InputError(
            f"defense {spec.name!r} has no public parameter {param!r} to calibrate; "
            f"choose one of: {', '.join(public) or '(none)'}"
        )
    if param in spec.params:
        raise InputError(f"defense spec {str(spec)!r} fixes {param}; leave it out, it is the one varied")
    return spec


def with_value(spec: DefenseSpec, param: str, value: float) -> DefenseSpec:
    """`spec` with `param` set to `value` (the spec text to use for the chosen value)."""
    return DefenseSpec(spec.name, {**spec.params, param: value})


def _draw_accuracies(
    model: nn.Module,
    data: ImageDataset,
    nu: float,
    draws: int,
    seed: int,
    indices: torch.Tensor | None,
    batch_size: int,
    spec: DefenseSpec = RND,
    param: str = "nu",
) -> list[float]:
    """Accuracy in % for each of `draws` noise draws of defense `spec` with `param = nu` (one draw
    when the value is 0, taken as no defense, or when the defense is not randomised)."""
    if nu == 0:
        defended: nn.Module = model
        draws = 1
    else:
        defended = build_defense(with_value(spec, param, nu), model, seed=seed)
        if not getattr(defended, "randomised", True):
            draws = 1
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


def accuracy_vs_param(
    model: nn.Module,
    data: ImageDataset,
    defense: str | DefenseSpec,
    param: str,
    values: Sequence[float],
    *,
    draws: int = 5,
    seed: int = 0,
    indices: torch.Tensor | None = None,
    batch_size: int = 1000,
) -> list[NuAccuracy]:
    """`accuracy_vs_nu` for any defense: clean accuracy (%) behind `defense` (a spec without
    `param`, e.g. "feature-noise") at each value of `param`; the rows' `nu` field holds the value.
    Value 0 is taken as no defense (one draw)."""
    spec = defense_spec(defense, param)
    if len(values) == 0:
        raise InputError(f"give at least one {param} value")
    values = [check_positive(v, param, allow_zero=True) for v in values]
    check_int(draws, "draws")
    return [
        _summary(v, _draw_accuracies(model, data, v, draws, seed + i, indices, batch_size, spec, param))
        for i, v in enumerate(values)
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


@dataclass
class ParamDrop:
    """Accuracy drop (percentage points) of a defense at `value` of its strength parameter."""

    value: float
    drop: float  # mean over draws
    std: float
    upper: float  # one-sided upper confidence bound of the mean drop
    accuracy: float  # mean accuracy under the defense, %


@dataclass
class DefenseCalibration:
    """The largest value of `param` whose drop's upper bound is within `max_drop` for `defense`
    (the spec without `param`); `spec` is the text of the defense to use (None: nothing fits)."""

    defense: str
    param: str
    value: float
    spec: str | None
    max_drop: float
    confidence: float
    clean_accuracy: float
    chosen: ParamDrop | None  # None when even the smallest value tried exceeds the budget
    next_over: ParamDrop | None  # the smallest value tried above `value` that exceeded it (None: none did)
    tried: list[ParamDrop] = field(default_factory=list)
    images: int = 0
    draws: int = 0


#: Default grids of `calibrate_defense` per (defense, parameter). Feature noise is in feature units
#: (the penultimate ReLU features of the default CNN are of order 1).
DEFAULT_GRIDS: dict[tuple[str, str], tuple[float, ...]] = {
    ("rnd", "nu"): DEFAULT_GRID,
    ("low-confidence", "nu"): DEFAULT_GRID,
    ("low-confidence", "tau"): (0.3, 0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.99, 1.0),
    ("feature-noise", "sigma"): (0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0, 1.5, 2.0, 3.0, 5.0),
}


def measure_defense_drop(
    model: nn.Module,
    data: ImageDataset,
    defense: str | DefenseSpec,
    param: str,
    value: float,
    clean_accuracy: float,
    *,
    draws: int = 5,
    confidence: float = 0.95,
    seed: int = 0,
    indices: torch.Tensor | None = None,
    batch_size: int = 1000,
) -> ParamDrop:
    """Drop = clean accuracy - accuracy under `defense` with `param = value`, per draw; mean, std
    and a one-sided t bound. Draw i's defense is built by `build_defense(..., seed=seed)` once and
    queried `draws` times (fresh noise each pass)."""
    spec = defense_spec(defense, param)
    value = check_positive(value, param, allow_zero=True)
    accs = _draw_accuracies(model, data, value, draws, seed, indices, batch_size, spec, param)
    drops = [clean_accuracy - a for a in accs]
    s = _summary(value, drops)
    upper = s.mean + (
        t_quantile(confidence, len(drops) - 1) * s.std / math.sqrt(len(drops)) if len(drops) > 1 else 0.0
    )
    return ParamDrop(value, s.mean, s.std, upper, sum(accs) / len(accs))


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
    m = measure_defense_drop(
        model,
        data,
        RND,
        "nu",
        nu,
        clean_accuracy,
        draws=draws,
        confidence=confidence,
        seed=seed,
        indices=indices,
        batch_size=batch_size,
    )
    return _as_drop_measure(m)


def _as_drop_measure(m: ParamDrop | None) -> DropMeasure | None:
    return None if m is None else DropMeasure(m.value, m.drop, m.std, m.upper, m.accuracy)


def _midpoint(a: float, b: float) -> float:
    """(a + b) / 2 to 6 significant digits, so specs read 0.775, not 0.7749999999999999."""
    return float(f"{(a + b) / 2:.6g}")


def calibrate_defense(
    model: nn.Module,
    data: ImageDataset,
    defense: str | DefenseSpec,
    param: str,
    max_drop: float = 1.0,
    *,
    grid: Sequence[float] | None = None,
    refine: int = 0,
    draws: int = 5,
    confidence: float = 0.95,
    seed: int = 0,
    indices: torch.Tensor | None = None,
    batch_size: int = 1000,
) -> DefenseCalibration:
    """The largest value of `defense`'s strength parameter `param` whose clean-accuracy drop
    (percentage points, on held-out `data`) stays within `max_drop` with one-sided confidence
    `confidence` over `draws` noise draws; e.g.
    `calibrate_defense(model, data, "feature-noise", "sigma", max_drop=1.0)`.

    `defense` is a spec without `param` (its other parameters are held fixed:
    "feature-noise:layers=stages"); `param` must be one of its public parameters, and the drop is
    assumed to grow with it. Walks the increasing `grid` (default: `DEFAULT_GRIDS`) until the first
    value whose upper bound exceeds the budget, then bisects `refine` times between the last passing
    and the first failing value (midpoints to 6 significant digits). The i-th value measured uses
    defense seed `seed + i`.
    `draws >= 2` is needed for a bound. The result's `spec` is the text to use
    (canonical, e.g. `feature-noise:sigma=0.7`).
    """
    spec = defense_spec(defense, param)
    max_drop = check_positive(max_drop, "max_drop")
    check_int(draws, "draws", minimum=2)
    check_int(refine, "refine", minimum=0)
    if grid is None:
        if (spec.name, param) not in DEFAULT_GRIDS:
            raise InputError(f"no default grid for {spec.name} {param}; give grid=[...] (values > 0)")
        grid = DEFAULT_GRIDS[spec.name, param]
    if len(grid) == 0:
        raise InputError(f"give at least one {param} value in the grid")
    grid = sorted(check_positive(v, param, allow_zero=True) for v in grid)
    if grid[0] <= 0:
        raise InputError("calibration grid values must be > 0")
    if not 0.5 <= confidence < 1:
        raise InputError(f"confidence must lie in [0.5, 1), got {confidence}")
    for value in grid:  # a bad fixed parameter or grid value fails now, before any measuring
        build_defense(with_value(spec, param, value), model, seed=0)
    ok = None
    x_all, y_all = data.get(indices)
    clean = 100.0 * _correct_counts(model, x_all, y_all, batch_size) / max(len(y_all), 1)
    tried: list[ParamDrop] = []

    def measure(value: float) -> ParamDrop:
        m = measure_defense_drop(
            model,
            data,
            spec,
            param,
            value,
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
    for value in grid:
        m = measure(value)
        if m.upper <= max_drop:
            ok = m
        else:
            over = m
            break
    if ok is not None and over is not None:
        for _ in range(refine):
            mid = _midpoint(ok.value, over.value)
            if not ok.value < mid < over.value:
                break
            m = measure(mid)
            if m.upper <= max_drop:
                ok = m
            else:
                over = m
    return DefenseCalibration(
        defense=str(spec),
        param=param,
        value=ok.value if ok is not None else 0.0,
        spec=str(with_value(spec, param, ok.value)) if ok is not None else None,
        max_drop=max_drop,
        confidence=confidence,
        clean_accuracy=clean,
        chosen=ok,
        next_over=over,
        tried=tried,
        images=len(y_all),
        draws=draws,
    )


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
    `draws >= 2` is needed for a bound. (`calibrate_defense` for RND, with nu's names.)
    """
    max_drop = check_positive(max_drop, "max_drop")
    check_int(draws, "draws", minimum=2)
    grid = _check_nus(grid)
    cal = calibrate_defense(
        model,
        data,
        RND,
        "nu",
        max_drop,
        grid=grid,
        refine=refine,
        draws=draws,
        confidence=confidence,
        seed=seed,
        indices=indices,
        batch_size=batch_size,
    )
    converted = {id(m): _as_drop_measure(m) for m in cal.tried}  # keeps chosen / next_over in tried
    return Calibration(
        nu=cal.value,
        max_drop=cal.max_drop,
        confidence=cal.confidence,
        clean_accuracy=cal.clean_accuracy,
        chosen=converted.get(id(cal.chosen)),
        next_over=converted.get(id(cal.next_over)),
        tried=list(converted.values()),  # type: ignore[arg-type]
        images=cal.images,
        draws=cal.draws,
    )
