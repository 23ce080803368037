"""Where a results database may live: checks that write nothing (`check_location`,
`check_database`), the header check that refuses a foreign file before SQLite opens it, and the
one-line errors for what SQLite reports about a file it cannot use."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from rnd._checks import check_writable_file
from rnd.errors import InputError
from rnd.evaluation.store.schema import SCHEMA_VERSION, check_schema, refuse_version, version_of
from rnd.sqlite import SQLITE_MAGIC, file_header

BUSY_TIMEOUT_S = 60.0


def has_content(p: Path) -> bool:
    """False for an absent or empty file (a new database goes there); True for an SQLite file;
    InputError, reading nothing but the header, for anything else."""
    if not p.exists():
        return False
    if not p.is_file():
        raise InputError(f"results database {p} is not a file; choose another --db")
    head = file_header(p, "results database")
    if head and head != SQLITE_MAGIC:
        raise InputError(f"{p} is not an SQLite database; choose another --db")
    return head != b""


def storage_error(path: Path, exc: sqlite3.Error) -> InputError:
    """A one-line InputError for what SQLite reports about a file it cannot use."""
    msg = str(exc)
    if isinstance(exc, sqlite3.OperationalError) and "locked" in msg:
        return InputError(
            f"results database {path} stayed locked by another process for {BUSY_TIMEOUT_S:.0f} s; "
            "try again when it is less busy"
        )
    if "readonly" in msg or "read-only" in msg:
        return InputError(
            f"results database {path} is read-only; make it (and its folder) writable, or use another --db"
        )
    if "unable to open" in msg:
        return InputError(f"cannot open results database {path} ({msg}); check the path and its permissions")
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
        return InputError(f"{path} is not a readable rnd results database ({msg}); choose another --db")
    return InputError(f"results database {path}: {msg}; check the file or use another --db")


def check_location(path: str | Path) -> None:
    """Check, writing nothing, that a results database can be created or updated at `path`:
    not a folder, no regular file in the way among its parents, folder and file writable."""
    p = Path(path)
    if p.exists() and not p.is_file():
        raise InputError(f"results database {p} is not a file; choose another --db")
    check_writable_file(p, "results database")  # the folder too: SQLite writes its journal beside it


def check_database(path: str | Path) -> bool:
    """Check, without writing, that `path` is absent or empty (False: a new database would be
    created) or an rnd results database this rnd can open (True: this schema or an older one);
    anything else raises InputError and the file is left as it is."""
    p = Path(path)
    if not has_content(p):
        return False
    mode = "rw" if Path(f"{p}-journal").exists() else "ro"  # a hot journal needs rw to roll back
    try:
        con = sqlite3.connect(f"{p.resolve().as_uri()}?mode={mode}", uri=True, timeout=BUSY_TIMEOUT_S)
        try:
            version = version_of(con, p)
            if version is None:
                return False
            refuse_version(p, version)
            if version == SCHEMA_VERSION:
                check_schema(con, p)
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise storage_error(p, exc) from exc
    return True
