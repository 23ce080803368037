"""`rnd sweep CONFIG`: run a sweep config into a resumable SQLite results database."""

from __future__ import annotations

import contextlib
from pathlib import Path

import click

from rnd.cli.app import main, progress_option
from rnd.cli.checks import make_cli_runner, runner_options
from rnd.evaluation.config import load_config
from rnd.evaluation.drive import plan_sweep, run_sweep


@main.command()
@click.argument("config", type=click.Path(path_type=Path))
@click.option(
    "--db",
    type=click.Path(path_type=Path),
    default=Path("results.sqlite"),
    show_default=True,
    help="results database (created if missing; finished cells are skipped)",
)
@click.option(
    "--quick",
    is_flag=True,
    help="the config's quick size: fewer images, smaller budget, grids thinned (see [quick])",
)
@runner_options
@click.option("--dry-run", is_flag=True, help="validate and list the cells; touch no database")
@progress_option
def sweep(
    config: Path,
    db: Path,
    quick: bool,
    runner_name: str,
    workers: int | None,
    ray_address: str | None,
    dry_run: bool,
    progress: bool,
) -> None:
    """Expand CONFIG (TOML) into cells and run those not yet in the database.

    Everything is validated before the database is opened, so a bad config, a missing checkpoint or a
    database of another schema changes nothing. Killed sweeps resume where they stopped.
    """
    plan = plan_sweep(load_config(config), quick=quick)
    if dry_run:
        for cell in plan.cells:
            click.echo(f"{cell.key[:12]}  {cell.label()}")
        click.echo(f"{len(plan.cells)} cells")
        return
    runner = make_cli_runner(runner_name, workers, ray_address, remote=any(c.remote for c in plan.cells))
    # the Ray runner checks a cluster address before the database is opened (a failure changes nothing)
    with runner if runner_name == "ray" else contextlib.nullcontext():
        outcome = run_sweep(plan, db, runner=runner, progress=progress)
    shared = f", {outcome.by_others} run by another process" if outcome.by_others else ""
    click.echo(
        f"{outcome.db}: {outcome.cells} cells, {outcome.skipped} already done, {outcome.ran} run now, "
        f"{len(outcome.failed)} failed{shared}"
    )
    for label, error in outcome.failed:
        click.echo(f"failed: {label}: {error}", err=True)
    if outcome.failed:
        raise SystemExit(1)
