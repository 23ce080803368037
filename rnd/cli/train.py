"""`rnd train`: train a model from the registry and save a checkpoint."""

from __future__ import annotations

from pathlib import Path

import click

from rnd.cli.app import main, progress_option
from rnd.data import DATASETS
from rnd.models import ARCHITECTURES
from rnd.training import TrainConfig, default_checkpoint_path, train_model


@main.command()
@click.option("--arch", type=click.Choice(sorted(ARCHITECTURES)), default="small-cnn", show_default=True)
@click.option("--dataset", type=click.Choice(DATASETS), default="fashion-mnist", show_default=True)
@click.option("--epochs", type=click.IntRange(min=1), default=4, show_default=True)
@click.option("--batch-size", type=click.IntRange(min=1), default=128, show_default=True)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=1e-3, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="checkpoint path (default: $RND_HOME/checkpoints/DATASET-ARCH)",
)
@progress_option
def train(
    arch: str,
    dataset: str,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    out: Path | None,
    progress: bool,
) -> None:
    """Train ARCH on DATASET (deterministic under --seed) and write a safetensors checkpoint."""
    out = out or default_checkpoint_path(dataset, arch)
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    _, info = train_model(arch, dataset, out, config, progress=progress)
    acc = info["metrics"]["test_accuracy"]
    click.echo(f"{arch} on {dataset}: test accuracy {100 * acc:.2f} %  ->  {out}.safetensors")
