"""`rnd keys add | list | revoke | copy`: the API keys and image quotas of `rnd serve --keys STORE`,
where STORE is an SQLite file or a `postgresql://` URL (the postgres extra)."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import click

from rnd.cli.app import json_option, main
from rnd.errors import InputError
from rnd.serving.keys import KeyStore, is_postgres_url, open_keys, redact
from rnd.serving.keys.base import MAX_BUDGET, check_budget, check_name, check_rate


def db_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option(
        "--db",
        required=True,
        metavar="STORE",
        help="key store: an SQLite file (created by `add` when absent) or a postgresql:// URL; "
        "what `rnd serve --keys` is given",
    )(f)


def shown(db: str) -> str:
    """A store as messages name it (a URL without its password)."""
    return redact(db) if is_postgres_url(db) else db


def existing(db: str) -> KeyStore:
    """The key store at `db`, which must hold one already (only `add` and `copy` create one)."""
    return open_keys(db, create=False)


@main.group()
def keys() -> None:
    """API keys and image quotas for `rnd serve` (stored hashed; a key is shown only once)."""


@keys.command("add")
@click.argument("name")
@click.option(
    "--budget",
    type=click.IntRange(min=1, max=MAX_BUDGET),
    required=True,
    help="images this key may have answered, in all",
)
@click.option(
    "--rate",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="at most this many images per second [default: none]",
)
@db_option
def add(name: str, budget: int, rate: float | None, db: str) -> None:
    """Create key NAME and print it (once: only its hash is stored)."""
    check_name(name)  # everything is checked before the store is opened (or created)
    check_budget(budget)
    check_rate(rate)
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
def list_keys(db: str, as_json: bool) -> None:
    """Show every key's budget, use, rate and state (never the keys themselves)."""
    with existing(db) as store:
        rows = store.list()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no keys in {shown(db)}; add one with `rnd keys add NAME --budget IMAGES --db STORE`")
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
def revoke(name: str, db: str) -> None:
    """Revoke key NAME for good: its requests are refused from now on, by every worker."""
    check_name(name)
    with existing(db) as store:
        store.revoke(name)
    click.echo(f"revoked key {name!r}")


@keys.command("copy")
@click.argument("source", metavar="FROM")
@click.argument("dest", metavar="TO")
def copy(source: str, dest: str) -> None:
    """Copy every key of store FROM into store TO (created when empty), e.g. an SQLite file into
    PostgreSQL: the same secrets keep working, with their used counts, rate buckets and revocations.
    All or nothing: a name TO holds already refuses the copy."""
    if source == dest:
        raise InputError("FROM and TO are the same store")
    with existing(source) as src:
        rows = src.dump()
    if not rows:
        raise InputError(f"{shown(source)} holds no keys; nothing to copy")
    with open_keys(dest) as dst:
        dst.load(rows)
        used = sum(int(r["used"]) for r in rows)
    click.echo(f"copied {len(rows)} keys ({used} images used in all) from {shown(source)} to {shown(dest)}")
