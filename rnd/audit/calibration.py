"""Calibration: the defense's strength set to a clean-accuracy budget. `calibrate_defense` finds
the largest value of the strength parameter whose one-sided upper confidence bound (Student's t)
on the accuracy drop stays within `max_drop` points; `calibrate` keeps each calibration in the
results store under the sha256 of what was calibrated, so a resumed audit reuses it.

May import: rnd.evaluation (accuracy, store), the layers below it.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rnd._checks import check_int, check_positive
from rnd.data.base import ImageDataset
from rnd.defenses import DefenseSpec, build_defense
from rnd.errors import InputError
from rnd.evaluation.store import ResultsStore, check_database
from rnd.evaluation.strength import (
    RND,
    check_nus,
    correct_counts,
    defense_spec,
    draw_accuracies,
    summary_of,
    with_value,
)
from rnd.stats import t_quantile


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
    accs = draw_accuracies(model, data, value, draws, seed, indices, batch_size, spec, param)
    drops = [clean_accuracy - a for a in accs]
    s = summary_of(value, drops)
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
    clean = 100.0 * correct_counts(model, x_all, y_all, batch_size) / max(len(y_all), 1)
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
    grid = check_nus(grid)
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


#: The calibration `calibrate` runs, part of every stored calibration's key: a change to how it
#: measures (draws, bisection steps, bound, grid) must change this text, so that a store's
#: calibrations made the old way are not reused.
CALIBRATION_METHOD = "calibrate_defense refine=3 draws=5 confidence=0.95 default grid (v1)"


def calibration_request(
    model_sha256: str, data: Any, defense: str, param: str, max_drop: float, images: int, seed: int
) -> dict[str, Any]:
    """What a calibration depends on: the model (sha256 of its weights), the test images it uses
    (sha256 of their pixels and labels, so a changed data folder is a new calibration), the
    defense and parameter, the accuracy budget, the seed and `CALIBRATION_METHOD`."""
    n = min(images, len(data))
    digest = hashlib.sha256()
    for part in (data.images[:n], data.labels[:n]):
        digest.update(str(tuple(part.shape)).encode() + str(part.dtype).encode())
        digest.update(part.contiguous().numpy().tobytes())
    return {
        "model_sha256": model_sha256,
        "data": {"name": data.name, "split": data.split, "images": n, "sha256": digest.hexdigest()},
        "defense": defense,
        "param": param,
        "max_drop": float(max_drop),
        "seed": seed,
        "method": CALIBRATION_METHOD,
    }


def calibration_key(request: dict[str, Any]) -> str:
    """The stored calibration's key: sha256 of the canonical JSON of its request."""
    return hashlib.sha256(json.dumps(request, sort_keys=True).encode()).hexdigest()


def stored_calibration(db: str | Path | None, key: str) -> dict[str, Any] | None:
    """The calibration kept under `key` in the results store `db` (read-only; None when there is
    no such file or no such calibration)."""
    if db is None or not check_database(db):
        return None
    with ResultsStore(db, readonly=True) as store:
        return store.calibration(key)


def calibrate(
    model: Any, data: Any, defense: str, param: str, max_drop: float, images: int, seed: int
) -> tuple[str, dict[str, Any]]:
    """The calibrated spec and what was measured (`calibrate_defense` on the first `images` test
    images, 5 draws, 3 bisection steps); InputError when no strength keeps the drop in budget."""
    idx = torch.arange(min(images, len(data)))
    cal = calibrate_defense(model, data, defense, param, max_drop, refine=3, seed=seed, indices=idx)
    info = {
        "defense": cal.defense,
        "param": cal.param,
        "value": cal.value,
        "spec": cal.spec,
        "max_drop": cal.max_drop,
        "confidence": cal.confidence,
        "clean_accuracy": cal.clean_accuracy,
        "images": cal.images,
        "draws": cal.draws,
        "tried": [asdict(t) for t in sorted(cal.tried, key=lambda t: t.value)],
    }
    if cal.spec is None:
        raise InputError(
            f"no {param} of {defense} keeps the clean-accuracy drop within {max_drop:g} points "
            f"(the smallest tried costs {cal.next_over.drop:.2f}); raise --max-drop"  # type: ignore[union-attr]
        )
    return cal.spec, info
