"""`rnd report DB`: markdown report and PNG figures from a results database."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import click

from rnd.cli.app import main
from rnd.cli.checks import check_writable_dir
from rnd.errors import InputError
from rnd.evaluation.store import check_database
from rnd.report.markdown import write_report

#: The way out of every bad DB argument (`rnd report` has no --db option: DB is its argument).
DB_HINT = "give `rnd report` the path of a results database written by `rnd sweep`"


def check_report_db(db: Path) -> None:
    """Refuse, reading nothing but the header, a DB that is not an rnd results database."""
    if db.is_dir():
        raise InputError(f"{db} is a directory, not a results database; {DB_HINT}")
    if not db.exists():
        raise InputError(f"results database {db} not found; {DB_HINT}")
    try:
        check_database(db)
    except InputError as exc:  # keep what is wrong, replace the store's way out (it names --db)
        problem = str(exc).split(";")[0].strip()
        raise InputError(f"{problem}; {DB_HINT}") from exc


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
    check_report_db(db)
    out = out or db.with_name(db.stem + "-report")
    check_writable_dir(out, "--out")
    try:
        result = write_report(db, out)
    except sqlite3.Error as exc:
        raise InputError(f"results database {db} cannot be read ({exc}); {DB_HINT}") from exc
    click.echo(f"wrote {out / 'report.md'} and {len(result.figures)} figure(s)")
    for h in result.heatmaps:
        click.echo(
            f"heatmap {h.file}: observed failure % (rows mu {', '.join(f'{m:g}' for m in h.mu)}; "
            f"columns nu {', '.join(f'{n:g}' for n in h.nu)})"
        )
        for mu, row in zip(h.mu, h.rates["failure_rate"], strict=True):
            click.echo(f"  mu={mu:<8g} " + " ".join(f"{v:5.0f}" for v in row))
