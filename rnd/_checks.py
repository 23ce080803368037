"""Shared validation of the tensors users and attackers hand to rnd."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from rnd.errors import InputError

#: Slack allowed outside [0, 1] before an input counts as out of range (float rounding).
RANGE_TOL = 1e-6
#: The one dtype of images rnd accepts (the models' dtype); others are rejected, not converted.
IMAGE_DTYPE = torch.float32


def check_images(
    x: object,
    input_shape: Sequence[int] | None = None,
    *,
    name: str = "images",
    allow_empty: bool = False,
) -> torch.Tensor:
    """Check that `x` is a finite float32 batch (N, C, H, W) of pixels in [0, 1].

    Policy: anything else is rejected, never converted or clipped, so a caller's bug is never
    hidden: values outside [0, 1], and other dtypes (float64, float16, bfloat16: the models are
    float32; the caller converts with `x.float()`).
    """
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputError(
            f"{name} must be a floating (float32) tensor of pixels in [0, 1], got dtype {x.dtype}; "
            "convert with x.float() / 255 for uint8 images"
        )
    if x.dtype != IMAGE_DTYPE:
        raise InputError(
            f"{name} must be float32 pixels in [0, 1], got dtype {x.dtype}; convert with x.float()"
        )
    if x.dim() != 4:
        raise InputError(f"{name} must have shape (N, C, H, W), got {tuple(x.shape)}")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        raise InputError(
            f"{name} have shape {tuple(x.shape[1:])} per image but the model expects {tuple(input_shape)}"
        )
    if x.shape[0] == 0 and not allow_empty:
        raise InputError(f"{name} is an empty batch")
    check_finite(x, name)
    if x.numel():
        lo, hi = float(x.min()), float(x.max())
        if lo < -RANGE_TOL or hi > 1 + RANGE_TOL:
            raise InputError(
                f"{name} must lie in [0, 1] (pixel scale), got values in [{lo:.4g}, {hi:.4g}]; "
                "clip with x.clamp(0, 1) or rescale"
            )
    return x


def check_labels(y: object, n: int, num_classes: int | None, *, name: str = "labels") -> torch.Tensor:
    """Check that `y` is an integer vector of length `n` with values in [0, num_classes)."""
    if not isinstance(y, torch.Tensor):
        raise InputError(f"{name} must be a torch.Tensor, got {type(y).__name__}")
    if y.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8, torch.int8):
        raise InputError(f"{name} must be an integer tensor, got dtype {y.dtype}")
    if y.dim() != 1 or y.shape[0] != n:
        raise InputError(f"{name} must have shape ({n},), got {tuple(y.shape)}")
    if num_classes is not None and n and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise InputError(
            f"{name} must lie in [0, {num_classes}), got values in [{int(y.min())}, {int(y.max())}]"
        )
    return y.long()


def _bool_or_text(value: object) -> bool:
    """True for booleans and strings, which float() / int() would silently turn into numbers."""
    if isinstance(value, torch.Tensor):
        return value.dtype == torch.bool
    return isinstance(value, bool | np.bool_ | str | bytes)


def check_real(value: float, name: str) -> float:
    """Check that a scalar is a finite number (not a string or a boolean); returns it as a float."""
    if _bool_or_text(value):
        raise InputError(
            f"{name} must be a number, got {type(value).__name__} {value!r}; pass an int or float"
        )
    try:
        v = float(value)
    except (TypeError, ValueError, RuntimeError):
        raise InputError(f"{name} must be a number, got {value!r}") from None
    if v != v or v in (float("inf"), float("-inf")):
        raise InputError(f"{name} must be finite, got {value!r}")
    return v


def check_positive(value: float, name: str, *, allow_zero: bool = False) -> float:
    """Check that a scalar hyper-parameter is a finite positive number (not a string or a boolean)."""
    v = check_real(value, name)
    if v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise InputError(f"{name} must be {bound}, got {value!r}")
    return v


def check_fraction(value: float, name: str) -> float:
    """Check that a probability or a fraction is a finite number in [0, 1]."""
    v = check_positive(value, name, allow_zero=True)
    if v > 1:
        raise InputError(f"{name} must be in [0, 1], got {value!r}")
    return v


def check_int(value: int, name: str, *, minimum: int | None = 1) -> int:
    """Check that a count is an integer (not a string or a boolean) no smaller than `minimum`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise InputError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if minimum is not None and value < minimum:
        raise InputError(f"{name} must be >= {minimum}, got {value}")
    return value


def check_bool(value: bool, name: str) -> bool:
    """Check that a flag is True or False (a string such as "no" would otherwise count as True)."""
    if not isinstance(value, bool | np.bool_):
        raise InputError(f"{name} must be True or False, got {type(value).__name__} {value!r}")
    return bool(value)


def check_finite(x: torch.Tensor, name: str = "inputs") -> torch.Tensor:
    """Check that every value of `x` is finite; the message says how to find the cause.

    Fast path: the sum of `x` is finite whenever every value is (a NaN or inf anywhere makes it NaN
    or inf), and a sum costs a fifteenth of `isfinite(x).all()`; only a non-finite sum (which huge
    finite values can also give) is confirmed value by value."""
    if x.numel() and not bool(x.sum().isfinite()) and not bool(torch.isfinite(x).all()):
        raise InputError(f"{name} contain NaN or infinite values; check how they were computed")
    return x


def existing_ancestor(path: Path) -> Path:
    """The nearest ancestor of `path` (or `path` itself) that exists; symlinks are followed."""
    p = path
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable_file(path: Path, option: str) -> None:
    # `option` names the file in the message: "--plot", "results database", ...
    """Check that a file can be written at `path` (its folder creatable and writable); writes nothing."""
    path = path.expanduser()
    if path.is_dir():
        raise InputError(f"{option} {path} is a directory, a file name is expected; give a file path")
    base = existing_ancestor(path.parent)
    if not base.is_dir():
        raise InputError(
            f"{option} {path} lies below {base}, which is a file, not a folder; "
            "choose a path in a folder (or remove that file)"
        )
    if not os.access(base, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path}: folder {base} is not writable; choose a writable location")
    if path.exists() and not os.access(path, os.W_OK):
        raise InputError(f"{option} {path} exists and is read-only; choose another path or make it writable")
