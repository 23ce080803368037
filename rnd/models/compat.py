"""Does a checkpoint fit the data set it is evaluated on? One check for the CLI and for sweeps."""

from __future__ import annotations

from typing import Any

from torch import nn

from rnd.errors import InputError


def check_model_data(
    model: nn.Module,
    trained_on: str,
    data: Any,
    *,
    allow_mismatch: bool = False,
    where: str = "the checkpoint",
    allow_hint: str = "pass --allow-dataset-mismatch",
) -> None:
    """Refuse a model whose input shape or class count differ from `data`'s; refuse a model trained
    on another data set (by its metadata's name) unless `allow_mismatch`; `allow_hint` says how."""
    shape = tuple(getattr(model, "input_shape", data.input_shape))
    if shape != tuple(data.input_shape):
        raise InputError(
            f"{where} takes images of shape {shape} but {data.name} images are {tuple(data.input_shape)}; "
            f"evaluate it on the data set it was trained on ({trained_on})"
        )
    classes = int(getattr(model, "num_classes", data.num_classes))
    if classes != data.num_classes:
        raise InputError(
            f"{where} predicts {classes} classes but {data.name} has {data.num_classes}; "
            f"evaluate it on the data set it was trained on ({trained_on})"
        )
    if trained_on != data.name and not allow_mismatch:
        raise InputError(
            f"{where} was trained on {trained_on!r}, not on {data.name!r}; evaluate it on {trained_on!r} "
            f"or, to use it on {data.name!r} anyway, {allow_hint}"
        )
