"""Model registry: architectures by name, with per-data-set normalisation constants."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch

from rnd.errors import InputError, unknown_name
from rnd.models.cnn import SmallCNN
from rnd.models.layers import Classifier
from rnd.models.resnet import ResNet
from rnd.models.vgg import VGG

ARCHITECTURES: dict[str, Callable[..., Classifier]] = {
    "small-cnn": SmallCNN,
    "vgg-small": partial(VGG, config="vgg-small"),
    "vgg11": partial(VGG, config="vgg11"),
    "vgg16": partial(VGG, config="vgg16"),
    "resnet8": partial(ResNet, blocks=(1, 1, 1)),
    "resnet20": partial(ResNet, blocks=(3, 3, 3)),
}

#: Per-channel (mean, std) of each data set's training split, in pixel units.
DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


#: Largest model build_model makes: 100 M parameters (0.4 GB of float32; vgg11 has 9.2 M).
MAX_PARAMETERS = 100_000_000

#: Inclusive ranges of the integer architecture arguments.
_INT_RANGES: dict[str, tuple[int, int]] = {
    "num_classes": (2, 100_000),
    "width": (1, 4096),
    "hidden": (1, 65536),
}
_CHANNELS, _SIDE, _STAGES, _BLOCKS = (1, 64), (4, 4096), (1, 8), (0, 64)
#: Every argument check_arch_kwargs validates; an architecture's open arguments must be among them.
VALIDATED_ARGUMENTS = frozenset({"input_shape", "blocks", "mean", "std", *_INT_RANGES})


def _open_parameters(name: str) -> dict[str, inspect.Parameter]:
    ctor = ARCHITECTURES[name]
    bound = set(ctor.keywords) if isinstance(ctor, partial) else set()
    func = ctor.func if isinstance(ctor, partial) else ctor
    return {k: p for k, p in inspect.signature(func).parameters.items() if k not in bound and k != "self"}


def arch_arguments(name: str) -> list[str]:
    """The keyword arguments architecture `name` accepts (those its registry entry leaves open)."""
    return list(_open_parameters(name))


def _int(value: Any, key: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"architecture argument {key} must be an integer, got {value!r}")
    if not lo <= value <= hi:
        raise InputError(f"architecture argument {key} must be in [{lo}, {hi}], got {value}")
    return value


def _ints(value: Any, key: str, length: tuple[int, int], lo: int, hi: int) -> list[int]:
    if not isinstance(value, list | tuple) or not length[0] <= len(value) <= length[1]:
        n = str(length[0]) if length[0] == length[1] else f"{length[0]} to {length[1]}"
        raise InputError(f"architecture argument {key} must be a list of {n} integers, got {value!r}")
    return [_int(v, f"{key}[{i}]", lo, hi) for i, v in enumerate(value)]


def _floats(value: Any, key: str, length: int, positive: bool) -> list[float]:
    if not isinstance(value, list | tuple) or len(value) != length:
        raise InputError(f"architecture argument {key} must be a list of {length} numbers (one per channel)")
    for v in value:
        number = isinstance(v, int | float) and not isinstance(v, bool)
        if not number or not math.isfinite(v) or (positive and v <= 0):
            kind = "positive finite numbers" if positive else "finite numbers"
            raise InputError(f"architecture argument {key} must hold {kind}, got {value!r}")
    return [float(v) for v in value]


def _describe(kwargs: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in kwargs.items() if k not in ("mean", "std"))


def check_arch_kwargs(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Validate the arguments of architecture `name` (types, ranges, size) before anything is built.

    Raises `InputError` for an unknown key, a value of the wrong type or out of range, or a model
    above `MAX_PARAMETERS` (counted on the meta device: no memory is allocated).
    """
    if name not in ARCHITECTURES:
        raise unknown_name("model", name, list(ARCHITECTURES))
    allowed = arch_arguments(name)
    unknown = sorted(str(k) for k in kwargs if k not in allowed)
    if unknown:
        raise InputError(
            f"architecture {name!r} has no argument(s) {', '.join(unknown)}; it takes: {', '.join(allowed)}"
        )
    out = dict(kwargs)
    default_shape = _open_parameters(name)["input_shape"].default
    shape = _ints(out.get("input_shape", default_shape), "input_shape", (3, 3), 1, _SIDE[1])
    _int(shape[0], "input_shape[0] (channels)", *_CHANNELS)
    for i in (1, 2):
        _int(shape[i], f"input_shape[{i}]", *_SIDE)
    for key, (lo, hi) in _INT_RANGES.items():
        if key in out:
            _int(out[key], key, lo, hi)
    if "blocks" in out:
        _ints(out["blocks"], "blocks", _STAGES, *_BLOCKS)
    for key, positive in (("mean", False), ("std", True)):
        if out.get(key) is not None:
            out[key] = _floats(out[key], key, shape[0], positive)
    with torch.device("meta"):  # shapes only: a 720 GB request costs nothing here
        probe = ARCHITECTURES[name](**out)
    n = sum(p.numel() for p in probe.parameters())
    if n > MAX_PARAMETERS:
        raise InputError(
            f"architecture {name!r} ({_describe(out)}) would have {n:,} parameters ({4 * n / 1e9:.3g} "
            f"GB of float32), above the cap of {MAX_PARAMETERS:,}; use a smaller width or input"
        )
    return out


def build_model(
    name: str,
    input_shape: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    dataset: str | None = None,
    **kwargs: Any,
) -> Classifier:
    """Build an untrained model by name; `dataset` picks its normalisation constants.

    The arguments are checked first (`check_arch_kwargs`: types, ranges, at most `MAX_PARAMETERS`).
    The returned model records `arch_name` and `arch_kwargs`, which checkpoints store so the model
    can be rebuilt without pickling.
    """
    if name not in ARCHITECTURES:
        raise unknown_name("model", name, list(ARCHITECTURES))
    if dataset in DATASET_STATS and "mean" not in kwargs:
        kwargs["mean"], kwargs["std"] = (list(v) for v in DATASET_STATS[dataset])
    shape = list(input_shape) if isinstance(input_shape, list | tuple) else input_shape
    return build_from_arguments(name, {"input_shape": shape, "num_classes": num_classes, **kwargs})


def build_from_arguments(name: str, arch_kwargs: dict[str, Any]) -> Classifier:
    """Build architecture `name` from its full arguments (what a checkpoint stores), checked first."""
    arch_kwargs = check_arch_kwargs(name, arch_kwargs)
    model = ARCHITECTURES[name](**arch_kwargs)
    model.arch_name = name  # type: ignore[assignment]
    model.arch_kwargs = arch_kwargs  # type: ignore[assignment]
    return model
