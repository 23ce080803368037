"""The key store in one SQLite file (WAL), shared by every worker and process of one host: the
embedded default (`rnd.serving.keys.base` has the contract).

Tables (schema version 1)::

  schema_info  name -> value; `kind` = 'rnd keys' (what tells this file from a results database)
               and `schema_version` must equal `SCHEMA_VERSION`
  keys         one row per key (`KEY_COLUMNS`); revoked 0/1, times as ISO text, refilled_at Unix s

- `charge` runs in one `BEGIN IMMEDIATE` transaction: SQLite's write lock covers every process on
  the host. SQLite's locking is not safe over a network file system: hosts that share keys use
  `PostgresKeyStore`.
- Commits use `synchronous = NORMAL` (WAL): a killed process (even SIGKILL) loses no committed
  charge; only a power cut may lose the last few.
- A file that is not an rnd key database (another format, another SQLite database, a results
  database, a newer schema) is refused untouched.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from rnd._checks import check_writable_file
from rnd.errors import InputError
from rnd.serving.keys.base import (
    KEY_COLUMNS,
    KIND,
    SCHEMA_VERSION,
    STATE_COLUMNS,
    Charge,
    KeyStore,
    StoreUnavailable,
    decide_row,
    no_key,
)
from rnd.sqlite import SQLITE_MAGIC, Transaction, file_header, now, statements, table_columns

BUSY_TIMEOUT_S = 60.0

_SCHEMA = """
CREATE TABLE schema_info (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE keys (
    name TEXT PRIMARY KEY,
    key_sha256 TEXT NOT NULL UNIQUE,
    budget INTEGER NOT NULL CHECK (budget >= 1),
    used INTEGER NOT NULL DEFAULT 0 CHECK (used >= 0 AND used <= budget),
    rate REAL CHECK (rate IS NULL OR rate > 0),
    tokens REAL,
    refilled_at REAL,
    revoked INTEGER NOT NULL DEFAULT 0,
    created_at TEXT NOT NULL,
    revoked_at TEXT
);
"""


def _check_file(p: Path) -> None:
    """Refuse, reading nothing but the header, a path that cannot hold a key database."""
    if p.exists() and not p.is_file():
        raise InputError(f"key database {p} is not a file; give the path of a key database file")
    check_writable_file(p, "key database")
    if not p.exists():
        return
    head = file_header(p, "key database")
    if head and head != SQLITE_MAGIC:
        raise InputError(f"{p} is not an SQLite database, so not an rnd key database; choose another file")


def _check_version(con: sqlite3.Connection, p: Path) -> bool:
    """False for a database without tables (new); True for an rnd key database of this schema;
    InputError for anything else (the file is not touched)."""
    tables = table_columns(con)
    if not tables:
        return False
    info: dict[str, str] = {}
    if "schema_info" in tables:
        info = dict(con.execute("SELECT name, value FROM schema_info").fetchall())
    if info.get("kind") != KIND:
        raise InputError(f"{p} is an SQLite database but not an rnd key database; choose another file")
    version = info.get("schema_version")
    if version != str(SCHEMA_VERSION):
        raise InputError(
            f"{p} has key schema version {version}, this rnd uses version {SCHEMA_VERSION} and cannot "
            "read it; use a newer rnd or another file (this one is left untouched)"
        )
    missing = [c for c in KEY_COLUMNS if c not in tables.get("keys", [])]
    if missing:
        raise InputError(f"{p} is a damaged rnd key database (missing {', '.join(missing)}); restore a copy")
    return True


def _storage_error(p: Path, exc: sqlite3.Error) -> InputError:
    msg = str(exc)
    if "locked" in msg:
        return StoreUnavailable(f"key database {p} stayed locked for {BUSY_TIMEOUT_S:.0f} s; try again")
    if "readonly" in msg or "read-only" in msg:
        return InputError(f"key database {p} is read-only; make it (and its folder) writable")
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
        return InputError(f"{p} is not a readable rnd key database ({msg}); choose another file")
    return StoreUnavailable(f"key database {p}: {msg}")


def _absent(p: Path) -> InputError:
    return InputError(f"no rnd key database at {p}; create it with `rnd keys add NAME --budget N --db {p}`")


class SQLiteKeyStore(KeyStore):
    """The key database at `path`, created (with its schema, in WAL mode) when absent or empty;
    with `create=False`, an absent or empty file is refused (nothing is written).

    Safe to share between threads (one connection, used under a lock) and between processes
    (SQLite's write lock); a forked child opens its own connection on first use.
    """

    def __init__(self, path: str | Path, *, create: bool = True) -> None:
        self.path = Path(path).expanduser()
        self.location = str(self.path)
        _check_file(self.path)
        if not create and not self.path.exists():
            raise _absent(self.path)
        self._create = create
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._pid = os.getpid()
        self._con: sqlite3.Connection | None = None
        try:
            self._con = self._connect()
            self._prepare(self._con)
        except sqlite3.Error as exc:
            self.close()
            raise _storage_error(self.path, exc) from exc
        except BaseException:
            self.close()
            raise

    # -- connection ---------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        con = sqlite3.connect(
            self.path, isolation_level=None, timeout=BUSY_TIMEOUT_S, check_same_thread=False
        )
        con.row_factory = sqlite3.Row
        return con

    def _prepare(self, con: sqlite3.Connection) -> None:
        """Check or create the schema under the write lock; only then switch the file to WAL (a
        foreign database is refused before anything is written to it)."""
        with Transaction(con):
            if not _check_version(con, self.path):
                if not self._create:
                    raise _absent(self.path)
                for stmt in statements(_SCHEMA):
                    con.execute(stmt)
                con.executemany(
                    "INSERT INTO schema_info VALUES (?, ?)",
                    [("kind", KIND), ("schema_version", str(SCHEMA_VERSION)), ("created_at", now())],
                )
        con.execute("PRAGMA journal_mode = WAL")
        con.execute("PRAGMA synchronous = NORMAL")

    def _db(self) -> sqlite3.Connection:
        if self._con is None:
            raise InputError(f"key database {self.path} is closed; open a new key store")
        if os.getpid() != self._pid:  # a forked child never uses its parent's connection
            self._pid = os.getpid()
            self._con = self._connect()
            self._con.execute("PRAGMA synchronous = NORMAL")
        return self._con

    def _run(self, fn: Any, *args: Any, write: bool = True) -> Any:
        """Run `fn(con, *args)` under this store's lock: in one BEGIN IMMEDIATE transaction when
        `write`, else as one read."""
        with self._lock:
            con = self._db()
            try:
                if not write:
                    return fn(con, *args)
                con.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(con, *args)
                    con.execute("COMMIT")
                except BaseException:
                    if con.in_transaction:
                        con.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise _storage_error(self.path, exc) from exc
            return result

    def close(self) -> None:
        with self._lock:
            if self._con is not None:
                self._con.close()
                self._con = None

    # -- the store's statements ---------------------------------------------------------------

    def _insert(self, row: dict[str, Any]) -> None:
        def insert(con: sqlite3.Connection) -> None:
            if con.execute("SELECT 1 FROM keys WHERE name = ?", (row["name"],)).fetchone():
                raise InputError(f"a key named {row['name']!r} exists already; choose another name")
            _insert_rows(con, [row])

        self._run(insert)

    def _load(self, rows: list[dict[str, Any]]) -> None:
        def insert(con: sqlite3.Connection) -> None:
            names = [r["name"] for r in rows]
            have = {r[0] for r in con.execute("SELECT name FROM keys")}
            clash = [n for n in names if n in have]
            if clash:
                raise InputError(
                    f"{self.location} has keys named {', '.join(map(repr, clash[:5]))} already; "
                    "nothing was copied"
                )
            _insert_rows(con, rows)

        self._run(insert)

    def _revoke(self, name: str, at: str) -> None:
        def update(con: sqlite3.Connection) -> None:
            row = con.execute("SELECT revoked FROM keys WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise no_key(name)
            if not row["revoked"]:
                con.execute("UPDATE keys SET revoked = 1, revoked_at = ? WHERE name = ?", (at, name))

        self._run(update)

    def _rows(self, columns: tuple[str, ...]) -> list[dict[str, Any]]:
        def select(con: sqlite3.Connection) -> list[dict[str, Any]]:
            cols = ", ".join(columns)
            rows = con.execute(f"SELECT {cols} FROM keys ORDER BY created_at, name").fetchall()
            return [{c: (bool(r[c]) if c == "revoked" else r[c]) for c in columns} for r in rows]

        return self._run(select, write=False)

    def _counts(self, name: str) -> tuple[int, int] | None:
        def select(con: sqlite3.Connection) -> tuple[int, int] | None:
            row = con.execute("SELECT budget, used FROM keys WHERE name = ?", (name,)).fetchone()
            return None if row is None else (int(row["budget"]), int(row["used"]))

        return self._run(select, write=False)

    def _lookup(self, key_sha256: str) -> dict[str, Any] | None:
        def select(con: sqlite3.Connection) -> dict[str, Any] | None:
            row = con.execute(
                f"SELECT {', '.join(STATE_COLUMNS)} FROM keys WHERE key_sha256 = ?", (key_sha256,)
            ).fetchone()
            return None if row is None else {**dict(row), "now": time.time()}

        return self._run(select, write=False)

    def _charge(self, name: str, images: int) -> Charge:
        return self._run(_charge, name, images)


def _insert_rows(con: sqlite3.Connection, rows: list[dict[str, Any]]) -> None:
    cols = ", ".join(KEY_COLUMNS)
    marks = ", ".join("?" for _ in KEY_COLUMNS)
    con.executemany(
        f"INSERT INTO keys ({cols}) VALUES ({marks})",
        [tuple(int(r[c]) if c == "revoked" else r[c] for c in KEY_COLUMNS) for r in rows],
    )


def _charge(con: sqlite3.Connection, key_id: str, images: int) -> Charge:
    row = con.execute(
        "SELECT budget, used, rate, tokens, refilled_at, revoked FROM keys WHERE name = ?", (key_id,)
    ).fetchone()
    if row is None:
        raise no_key(key_id)
    at = time.time()
    decision = decide_row(row, images, at)
    if decision.charge.ok:
        con.execute(
            "UPDATE keys SET used = used + ?, tokens = ?, refilled_at = ? WHERE name = ?",
            (images, decision.tokens, at, key_id),
        )
    return decision.charge
