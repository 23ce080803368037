"""`rnd report DB`: markdown report and PNG figures from a results database."""

from __future__ import annotations

from pathlib import Path

import click

from rnd.cli.app import main
from rnd.evaluation.report import write_report


@main.command()
@click.argument("db", type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="output folder (default: DB name without suffix + '-report')",
)
def report(db: Path, out: Path | None) -> None:
    """Write OUT/report.md with mu x nu heatmaps, EOT curves, clean accuracy and the main table."""
    out = out or db.with_name(db.stem + "-report")
    result = write_report(db, out)
    click.echo(f"wrote {out / 'report.md'} and {len(result.figures)} figure(s)")
    for h in result.heatmaps:
        click.echo(
            f"heatmap {h.file}: observed failure % (rows mu {', '.join(f'{m:g}' for m in h.mu)}; "
            f"columns nu {', '.join(f'{n:g}' for n in h.nu)})"
        )
        for mu, row in zip(h.mu, h.rates["failure_rate"], strict=True):
            click.echo(f"  mu={mu:<8g} " + " ".join(f"{v:5.0f}" for v in row))
