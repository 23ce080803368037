"""The SQLite plumbing rnd's two databases share (the results store and the server's key store):
timestamps, scripts split into statements, the tables of a file, a header check that reads nothing
else, and one `BEGIN IMMEDIATE` transaction. Ground layer: imports nothing of rnd but its errors."""

from __future__ import annotations

import datetime as _dt
import sqlite3
from pathlib import Path

from rnd.errors import InputError

SQLITE_MAGIC = b"SQLite format 3\x00"


def now() -> str:
    """The current UTC time, ISO 8601 to the millisecond (what every `*_at` column holds)."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")


def statements(script: str) -> list[str]:
    """The statements of an SQL script (no statement here contains a `;` of its own)."""
    return [s.strip() for s in script.strip().split(";") if s.strip()]


def table_columns(con: sqlite3.Connection) -> dict[str, list[str]]:
    """Every table of an open database (SQLite's own excepted), by name, with its columns."""
    tables = [
        r[0]
        for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]
    return {t: [r[0] for r in con.execute("SELECT name FROM pragma_table_info(?)", (t,))] for t in tables}


def file_header(p: Path, what: str) -> bytes:
    """The first bytes of the file at `p` (b"" for an empty file), reading nothing else; InputError
    naming `what` when it cannot be read."""
    try:
        with open(p, "rb") as fh:
            return fh.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise InputError(f"cannot read {what} {p}: {exc.strerror or exc}") from exc


class Transaction:
    """BEGIN IMMEDIATE ... COMMIT, rolled back on any exception."""

    def __init__(self, con: sqlite3.Connection) -> None:
        self.con = con

    def __enter__(self) -> sqlite3.Connection:
        self.con.execute("BEGIN IMMEDIATE")
        return self.con

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.con.execute("COMMIT")
        else:
            self.con.execute("ROLLBACK")
