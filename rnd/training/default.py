"""The default model: the small CNN on Fashion-MNIST, loaded from `$RND_HOME` (or ~/.cache/rnd),
trained first when no checkpoint exists (the README's first command)."""

from __future__ import annotations

import logging
from pathlib import Path

from torch import nn

from rnd.device import prefer_channels_last
from rnd.models import check_checkpoint_files, checkpoint_paths, load_checkpoint
from rnd.training.loop import TrainConfig
from rnd.training.standard import default_checkpoint_path, train_model

log = logging.getLogger(__name__)


def load_or_train_default(path: str | Path | None = None, progress: bool = True) -> tuple[nn.Module, Path]:
    """Load a checkpoint; with no path, the default Fashion-MNIST CNN, trained first if missing.

    An explicit path that does not exist is an error (nothing is trained behind the user's back).
    """
    explicit = path is not None
    path = Path(path) if path is not None else default_checkpoint_path()
    if explicit:
        check_checkpoint_files(path)  # names the missing file (weights or metadata)
    weights, meta = checkpoint_paths(path)
    if not (weights.exists() and meta.exists()):
        log.warning("no checkpoint at %s: training the default model (a few minutes)", weights)
        train_model(out=path, config=TrainConfig(), progress=progress)
    model, _ = load_checkpoint(path)
    prefer_channels_last(model, model.input_shape)  # the CPU's faster layout, as load_model does
    return model, path
