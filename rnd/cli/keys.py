"""`rnd keys add | list | revoke`: the API keys and image quotas of `rnd serve --keys DB`."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from rnd.cli.app import json_option, main
from rnd.errors import InputError
from rnd.serving.keys import KeyStore, open_keys


def db_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--db",
        type=click.Path(path_type=Path),
        required=True,
        help="key database (SQLite; created when absent), the file given to `rnd serve --keys`",
    )(f)


def existing(db: Path) -> KeyStore:
    """The key database at `db`, which must exist (only `add` creates one)."""
    if not db.exists():
        raise InputError(
            f"key database {db} not found; create it with `rnd keys add NAME --budget N --db {db}`"
        )
    return open_keys(db)


@main.group()
def keys() -> None:
    """API keys and image quotas for `rnd serve` (stored hashed; a key is shown only once)."""


@keys.command("add")
@click.argument("name")
@click.option(
    "--budget", type=click.IntRange(min=1), required=True, help="images this key may have answered, in all"
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="at most this many images per second [default: none]",
)
@db_option
def add(name: str, budget: int, rate: float | None, db: Path) -> None:
    """Create key NAME and print it (once: only its hash is stored)."""
    with open_keys(db) as store:
        secret = store.add(name, budget, rate)
    click.echo(secret)
    limit = f", at most {rate:g} images/s" if rate is not None else ""
    click.echo(
        f"key {name!r}: {budget} images{limit}; copy it now, it is not stored and will not be shown again",
        err=True,
    )


@keys.command("list")
@db_option
@json_option
def list_keys(db: Path, as_json: bool) -> None:
    """Show every key's budget, use, rate and state (never the keys themselves)."""
    with existing(db) as store:
        rows = store.list()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no keys in {db}; add one with `rnd keys add NAME --budget IMAGES --db {db}`")
        return
    header = ("name", "budget", "used", "remaining", "rate/s", "state", "created")
    table = [
        (
            r["name"],
            str(r["budget"]),
            str(r["used"]),
            str(r["remaining"]),
            "-" if r["rate"] is None else f"{r['rate']:g}",
            "revoked" if r["revoked"] else "active",
            r["created_at"],
        )
        for r in rows
    ]
    widths = [max(len(c) for c in col) for col in zip(header, *table, strict=True)]
    for line in (header, *table):
        click.echo("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip())


@keys.command("revoke")
@click.argument("name")
@db_option
def revoke(name: str, db: Path) -> None:
    """Revoke key NAME for good: its requests are refused from now on, by every worker."""
    with existing(db) as store:
        store.revoke(name)
    click.echo(f"revoked key {name!r}")
