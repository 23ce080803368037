"""Gaussian-augmentation fine-tuning (GF), the seed's remedy for RND's clean-accuracy cost (RND-GF).

Qin et al. (NeurIPS 2021), section 5 ("Better trade-off"): fine-tune with

    min_theta  E_{(x,y)} [ -y^T log E_{delta ~ N(0, sigma^2 I)} F(x + delta) ]

where F is the softmax output. The expectation sits *inside* the log (the loss of the smoothed
classifier, not the mean loss over noisy copies). With K noise samples per image it is estimated as

    log E F(x + delta)_y  ~  logsumexp_k log softmax(F(clip(x + delta_k)))_y  -  log K,

the noisy inputs clipped to [0, 1] exactly as RND clips its queries.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from rnd._checks import check_int, check_positive
from rnd.data import load_dataset
from rnd.data.base import ImageDataset
from rnd.errors import CheckpointError
from rnd.models import CheckpointMeta, checkpoint_paths, load_checkpoint, save_checkpoint
from rnd.models.layers import Classifier
from rnd.models.predict import accuracy
from rnd.training.loop import BatchLoss, TrainConfig, fit


def smoothed_log_probs(
    model: nn.Module,
    x: torch.Tensor,
    sigma: float,
    samples: int,
    generator: torch.Generator,
    clip: tuple[float, float] | None = (0.0, 1.0),
) -> torch.Tensor:
    """Monte-Carlo `log E_delta softmax(F(clip(x + delta)))`, shape (N, classes), K = `samples` draws.

    Differentiable in the model's parameters; the noise comes from `generator`.
    """
    n = x.shape[0]
    xs = x.unsqueeze(0).expand(samples, *x.shape).reshape(samples * n, *x.shape[1:])
    if sigma > 0:
        noise = torch.randn(xs.shape, generator=generator, dtype=xs.dtype, device=generator.device)
        xs = xs + sigma * noise.to(xs.device)
        if clip is not None:
            xs = xs.clamp(clip[0], clip[1])
    logp = F.log_softmax(model(xs), dim=1).view(samples, n, -1)
    return torch.logsumexp(logp, dim=0) - math.log(samples)


def gaussian_loss(sigma: float, samples: int, clip: tuple[float, float] | None = (0.0, 1.0)) -> BatchLoss:
    """The GF batch loss `-mean_i log E_delta F(x_i + delta)_{y_i}` for `rnd.training.loop.fit`."""
    sigma = check_positive(sigma, "sigma", allow_zero=True)
    samples = check_int(samples, "samples (K)")

    def loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        return F.nll_loss(smoothed_log_probs(model, x, sigma, samples, g, clip), y)

    return loss


def load_parent(
    path: str | Path, *, arch: str | None = None, dataset: str | None = None
) -> tuple[Classifier, CheckpointMeta, dict[str, Any]]:
    """Load a parent checkpoint (sha256 verified) and check it is the architecture and data set asked for.

    Returns the model, its metadata, and the `parent` record for the child's metadata.
    """
    with torch.random.fork_rng(devices=[]):  # rebuilding the model initialises weights: keep the global RNG
        model, meta = load_checkpoint(path)
    weights, _ = checkpoint_paths(path)
    if arch is not None and meta.architecture != arch:
        raise CheckpointError(
            f"{weights} is a {meta.architecture!r} model but {arch!r} was requested; pick a checkpoint "
            f"of that architecture or drop the architecture option"
        )
    if dataset is not None and meta.dataset != dataset:
        raise CheckpointError(
            f"{weights} was trained on {meta.dataset!r} but {dataset!r} was requested; fine-tune on the "
            f"parent's data set or pick a parent trained on {dataset!r}"
        )
    record = {
        "path": str(weights.resolve()),
        "sha256": meta.sha256,
        "architecture": meta.architecture,
        "dataset": meta.dataset,
        "recipe": meta.recipe,
    }
    return model, meta, record  # type: ignore[return-value]


def check_data_matches(data: ImageDataset, meta: CheckpointMeta, model: Classifier, what: str) -> None:
    """A data set handed in for fine-tuning must be the parent's data set and fit its input shape."""
    if data.name != meta.dataset:
        raise CheckpointError(
            f"the parent checkpoint was trained on {meta.dataset!r} but the {what} data is {data.name!r}"
        )
    if tuple(data.input_shape) != tuple(model.input_shape):
        raise CheckpointError(
            f"the parent checkpoint takes images of shape {tuple(model.input_shape)} but the {what} data "
            f"has {tuple(data.input_shape)}"
        )


def finetune_gaussian(
    parent_checkpoint: str | Path,
    sigma: float,
    K: int = 4,
    epochs: int = 1,
    lr: float = 5e-4,
    seed: int = 0,
    out: str | Path | None = None,
    *,
    batch_size: int = 128,
    arch: str | None = None,
    dataset: str | None = None,
    train_data: ImageDataset | None = None,
    test_data: ImageDataset | None = None,
    progress: bool = True,
) -> tuple[Classifier, dict[str, Any]]:
    """Fine-tune `parent_checkpoint` with the GF loss and save the result to `out` (if given).

    `arch` / `dataset`, when given, must match the parent's (else `CheckpointError`). The new
    checkpoint's metadata records the parent (path, sha256, recipe) and this recipe; it is written
    only after training finished, atomically, so an interrupted run leaves nothing under `out`.
    Returns the model and {"recipe", "metrics", "parent"}.
    """
    loss = gaussian_loss(sigma, K)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    model, meta, parent = load_parent(parent_checkpoint, arch=arch, dataset=dataset)
    train = train_data or load_dataset(meta.dataset, "train")
    test = test_data or load_dataset(meta.dataset, "test")
    check_data_matches(train, meta, model, "training")
    check_data_matches(test, meta, model, "test")
    fit(model, train, config, loss, progress=progress, desc=f"GF sigma={sigma:g}")
    recipe = {
        "kind": "gaussian-finetune",
        "sigma": float(sigma),
        "samples": K,
        "loss": "-log mean_k softmax(F(clip(x + sigma * v_k)))[y]",
        **config.as_dict(),
        "train_images": len(train),
    }
    if meta.recipe.get("kind", "").startswith("adversarial"):
        recipe["kind"] = "adversarial+gaussian-finetune"
    metrics = {"test_accuracy": accuracy(model, test), "test_size": len(test)}
    if out is not None:
        save_checkpoint(model, out, dataset=meta.dataset, recipe=recipe, metrics=metrics, parent=parent)
    return model, {"recipe": recipe, "metrics": metrics, "parent": parent}
