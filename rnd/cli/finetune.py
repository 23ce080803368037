"""`rnd finetune`: Gaussian-augmentation fine-tuning (GF) of a trained checkpoint (RND-GF)."""

from __future__ import annotations

from pathlib import Path

import click

from rnd.cli.app import main, progress_option
from rnd.cli.checks import MAX_COUNT, MAX_IMAGES, FiniteFloat, check_output_checkpoint, count, seed_option
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
    "--sigma", type=FiniteFloat(), required=True, help="std of the Gaussian augmentation (pixels in [0, 1])"
)
@click.option(
    "--samples",
    "-K",
    type=click.IntRange(max=MAX_COUNT),
    default=4,
    show_default=True,
    help="noise samples per image",
)
@click.option("--epochs", type=count(), default=1, show_default=True)
@click.option("--lr", type=FiniteFloat(0, min_open=True), default=5e-4, show_default=True)
@click.option("--batch-size", type=count(1, MAX_IMAGES), default=128, show_default=True)
@seed_option
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
    type=count(1, MAX_IMAGES),
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
    check_output_checkpoint(out)  # before fine-tuning: the result is never lost to a bad --out
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
