"""The options of the commands that run a user's own model (`rnd attack --model`, `rnd audit`,
`rnd calibrate`): the model is any source `rnd.models.load_model` takes (an rnd checkpoint, a
TorchScript file, `package.module:factory`), --weights / --input-shape / --num-classes give what
it does not carry, and --dataset / --data-root the images (default: the data set the model names).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
from torch import nn

from rnd.data import DATASETS
from rnd.errors import InputError
from rnd.models import load_model
from rnd.models.source import check_meta, model_kind


def model_source_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--weights, --input-shape and --num-classes (what a model spec may lack)."""
    for option in reversed(
        (
            click.option(
                "--weights",
                type=click.Path(path_type=Path),
                default=None,
                help="with a package.module:factory model: a safetensors state_dict loaded with strict=True",
            ),
            click.option(
                "--input-shape",
                default=None,
                metavar="C,H,W",
                help="with your own model: its input shape (else from its metadata)",
            ),
            click.option(
                "--num-classes",
                type=int,
                default=None,
                help="with your own model: its class count (else from its metadata)",
            ),
        )
    ):
        f = option(f)
    return f


def data_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """--dataset (default: the one the model names, else Fashion-MNIST) and --data-root."""
    f = click.option(
        "--data-root", type=click.Path(path_type=Path), default=None, help="folder of the data set"
    )(f)
    return click.option(
        "--dataset",
        type=click.Choice(DATASETS),
        default=None,
        help="test images to use [default: the data set the model names, else fashion-mnist]",
    )(f)


def given_meta(input_shape: str | None, num_classes: int | None) -> dict[str, Any]:
    """The metadata --input-shape and --num-classes give (checked by `rnd.models.source.check_meta`),
    as JSON-ready values; {} when neither is given."""
    meta: dict[str, Any] = {}
    if input_shape is not None:
        try:
            meta["input_shape"] = [int(v) for v in input_shape.split(",")]
        except ValueError:
            raise InputError(f"--input-shape takes C,H,W (e.g. 1,28,28), got {input_shape!r}") from None
    if num_classes is not None:
        meta["num_classes"] = num_classes
    return {k: list(v) if isinstance(v, tuple) else v for k, v in check_meta(meta, "--model").items()}


def stored_spec(spec: str) -> str:
    """A model spec as cells and server settings keep it: a file's path with ~ expanded, a
    `module:factory` as given."""
    return spec if model_kind(spec) == "factory" else str(Path(spec).expanduser())


def absolute_spec(spec: str) -> str:
    """`stored_spec` with a file's path made absolute (a surrogate named on the command line is
    loaded wherever the cells run)."""
    return spec if model_kind(spec) == "factory" else str(Path(spec).expanduser().resolve())


@dataclass
class LoadedModel:
    """A model loaded from a spec, with what a `ModelSpec` of a sweep config needs."""

    model: nn.Module
    info: Any  # rnd.models.source.ModelInfo
    spec: str  # the spec as cells store it (a path with ~ expanded, or module:factory)
    weights: str | None
    meta_json: str | None  # the metadata given on the command line, canonical JSON

    @property
    def where(self) -> str:
        return f"model {self.info.spec}"


def load_spec(spec: str, weights: Path | None, meta: dict[str, Any]) -> LoadedModel:
    """Load `spec` (`rnd.models.load_model`) with its --weights and given metadata."""
    model, info = load_model(spec, weights, meta=meta)
    return LoadedModel(
        model=model,
        info=info,
        spec=stored_spec(spec),
        weights=None if weights is None else str(weights),
        meta_json=json.dumps(meta, sort_keys=True, separators=(",", ":")) if meta else None,
    )
