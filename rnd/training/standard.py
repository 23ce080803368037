"""Standard training of a registered architecture on a data set, saved as a checkpoint."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import torch

from rnd.data import load_dataset
from rnd.data.base import ImageDataset
from rnd.models import build_model, save_checkpoint
from rnd.models.layers import Classifier
from rnd.models.predict import accuracy
from rnd.training.loop import TrainConfig, fit

DEFAULT_MODEL = "small-cnn"
DEFAULT_DATASET = "fashion-mnist"


def rnd_home() -> Path:
    """Where rnd keeps checkpoints and results by default: $RND_HOME or ~/.cache/rnd."""
    return Path(os.environ.get("RND_HOME") or Path.home() / ".cache" / "rnd")


def default_checkpoint_path(dataset: str = DEFAULT_DATASET, arch: str = DEFAULT_MODEL) -> Path:
    return rnd_home() / "checkpoints" / f"{dataset}-{arch}"


def init_model(arch: str, data: ImageDataset, seed: int, **kwargs: Any) -> Classifier:
    """Build `arch` for `data` with weights initialised under `seed` (global RNG restored after)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_model(arch, data.input_shape, data.num_classes, dataset=data.name, **kwargs)


def train_model(
    arch: str = DEFAULT_MODEL,
    dataset: str = DEFAULT_DATASET,
    out: str | Path | None = None,
    config: TrainConfig | None = None,
    *,
    train_data: ImageDataset | None = None,
    test_data: ImageDataset | None = None,
    arch_kwargs: dict[str, Any] | None = None,
    recipe_extra: dict[str, Any] | None = None,
    progress: bool = True,
) -> tuple[Classifier, dict[str, Any]]:
    """Train `arch` (built with `arch_kwargs`, e.g. a width) on `dataset`, evaluate on its test
    split, and save to `out` if given; `recipe_extra` adds fields to the recorded recipe.

    Returns the model and its metadata dict (recipe and metrics).
    """
    config = config or TrainConfig()
    train = train_data or load_dataset(dataset, "train")
    test = test_data or load_dataset(dataset, "test")
    model = init_model(arch, train, config.seed, **(arch_kwargs or {}))
    start = time.perf_counter()
    fit(model, train, config, progress=progress, desc=f"train {arch}")
    seconds = time.perf_counter() - start
    acc = accuracy(model, test)
    recipe = {"kind": "standard", **config.as_dict(), **(recipe_extra or {})}
    metrics = {"test_accuracy": acc, "test_size": len(test), "train_seconds": round(seconds, 1)}
    if out is not None:
        save_checkpoint(model, out, dataset=train.name, recipe=recipe, metrics=metrics)
    return model, {"recipe": recipe, "metrics": metrics}
