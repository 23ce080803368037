"""Model registry: architectures by name, with per-data-set normalisation constants."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

from rnd.errors import unknown_name
from rnd.models.cnn import SmallCNN
from rnd.models.layers import Classifier
from rnd.models.resnet import ResNet
from rnd.models.vgg import VGG

ARCHITECTURES: dict[str, Callable[..., Classifier]] = {
    "small-cnn": SmallCNN,
    "vgg-small": partial(VGG, config="vgg-small"),
    "vgg11": partial(VGG, config="vgg11"),
    "resnet8": partial(ResNet, blocks=(1, 1, 1)),
    "resnet20": partial(ResNet, blocks=(3, 3, 3)),
}

#: Per-channel (mean, std) of each data set's training split, in pixel units.
DATASET_STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
}


def build_model(
    name: str,
    input_shape: Sequence[int] = (1, 28, 28),
    num_classes: int = 10,
    dataset: str | None = None,
    **kwargs: Any,
) -> Classifier:
    """Build an untrained model by name; `dataset` picks its normalisation constants.

    The returned model records `arch_name` and `arch_kwargs`, which checkpoints store so the model
    can be rebuilt without pickling.
    """
    if name not in ARCHITECTURES:
        raise unknown_name("model", name, list(ARCHITECTURES))
    if dataset in DATASET_STATS and "mean" not in kwargs:
        kwargs["mean"], kwargs["std"] = (list(v) for v in DATASET_STATS[dataset])
    arch_kwargs = {"input_shape": list(input_shape), "num_classes": int(num_classes), **kwargs}
    model = ARCHITECTURES[name](**arch_kwargs)
    model.arch_name = name  # type: ignore[assignment]
    model.arch_kwargs = arch_kwargs  # type: ignore[assignment]
    return model
