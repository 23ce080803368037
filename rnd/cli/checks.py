"""Checks the CLI runs before any work: where results go, bounded numbers, model and data set agree.

Each check raises an `InputError` (or click's `BadParameter`) whose one-line message names the
problem and the way out; none of them creates or changes a file.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import click

from rnd._checks import check_writable_file, existing_ancestor
from rnd.errors import InputError
from rnd.evaluation.runners import RUNNERS, make_runner
from rnd.evaluation.spec import MAX_BUDGET, MAX_COUNT, MAX_IMAGES, MAX_SEED
from rnd.models import checkpoint_paths
from rnd.models.compat import check_model_data
from rnd.oip import clean_key

__all__ = [
    "MAX_BUDGET",
    "MAX_COUNT",
    "MAX_IMAGES",
    "MAX_SEED",
    "FiniteFloat",
    "allow_mismatch_option",
    "check_model_data",
    "check_output_checkpoint",
    "check_writable_dir",
    "check_writable_file",
    "count",
    "seed_option",
]


def check_writable_dir(path: Path, option: str) -> None:
    """Check that folder `path` exists or can be created, and is writable; creates nothing."""
    path = path.expanduser()
    if path.exists() and not path.is_dir():
        raise InputError(f"{option} {path} is a file, a folder is expected; give a folder path")
    base = existing_ancestor(path)
    if not base.is_dir():
        raise InputError(
            f"{option} {path} lies below {base}, which is a file, not a folder; choose another folder"
        )
    if not os.access(base, os.W_OK | os.X_OK):
        raise InputError(f"{option} {path}: folder {base} is not writable; choose a writable location")


def check_output_checkpoint(path: str | Path, option: str = "--out") -> None:
    """Check that a checkpoint (NAME.safetensors + NAME.json) can be saved at `path`, before training."""
    for file in checkpoint_paths(path):
        check_writable_file(file, option)


class FiniteFloat(click.ParamType):
    """A finite float (NaN and infinities refused) within [min, max]; `min_open` excludes min."""

    name = "float"

    def __init__(
        self,
        min: float | None = None,
        max: float | None = None,
        *,
        min_open: bool = False,
        max_open: bool = False,
    ) -> None:
        self.min, self.max, self.min_open, self.max_open = min, max, min_open, max_open

    def _range(self) -> str:
        lo = "" if self.min is None else f"{self.min:g} {'<' if self.min_open else '<='} "
        hi = "" if self.max is None else f" {'<' if self.max_open else '<='} {self.max:g}"
        return f"{lo}x{hi}"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            v = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(v):
            self.fail(f"{value!r} is not finite; give a number with {self._range()}", param, ctx)
        low = self.min is not None and (v < self.min or (self.min_open and v == self.min))
        high = self.max is not None and (v > self.max or (self.max_open and v == self.max))
        if low or high:
            self.fail(f"{v:g} is out of range; give a number with {self._range()}", param, ctx)
        return v


def count(minimum: int = 1, maximum: int = MAX_COUNT) -> click.IntRange:
    """An integer option bounded to what the machine can represent and finish."""
    return click.IntRange(min=minimum, max=maximum)


def key_option(f: Any) -> Any:
    """`--key` (or $RND_KEY): an API key for --url, its surrounding blanks removed, never echoed."""

    def clean(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
        return None if value is None else clean_key(value)

    return click.option(
        "--key", envvar="RND_KEY", default=None, callback=clean, help="API key for --url (or $RND_KEY)"
    )(f)


def seed_option(f: Any) -> Any:
    """`--seed` in [0, 2**63 - 1] (what SQLite and torch generators hold)."""
    return click.option("--seed", type=count(0, MAX_SEED), default=0, show_default=True)(f)


def allow_mismatch_option(f: Any) -> Any:
    """`--allow-dataset-mismatch`: use a checkpoint on another data set of the same shape and classes."""
    return click.option(
        "--allow-dataset-mismatch",
        "allow_mismatch",
        is_flag=True,
        help="use a checkpoint trained on another data set (same image shape and class count)",
    )(f)


def runner_options(f: Any) -> Any:
    """--runner inprocess|ray, and --workers / --ray-address for Ray (`rnd sweep`, `rnd audit`)."""
    f = click.option(
        "--ray-address",
        default=None,
        help="--runner ray: address of a Ray cluster [default: start a local Ray]",
    )(f)
    f = click.option(
        "--workers",
        type=click.IntRange(min=1),
        default=None,
        help="--runner ray: most cells in flight, 1 torch thread each [default: CPU count]",
    )(f)
    return click.option(
        "--runner",
        "runner_name",
        type=click.Choice(sorted(RUNNERS)),
        default="inprocess",
        show_default=True,
        help="where cells run (ray: in parallel, on this machine or a cluster)",
    )(f)


def make_cli_runner(runner_name: str, workers: int | None, ray_address: str | None, remote: bool) -> Any:
    """The runner the options name; Ray options without --runner ray, or Ray for an endpoint's
    cells (`remote`: the API key stays in this process), are refused in one line."""
    if runner_name != "ray" and (workers is not None or ray_address is not None):
        raise InputError("--workers and --ray-address apply to --runner ray only")
    if runner_name == "ray" and remote:
        raise InputError(
            "an endpoint's cells run with --runner inprocess (its API key stays in this process)"
        )
    return make_runner(
        runner_name, **({"workers": workers, "address": ray_address} if runner_name == "ray" else {})
    )
