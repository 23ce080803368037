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

import torch
from torch import nn

from rnd._checks import check_int, check_positive
from rnd.data.base import ImageDataset
from rnd.defenses import DEFENSES, DefenseSpec, build_defense
from rnd.errors import InputError, unknown_name
from rnd.models.predict import predict


@dataclass
class NuAccuracy:
    """Accuracy (in %) of one model under RND at one nu, over `len(draws)` noise draws."""

    nu: float
    mean: float
    std: float
    draws: list[float] = field(default_factory=list)


def correct_counts(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> int:
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


def draw_accuracies(
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
            correct += correct_counts(defended, x, y, batch_size)
            total += len(y)
        out.append(100.0 * correct / max(total, 1))
    return out


def summary_of(nu: float, values: list[float]) -> NuAccuracy:
    mean = sum(values) / len(values)
    std = math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1)) if len(values) > 1 else 0.0
    return NuAccuracy(nu, mean, std, values)


def check_nus(nus: Sequence[float]) -> list[float]:
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
    nus = check_nus(nus)
    check_int(draws, "draws")
    return [
        summary_of(nu, draw_accuracies(model, data, nu, draws, seed + i, indices, batch_size))
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
        summary_of(v, draw_accuracies(model, data, v, draws, seed + i, indices, batch_size, spec, param))
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


# --- calibration ------------------------------------------------------------------------------------
