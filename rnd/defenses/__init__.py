"""Defenses: one file per defense on `Defense`, a registry, and one constructor `build_defense`."""

from __future__ import annotations

import inspect
from typing import Any

from torch import nn

from rnd.defenses.aaa import AAA
from rnd.defenses.base import Defense, DefenseSpec
from rnd.defenses.feature_noise import FeatureNoiseDefense
from rnd.defenses.input_noise import RandomNoiseDefense
from rnd.defenses.logit_scaling import RandomLogitScaling
from rnd.defenses.low_confidence import LowConfidenceNoise
from rnd.defenses.none import NoDefense
from rnd.defenses.stateful import Blacklight
from rnd.errors import InputError, unknown_name

#: Every registered defense by spec name (`build_defense` builds one from a spec such as "rnd:nu=0.02").
DEFENSES: dict[str, type[Defense]] = {
    cls.name: cls
    for cls in (
        NoDefense,
        RandomNoiseDefense,
        AAA,
        RandomLogitScaling,
        FeatureNoiseDefense,
        LowConfidenceNoise,
        Blacklight,
    )
}


def build_defense(spec: str | DefenseSpec, model: nn.Module, seed: int | None = None) -> Defense:
    """The defense `spec` (a `DefenseSpec` or its text, e.g. "rnd:nu=0.02", "none") around `model`.
    `seed` seeds the defense's own generator (a randomised defense's noise, a detector's secret salt;
    OS entropy when None); it goes to every defense whose constructor takes `seed`."""
    s = DefenseSpec.parse(spec) if isinstance(spec, str) else spec
    if s.name not in DEFENSES:
        raise unknown_name("defense", s.name, list(DEFENSES))
    cls = DEFENSES[s.name]
    kwargs: dict[str, Any] = dict(s.params)
    if "seed" in kwargs:
        raise InputError(f"defense {s}: the seed is not a spec parameter (it comes from the evaluation)")
    if "seed" in inspect.signature(cls.__init__).parameters:
        kwargs["seed"] = seed
    try:
        return cls(model, **kwargs)
    except TypeError as exc:
        known = ", ".join(cls.public) or "(none)"
        raise InputError(f"defense {s}: {exc}; its parameters are: {known}") from None


def canonical_defense(spec: str) -> str:
    """The canonical text of a defense spec (parameters sorted); RND at nu = 0 is `none` (the same
    answers). Raises InputError for text that is not a spec."""
    s = DefenseSpec.parse(spec)
    if s.name == "rnd" and set(s.params) == {"nu"} and s.params["nu"] == 0:
        return "none"
    return str(s)


def known_defense(spec: str) -> str:
    """`canonical_defense` of a spec whose name is one of `DEFENSES` (InputError naming them
    otherwise): what an attacker can be told a server runs."""
    text = canonical_defense(spec)
    name = DefenseSpec.parse(text).name
    if name not in DEFENSES:
        raise unknown_name("defense", name, list(DEFENSES))
    return text


def legacy_defense(nu: float) -> str:
    """The spec of a cell written when the defense was a bare nu."""
    return "none" if nu == 0 else canonical_defense(f"rnd:nu={float(nu)!r}")


def rnd_nu(defense: str) -> float | None:
    """nu when `defense` is plain RND (`rnd:nu=X`) or `none` (0); None for any other defense."""
    s = DefenseSpec.parse(defense)
    if s.name == "none" and not s.params:
        return 0.0
    nu = s.params.get("nu")
    if s.name == "rnd" and set(s.params) == {"nu"} and isinstance(nu, int | float):
        return float(nu)
    return None


__all__ = [
    "AAA",
    "DEFENSES",
    "Blacklight",
    "Defense",
    "DefenseSpec",
    "FeatureNoiseDefense",
    "LowConfidenceNoise",
    "NoDefense",
    "RandomLogitScaling",
    "RandomNoiseDefense",
    "build_defense",
]
