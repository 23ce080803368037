"""Randomized feature defense: Gaussian noise on hidden features, `h(x) + sigma * v`, `v ~ N(0, I)`.

Reference: Nguyen et al., "Understanding the Robustness of Randomized Feature Defense Against
Query-Based Adversarial Attacks" (ICLR 2024). Noise of a fixed, absolute standard deviation is
added to the features at chosen hidden layers on every query (nothing is clipped: features have no
valid range); the authors' code offers the outputs of every stage ("hidden_feature") or the final
features before the classifier head, and the paper sets the scale for a fixed clean-accuracy drop
(1 or 2 points). Calibrate `sigma` with `rnd.audit.calibration.calibrate_defense`.

The noise enters through forward hooks on the wrapped model's submodules. They stay registered
while the defense lives (removed when it is garbage collected) and add noise only inside this
defense's own forward, on the calling thread: the bare model, other defenses around the same model
and other threads see clean features. A copy (deepcopy, pickle) of the model carries inert hooks.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from rnd._checks import check_positive
from rnd._rng import DeviceGenerators, own_generator
from rnd.defenses.base import Defense
from rnd.errors import InputError

#: `layers` value meaning every named layer except "penultimate" (the outputs of the stages).
STAGES = "stages"

#: Per thread: the tokens of the feature-noise defenses whose forward is running on it.
_ACTIVE = threading.local()
_TOKENS = itertools.count(1)


def _active() -> set[int]:
    tokens = getattr(_ACTIVE, "tokens", None)
    if tokens is None:
        tokens = _ACTIVE.tokens = set()
    return tokens


def _inert_hook() -> _InertHook:
    return _InertHook()


class _InertHook:
    """What a copied model's hook becomes: it changes nothing."""

    def __call__(self, module: nn.Module, inputs: Any, output: Any) -> None:
        return None

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_inert_hook, ())


class _NoiseHook:
    """Forward hook adding `sigma * v` to a module's output while its defense's token is active.

    Holds no reference to the defense (so the defense can be collected and its hooks removed)."""

    def __init__(self, token: int, sigma: float, generators: DeviceGenerators) -> None:
        self.token, self.sigma, self.generators = token, sigma, generators

    def __call__(self, module: nn.Module, inputs: Any, output: Any) -> Any:
        if self.token not in _active() or not isinstance(output, torch.Tensor):
            return None
        g = self.generators.get(output.device)
        dtype = output.dtype if output.dtype in (torch.float32, torch.float64) else torch.float32
        v = torch.randn(output.shape, generator=g, device=output.device, dtype=dtype)
        return output + (v * self.sigma).to(output.dtype)

    def __reduce__(self) -> tuple[Any, tuple[()]]:
        return (_inert_hook, ())


def _remove(handles: list[RemovableHandle]) -> None:
    for h in handles:
        h.remove()


def named_feature_layers(model: nn.Module) -> dict[str, str]:
    """The model's named hidden layers (`Classifier.feature_layers()`), or {} for other modules."""
    fn = getattr(model, "feature_layers", None)
    return dict(fn()) if callable(fn) else {}


def resolve_layers(model: nn.Module, layers: str | Sequence[str]) -> dict[str, str]:
    """Friendly name (or submodule path) -> submodule path for each requested layer, in order.

    `layers` is one name, names joined by "+" ("stage1+penultimate"), a sequence of names, or
    "stages" (every named layer but "penultimate"). A name the model does not have raises
    `InputError` listing the valid ones."""
    names = [p.strip() for p in layers.split("+")] if isinstance(layers, str) else list(layers)
    if not names or any(not isinstance(n, str) or not n.strip() for n in names):
        raise InputError(f"layers must be layer names joined by '+', got {layers!r}")
    named = named_feature_layers(model)
    modules = dict(model.named_modules())
    out: dict[str, str] = {}
    for name in (n.strip() for n in names):
        if name == STAGES:
            stages = {k: v for k, v in named.items() if k != "penultimate"}
            if not stages:
                raise InputError(f"the model ({type(model).__name__}) names no stages; give layer names")
            out.update(stages)
        elif name in named:
            out[name] = named[name]
        elif name in modules and name:
            out[name] = name
        else:
            valid = ", ".join([*named, STAGES]) if named else "(none named; give submodule paths)"
            raise InputError(
                f"the model ({type(model).__name__}) has no feature layer {name!r}; "
                f"choose from: {valid} (or a submodule path such as {next(iter(named.values()), 'body.0')!r})"
            )
    return out


class FeatureNoiseDefense(Defense):
    """Wrap `model` so the features at `layers` get fresh `sigma * v`, `v ~ N(0, I)`, per image.

    Args:
        model: the classifier; its named layers come from `model.feature_layers()` (rnd's models).
        sigma: noise standard deviation in feature units (absolute, as in the authors' code; the
            feature scale differs per layer and model, so calibrate it); `sigma = 0` is the identity.
        layers: "penultimate" (default: the input of the final linear layer), "stages" (after
            each stage), or names / submodule paths joined by "+" ("stage1+stage2").
        generator: the defense's own `torch.Generator` (default: seeded from OS entropy).
        seed: shortcut for a generator seeded with this value (reproducible experiments).

    Spec: `feature-noise:sigma=0.5` or `feature-noise:layers=stages,sigma=0.1`; randomised;
    public parameters: sigma, layers.

    Example:
        >>> defended = FeatureNoiseDefense(model, sigma=0.5)
        >>> logits = defended(images)  # noise on the penultimate features, fresh per call
    """

    name = "feature-noise"
    randomised = True
    public = ("sigma", "layers")

    def __init__(
        self,
        model: nn.Module,
        sigma: float,
        layers: str | Sequence[str] = "penultimate",
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        generator = own_generator(generator, seed)
        if not isinstance(layers, str) and not (
            isinstance(layers, Sequence) and all(isinstance(n, str) for n in layers)
        ):
            raise InputError(f"layers must be layer names joined by '+', got {layers!r}")
        self.model = model
        self.sigma = check_positive(sigma, "sigma", allow_zero=True)
        self.paths = resolve_layers(model, layers)
        self.layers = "+".join(
            dict.fromkeys(n.strip() for n in (layers.split("+") if isinstance(layers, str) else layers))
        )
        self.generator = generator
        self._token = next(_TOKENS)
        generators = DeviceGenerators(generator)
        handles = [
            model.get_submodule(path).register_forward_hook(_NoiseHook(self._token, self.sigma, generators))
            for path in dict.fromkeys(self.paths.values())
        ]
        weakref.finalize(self, _remove, handles)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.sigma == 0:
            return self.model(x)
        active = _active()
        if self._token in active:  # re-entered (the model calls itself): noise is already on
            return self.model(x)
        active.add(self._token)
        try:
            return self.model(x)
        finally:
            active.discard(self._token)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}, layers={self.layers!r} ({', '.join(self.paths.values())})"
