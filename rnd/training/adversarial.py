"""PGD adversarial training (AT; Madry et al., ICLR 2018, eq. 2.1), optionally followed by GF.

    min_theta E_{(x,y)} [ max_{||delta||_inf <= eps} CE(F(x + delta), y) ]

The inner max is approximated by l_inf PGD with a random start (`rnd.training.pgd`), drawn from the
training run's own generator. RND on top of an AT model is the seed's RND-AT, its strongest
combination (Qin et al., NeurIPS 2021, section 5).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rnd._checks import check_int, check_positive
from rnd.data import load_dataset
from rnd.data.base import ImageDataset
from rnd.models import save_checkpoint
from rnd.models.layers import Classifier
from rnd.models.predict import accuracy
from rnd.training.gaussian import check_data_matches, gaussian_loss, load_parent
from rnd.training.loop import BatchLoss, TrainConfig, fit
from rnd.training.pgd import PGDConfig, pgd_accuracy, pgd_linf
from rnd.training.standard import init_model

#: Test images used for the PGD robust accuracy recorded in an AT checkpoint's metrics.
ROBUST_EVAL_IMAGES = 1000


def adversarial_loss(pgd: PGDConfig) -> BatchLoss:
    """Madry's batch loss: cross-entropy at the PGD point of each image (attack in eval mode)."""

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        was_training = model.training
        model.eval()
        x_adv = pgd_linf(model, x, y, pgd, g)
        model.train(was_training)
        return F.cross_entropy(model(x_adv), y)

    return loss


def adversarial_train(
    arch: str = "small-cnn",
    dataset: str = "fashion-mnist",
    out: str | Path | None = None,
    config: TrainConfig | None = None,
    pgd: PGDConfig | None = None,
    *,
    gf_sigma: float | None = None,
    gf_samples: int = 4,
    gf_epochs: int = 1,
    gf_lr: float = 5e-4,
    init_from: str | Path | None = None,
    train_data: ImageDataset | None = None,
    test_data: ImageDataset | None = None,
    robust_eval_images: int = ROBUST_EVAL_IMAGES,
    progress: bool = True,
) -> tuple[Classifier, dict[str, Any]]:
    """Train `arch` on `dataset` with PGD-AT; then, if `gf_sigma` is given, fine-tune with GF.

    With `init_from` (a checkpoint of the same architecture and data set) AT starts from its weights
    instead of a fresh initialisation, and the checkpoint records it as the parent.

    Deterministic under `config.seed`. The metrics record clean test accuracy and white-box PGD
    accuracy (same PGD settings) on the first `robust_eval_images` test images. The checkpoint is
    written to `out` only after all training finished (atomically).
    """
    config = config or TrainConfig(epochs=2)
    pgd = pgd or PGDConfig()
    if gf_sigma is not None:
        gf_loss = gaussian_loss(gf_sigma, gf_samples)
        gf_config = TrainConfig(
            epochs=check_int(gf_epochs, "GF epochs"),
            batch_size=config.batch_size,
            lr=check_positive(gf_lr, "GF lr"),
            seed=config.seed + 1,
        )
    train = train_data or load_dataset(dataset, "train")
    test = test_data or load_dataset(dataset, "test")
    parent = None
    if init_from is not None:
        model, meta, parent = load_parent(init_from, arch=arch, dataset=dataset)
        check_data_matches(train, meta, model, "training")
        check_data_matches(test, meta, model, "test")
    else:
        model = init_model(arch, train, config.seed)
    fit(model, train, config, adversarial_loss(pgd), progress=progress, desc=f"AT eps={pgd.eps:g}")
    recipe: dict[str, Any] = {"kind": "adversarial", **config.as_dict(), "pgd": pgd.as_dict()}
    recipe["init"] = "parent" if parent is not None else "random"
    recipe["train_images"] = len(train)
    if gf_sigma is not None:
        fit(model, train, gf_config, gf_loss, progress=progress, desc=f"GF sigma={gf_sigma:g}")
        recipe["kind"] = "adversarial+gaussian-finetune"
        recipe["gaussian_finetune"] = {"sigma": float(gf_sigma), "samples": gf_samples, **gf_config.as_dict()}
    n_eval = min(robust_eval_images, len(test))
    metrics = {
        "test_accuracy": accuracy(model, test),
        "test_size": len(test),
        "pgd_accuracy": pgd_accuracy(model, test, pgd, indices=torch.arange(n_eval), seed=config.seed),
        "pgd_eval_images": n_eval,
    }
    if out is not None:
        save_checkpoint(model, out, dataset=train.name, recipe=recipe, metrics=metrics, parent=parent)
    return model, {"recipe": recipe, "metrics": metrics, "parent": parent}
