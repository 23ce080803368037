"""The attacker's surrogate zoo: models of other architectures trained on the public training split.

A transfer attack crafts its adversarial images on the attacker's own model (`surrogate=`) and sends
each one once. Its strength depends on how well the surrogate stands in for the target, so an audit
should not use a single copy of the target's own recipe: `SURROGATES` names, per data set, a few
models of *different* architectures, each with its own seed (none shares the default model's seed
0, so every surrogate is an independent model), each training in a few minutes on two CPU cores.

`load_or_train_surrogates` loads them from `$RND_HOME/surrogates/` (`DATASET-NAME.safetensors` and
`.json`), training the missing ones first, as `load_or_train_default` does for the target;
`default_surrogate_specs` gives their checkpoint paths as `--surrogate` specs.

Each checkpoint's JSON records its recipe, test accuracy and training time; the Fashion-MNIST zoo
trained for the audited model (88.9 to 90.6 % test accuracy, 1 to 4 minutes each on one thread of
a 2-core machine) is in `bench/audit-full/surrogates/`, its provenance in that folder's README.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from rnd.data import load_dataset
from rnd.device import prefer_channels_last
from rnd.errors import unknown_name
from rnd.models import checkpoint_paths, load_checkpoint
from rnd.training.loop import TrainConfig
from rnd.training.standard import rnd_home, train_model

log = logging.getLogger(__name__)

#: The seed of the default model's recipe (`TrainConfig().seed`); no surrogate may use it.
DEFAULT_SEED = TrainConfig().seed


@dataclass(frozen=True)
class SurrogateRecipe:
    """One zoo member: an architecture, its arguments and the training run that makes it."""

    arch: str
    config: TrainConfig
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    note: str = ""


#: data set -> name -> recipe. Seeds differ from the default model's (0) and from each other.
SURROGATES: dict[str, dict[str, SurrogateRecipe]] = {
    "fashion-mnist": {
        "small-cnn-w16": SurrogateRecipe(
            "small-cnn",
            TrainConfig(epochs=4, seed=11),
            {"width": 16, "hidden": 64},
            "the target's family at half width, another seed",
        ),
        "resnet8": SurrogateRecipe("resnet8", TrainConfig(epochs=2, seed=12), {}, "residual, batch norm"),
        "vgg-small": SurrogateRecipe(
            "vgg-small", TrainConfig(epochs=2, seed=13), {}, "plain deep conv stack"
        ),
    },
}


def surrogates_home(home: str | Path | None = None) -> Path:
    """Where the zoo lives: `home/surrogates` (default `$RND_HOME/surrogates`)."""
    return (Path(home) if home is not None else rnd_home()) / "surrogates"


def zoo(dataset: str) -> dict[str, SurrogateRecipe]:
    """The recipes of `dataset`'s zoo (an `UnknownNameError` for a data set without one)."""
    if dataset not in SURROGATES:
        raise unknown_name("data set with a surrogate zoo", dataset, list(SURROGATES))
    return SURROGATES[dataset]


def surrogate_path(dataset: str, name: str, home: str | Path | None = None) -> Path:
    """The checkpoint path (without suffix) of zoo member `name` of `dataset`."""
    if name not in zoo(dataset):
        raise unknown_name(f"{dataset} surrogate", name, list(zoo(dataset)))
    return surrogates_home(home) / f"{dataset}-{name}"


def train_surrogate(
    dataset: str, name: str, home: str | Path | None = None, progress: bool = True
) -> tuple[nn.Module, Path]:
    """Train zoo member `name` on `dataset`'s public training split and save it (overwrites)."""
    recipe = zoo(dataset)[name]
    out = surrogate_path(dataset, name, home)
    model, _ = train_model(
        recipe.arch,
        dataset,
        out,
        recipe.config,
        train_data=load_dataset(dataset, "train"),
        test_data=load_dataset(dataset, "test"),
        arch_kwargs=recipe.arch_kwargs,
        recipe_extra={"surrogate": name, "data": "public training split"},
        progress=progress,
    )
    return model, out


def missing_surrogates(
    dataset: str, names: list[str] | tuple[str, ...] | None = None, home: str | Path | None = None
) -> list[str]:
    """The zoo members (all, or `names`) without a complete checkpoint in `home/surrogates`."""
    names = list(zoo(dataset)) if names is None else list(names)
    paths = [surrogate_path(dataset, n, home) for n in names]  # unknown names fail before any work
    return [n for n, p in zip(names, paths, strict=True) if not all(f.exists() for f in checkpoint_paths(p))]


def train_missing(
    dataset: str,
    names: list[str] | tuple[str, ...] | None = None,
    home: str | Path | None = None,
    progress: bool = True,
) -> list[Path]:
    """Train the zoo members (all, or `names`) that have no checkpoint yet (a warning each; minutes
    on a CPU); returns every member's checkpoint path, in order."""
    names = list(zoo(dataset)) if names is None else list(names)
    for name in missing_surrogates(dataset, names, home):
        weights, _ = checkpoint_paths(surrogate_path(dataset, name, home))
        log.warning("no surrogate at %s: training %s on %s (a few minutes)", weights, name, dataset)
        train_surrogate(dataset, name, home, progress)
    return [surrogate_path(dataset, n, home) for n in names]


def load_or_train_surrogates(
    dataset: str = "fashion-mnist",
    names: list[str] | tuple[str, ...] | None = None,
    home: str | Path | None = None,
    progress: bool = True,
) -> list[tuple[nn.Module, Path]]:
    """The zoo's models (all, or `names`, in that order) with their checkpoint paths, loaded from
    `home/surrogates` (default `$RND_HOME/surrogates`); missing ones are trained first (a warning
    each; minutes on a CPU). Training is deterministic: the same recipe gives the same weights."""
    out = []
    for path in train_missing(dataset, names, home, progress):
        model, _ = load_checkpoint(path)
        prefer_channels_last(model, model.input_shape)
        out.append((model, path))
    return out


def default_surrogate_specs(dataset: str = "fashion-mnist", home: str | Path | None = None) -> list[str]:
    """The zoo's checkpoint paths as `--surrogate` specs (training the missing members first)."""
    return [str(path) for path in train_missing(dataset, home=home, progress=False)]
