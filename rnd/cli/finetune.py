"""`rnd finetune`: Gaussian-augmentation fine-tuning (GF) of a trained checkpoint (RND-GF)."""

from __future__ import annotations

from pathlib import Path

import click

from rnd.cli.app import main, progress_option
from rnd.cli.train import first_images
from rnd.data import DATASETS, load_dataset
from rnd.models import ARCHITECTURES, checkpoint_paths, read_meta
from rnd.training.gaussian import finetune_gaussian


def default_child_path(parent: Path, sigma: float) -> Path:
    """`PARENT-gf<sigma>` beside the parent checkpoint."""
    weights, _ = checkpoint_paths(parent)
    return weights.with_name(f"{weights.stem}-gf{sigma:g}")


@main.command()
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.option(
    "--sigma", type=float, required=True, help="std of the Gaussian augmentation (pixels in [0, 1])"
)
@click.option("--samples", "-K", type=int, default=4, show_default=True, help="noise samples per image")
@click.option("--epochs", type=int, default=1, show_default=True)
@click.option("--lr", type=float, default=5e-4, show_default=True)
@click.option("--batch-size", type=int, default=128, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--arch", type=click.Choice(sorted(ARCHITECTURES)), default=None, help="require this architecture"
)
@click.option("--dataset", type=click.Choice(DATASETS), default=None, help="require this data set")
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="new checkpoint [default: CHECKPOINT-gfSIGMA]",
)
@click.option(
    "--train-images",
    type=click.IntRange(min=1),
    default=None,
    help="fine-tune on the first N training images only (quick runs) [default: all]",
)
@progress_option
def finetune(
    checkpoint: Path,
    sigma: float,
    samples: int,
    epochs: int,
    lr: float,
    batch_size: int,
    seed: int,
    arch: str | None,
    dataset: str | None,
    out: Path | None,
    train_images: int | None,
    progress: bool,
) -> None:
    """Fine-tune CHECKPOINT with the loss -log E_{delta~N(0, sigma^2 I)} softmax(F(x + delta))[y].

    The expectation is estimated with --samples noise draws per image. The new checkpoint records its
    parent (path and sha256) and the recipe; it appears only once training has finished.
    """
    out = out or default_child_path(checkpoint, sigma)
    train_data = None
    if train_images is not None:
        train_data = first_images(load_dataset(read_meta(checkpoint).dataset, "train"), train_images)
    _, info = finetune_gaussian(
        checkpoint,
        sigma,
        samples,
        epochs,
        lr,
        seed,
        out,
        batch_size=batch_size,
        arch=arch,
        dataset=dataset,
        train_data=train_data,
        progress=progress,
    )
    acc = info["metrics"]["test_accuracy"]
    click.echo(f"GF sigma={sigma:g} K={samples}: test accuracy {100 * acc:.2f} %  ->  {out}.safetensors")
