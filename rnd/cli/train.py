"""`rnd train`: train a model from the registry (standard or PGD adversarial training) and save it."""

from __future__ import annotations

from pathlib import Path

import click

from rnd.cli.app import main, progress_option
from rnd.cli.checks import MAX_COUNT, MAX_IMAGES, FiniteFloat, check_output_checkpoint, count, seed_option
from rnd.data import DATASETS, load_dataset
from rnd.data.base import ImageDataset
from rnd.models import ARCHITECTURES
from rnd.training import TrainConfig, default_checkpoint_path, train_model
from rnd.training.adversarial import adversarial_train
from rnd.training.pgd import PGDConfig


def first_images(data: ImageDataset, n: int | None) -> ImageDataset:
    """The first `n` images of `data` (all of them when `n` is None or larger)."""
    if n is None or n >= len(data):
        return data
    return ImageDataset(data.name, data.split, data.images[:n], data.labels[:n], data.classes)


@main.command()
@click.option("--arch", type=click.Choice(sorted(ARCHITECTURES)), default="small-cnn", show_default=True)
@click.option("--dataset", type=click.Choice(DATASETS), default="fashion-mnist", show_default=True)
@click.option(
    "--data-root",
    "--root",
    "data_root",
    type=click.Path(path_type=Path),
    default=None,
    help="folder of the data set (cifar10: the binary version's folder, or set $RND_CIFAR10)",
)
@click.option("--epochs", type=count(), default=4, show_default=True)
@click.option("--batch-size", type=count(1, MAX_IMAGES), default=128, show_default=True)
@click.option("--lr", type=FiniteFloat(0, min_open=True), default=1e-3, show_default=True)
@seed_option
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="checkpoint path (default: $RND_HOME/checkpoints/DATASET-ARCH, with -at for --adversarial)",
)
@click.option("--adversarial", is_flag=True, help="PGD adversarial training (Madry et al. 2018), l_inf")
@click.option(
    "--eps",
    type=FiniteFloat(None, 1),
    default=0.1,
    show_default=True,
    help="AT: l_inf radius (pixels in [0, 1])",
)
@click.option(
    "--pgd-steps",
    type=click.IntRange(max=MAX_COUNT),
    default=5,
    show_default=True,
    help="AT: PGD steps per batch",
)
@click.option(
    "--pgd-step-size",
    type=FiniteFloat(),
    default=None,
    help="AT: PGD step size [default: 2.5 * eps / steps]",
)
@click.option(
    "--gf-sigma", type=FiniteFloat(), default=None, help="AT: then Gaussian fine-tuning with this sigma"
)
@click.option(
    "--gf-samples",
    type=click.IntRange(max=MAX_COUNT),
    default=4,
    show_default=True,
    help="AT+GF: noise samples per image",
)
@click.option(
    "--gf-epochs",
    type=click.IntRange(max=MAX_COUNT),
    default=1,
    show_default=True,
    help="AT+GF: fine-tuning epochs",
)
@click.option(
    "--init",
    "init_from",
    type=click.Path(path_type=Path),
    default=None,
    help="AT: start from this checkpoint (same architecture and data set) instead of random weights",
)
@click.option(
    "--train-images",
    type=count(1, MAX_IMAGES),
    default=None,
    help="train on the first N training images only (quick runs) [default: all]",
)
@progress_option
def train(
    arch: str,
    dataset: str,
    data_root: Path | None,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    out: Path | None,
    adversarial: bool,
    eps: float,
    pgd_steps: int,
    pgd_step_size: float | None,
    gf_sigma: float | None,
    gf_samples: int,
    gf_epochs: int,
    init_from: Path | None,
    train_images: int | None,
    progress: bool,
) -> None:
    """Train ARCH on DATASET (deterministic under --seed) and write a safetensors checkpoint."""
    if not adversarial and (gf_sigma is not None or init_from is not None):
        raise click.UsageError(
            "--gf-sigma and --init go with --adversarial; use `rnd finetune` to fine-tune a checkpoint"
        )
    if not adversarial:
        out = out or default_checkpoint_path(dataset, arch)
    else:
        suffix = "-at" if gf_sigma is None else f"-at-gf{gf_sigma:g}"
        out = out or default_checkpoint_path(dataset, arch).with_name(f"{dataset}-{arch}{suffix}")
    check_output_checkpoint(out)  # before training: a trained model is never lost to a bad --out
    config = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    train_data = first_images(load_dataset(dataset, "train", data_root), train_images)
    test_data = load_dataset(dataset, "test", data_root)
    if not adversarial:
        _, info = train_model(
            arch, dataset, out, config, train_data=train_data, test_data=test_data, progress=progress
        )
        acc = info["metrics"]["test_accuracy"]
        click.echo(f"{arch} on {dataset}: test accuracy {100 * acc:.2f} %  ->  {out}.safetensors")
        return
    pgd = PGDConfig(eps=eps, steps=pgd_steps, step_size=pgd_step_size)
    _, info = adversarial_train(
        arch,
        dataset,
        out,
        config,
        pgd,
        gf_sigma=gf_sigma,
        gf_samples=gf_samples,
        gf_epochs=gf_epochs,
        init_from=init_from,
        train_data=train_data,
        test_data=test_data,
        progress=progress,
    )
    m = info["metrics"]
    click.echo(
        f"{arch} on {dataset}, PGD-AT eps={eps:g} steps={pgd_steps} step={pgd.alpha:.4g}: "
        f"test accuracy {100 * m['test_accuracy']:.2f} %, PGD accuracy {100 * m['pgd_accuracy']:.2f} % "
        f"(first {m['pgd_eval_images']} test images)  ->  {out}.safetensors"
    )
