"""`rnd demo`: the main job on the embedded default (Fashion-MNIST, small CNN), or with
`--imagenet` on EfficientNet-Lite0 and foolbox's 20 ImageNet samples (offline)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from rnd.cli.app import json_option, main, progress_option
from rnd.cli.checks import MAX_BUDGET, MAX_IMAGES, FiniteFloat, allow_mismatch_option, count, seed_option
from rnd.evaluation.demo import run_demo, run_imagenet_demo
from rnd.report.tables import format_table, table_columns


@main.command()
@click.option(
    "--checkpoint",
    type=click.Path(path_type=Path),
    default=None,
    help="model checkpoint (trained if missing)",
)
@click.option(
    "--imagenet",
    is_flag=True,
    help="EfficientNet-Lite0 on foolbox's 20 ImageNet samples (the imagenet extra)",
)
@click.option("--nu", type=FiniteFloat(0, min_open=True), default=0.02, show_default=True)
@click.option(
    "--images",
    "n_images",
    type=count(1, MAX_IMAGES),
    default=None,
    help="images to attack  [default: 100; 5 with --imagenet]",
)
@click.option(
    "--budget", type=count(1, MAX_BUDGET), default=1000, show_default=True, help="queries per image"
)
@click.option(
    "--eps",
    type=FiniteFloat(0, 1, min_open=True),
    default=None,
    help="l_inf radius  [default: 0.1; 0.05 with --imagenet]",
)
@click.option("--attack", "attacks", multiple=True, default=("square", "nes"), show_default=True)
@seed_option
@allow_mismatch_option
@json_option
@progress_option
def demo(
    checkpoint: Path | None,
    imagenet: bool,
    nu: float,
    n_images: int | None,
    budget: int,
    eps: float | None,
    attacks: tuple[str, ...],
    seed: int,
    allow_mismatch: bool,
    as_json: bool,
    progress: bool,
) -> None:
    """Clean accuracy with and without RND, then score-based attacks against both (l_inf)."""
    if imagenet:
        if checkpoint is not None:
            raise click.UsageError("--imagenet uses EfficientNet-Lite0; drop --checkpoint")
        _imagenet_demo(nu, n_images or 5, budget, eps or 0.05, attacks, seed, as_json, progress)
        return
    n_images, eps = n_images or 100, eps or 0.1
    report = run_demo(
        checkpoint,
        nu=nu,
        attacks=attacks,
        n_images=n_images,
        budget=budget,
        eps=eps,
        seed=seed,
        progress=progress,
        allow_dataset_mismatch=allow_mismatch,
    )
    if as_json:
        shown = {f.name: getattr(report, f.name) for f in dataclasses.fields(report) if f.name != "results"}
        shown["rows"] = [dataclasses.asdict(r) for r in report.rows]
        shown["cell_keys"] = [r.key for r in report.results]
        click.echo(json.dumps(shown, indent=2, default=str))
        return
    click.echo(f"model: {report.checkpoint}")
    click.echo(f"clean accuracy:           {report.clean_accuracy:.2f} %")
    click.echo(f"clean accuracy, RND nu={nu:g}: {report.rnd_accuracy:.2f} % (one seeded draw per image)")
    click.echo(
        f"\n{n_images} correctly classified test images, eps_inf={eps:g}, budget {budget} queries; "
        "'observed' = the attacker's own noisy answer (paper protocol)\n"
    )
    click.echo(format_table(report.rows, table_columns(report.rows)))


def _imagenet_demo(
    nu: float,
    n_images: int,
    budget: int,
    eps: float,
    attacks: tuple[str, ...],
    seed: int,
    as_json: bool,
    progress: bool,
) -> None:
    report = run_imagenet_demo(
        nu=nu, attacks=attacks, n_images=n_images, budget=budget, eps=eps, seed=seed, progress=progress
    )
    if as_json:
        click.echo(json.dumps(dataclasses.asdict(report), indent=2, default=str))
        return
    click.echo(f"model: {report.model} (ImageNet, offline), {report.images} foolbox samples")
    click.echo(f"clean top-1:                {report.clean_accuracy:.1f} %")
    for r in report.rnd:
        click.echo(
            f"clean top-1, RND nu={r.nu:<5g}   {r.accuracy:.1f} % (+- {r.std:.1f} over {r.draws} noise draws)"
        )
    click.echo(
        f"\n{n_images} correctly classified samples, eps_inf={eps:g}, budget {budget} queries; "
        "'observed' = the attacker's own noisy answer (paper protocol)\n"
    )
    click.echo(format_table(report.rows, table_columns(report.rows)))
