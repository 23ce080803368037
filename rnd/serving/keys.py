"""API keys and image quotas for the server: one SQLite file (WAL) shared by every worker and process.

Tables (schema version 1)::

  schema_info  name -> value; `kind` = 'rnd keys' (what tells this file from a results database)
               and `schema_version` must equal `SCHEMA_VERSION`
  keys         one row per key: its name (the key id), the sha256 of the secret (never the secret),
               the budget and the images used so far, the rate limit in images/s (NULL: none) with
               its token bucket (tokens, refilled_at in Unix seconds), revoked, created_at, revoked_at

Guarantees (pinned by tests/serving/test_keys.py):

- A secret is shown once, by `add`, and stored only as its sha256. `authorize` looks the hash up and
  compares it with `hmac.compare_digest`, so timing does not depend on how much of a key is right.
- `charge` decides and records in ONE `BEGIN IMMEDIATE` transaction (read, decide, write, commit)
  under SQLite's write lock, so the quota holds across threads, workers, processes and restarts:
  an answered request has been charged, a refused one charges nothing.
- Rate limit R images/s: a token bucket of capacity max(R, 1) images. A request of n images passes
  when the bucket holds min(n, capacity) tokens and then takes n (the bucket may go below zero, so
  a request larger than the bucket is served and the long-run rate still holds); a refusal says
  how many seconds until enough tokens.
- Commits use `synchronous = NORMAL` (WAL): a killed process (even SIGKILL) loses no committed
  charge; only a power cut may lose the last few.
- Opening never writes to a file that is not an rnd key database (another SQLite database, a
  results database, another format, a newer schema): it is refused untouched.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import os
import re
import secrets
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from rnd._checks import check_writable_file
from rnd.errors import InputError
from rnd.sqlite import SQLITE_MAGIC, Transaction, file_header, now, statements, table_columns

SCHEMA_VERSION = 1
KIND = "rnd keys"
KEY_PREFIX = "rnd_"
BUSY_TIMEOUT_S = 60.0
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

Reason = Literal["", "quota", "rate", "revoked"]

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
_KEY_COLUMNS = (
    "name",
    "key_sha256",
    "budget",
    "used",
    "rate",
    "tokens",
    "refilled_at",
    "revoked",
    "created_at",
    "revoked_at",
)
#: Compared with when a token matches no row, so a miss costs the same as a hit.
_DUMMY_HASH = hashlib.sha256(b"no such key").hexdigest()


@dataclass(frozen=True)
class Charge:
    """The decision on one request: answer it (its images charged) or refuse it (nothing charged).

    Args:
        ok: answer the request.
        remaining: images left on the key after this decision.
        retry_after: seconds until a refused request could pass (rate), None when it never will
            (quota, revoked) or when `ok`.
        reason: "" when ok; "quota", "rate" or "revoked".
    """

    ok: bool
    remaining: int
    retry_after: float | None
    reason: Reason


def _sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


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
    missing = [c for c in _KEY_COLUMNS if c not in tables.get("keys", [])]
    if missing:
        raise InputError(f"{p} is a damaged rnd key database (missing {', '.join(missing)}); restore a copy")
    return True


def _storage_error(p: Path, exc: sqlite3.Error) -> InputError:
    msg = str(exc)
    if "locked" in msg:
        return InputError(f"key database {p} stayed locked for {BUSY_TIMEOUT_S:.0f} s; try again")
    if "readonly" in msg or "read-only" in msg:
        return InputError(f"key database {p} is read-only; make it (and its folder) writable")
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
        return InputError(f"{p} is not a readable rnd key database ({msg}); choose another file")
    return InputError(f"key database {p}: {msg}")


def check_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InputError(
            f"key name {name!r} is not valid; use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


class KeyStore:
    """The key database at `path`, created (with its schema, in WAL mode) when absent or empty.

    Safe to share between threads (one connection, used under a lock) and between processes
    (SQLite's write lock); a forked child opens its own connection on first use.

    Example:
        >>> store = KeyStore(tmp / "keys.sqlite")
        >>> secret = store.add("alice", budget=1000, rate=50)
        >>> key_id = store.authorize(secret)          # "alice"
        >>> store.charge(key_id, 64)                   # Charge(ok=True, remaining=936, ...)
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        _check_file(self.path)
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
            raise InputError(f"key database {self.path} is closed; open a new KeyStore")
        if os.getpid() != self._pid:  # a forked child never uses its parent's connection
            self._pid = os.getpid()
            self._con = self._connect()
            self._con.execute("PRAGMA synchronous = NORMAL")
        return self._con

    def _run(self, fn: Any, *args: Any) -> Any:
        """Run `fn(con, *args)` in one BEGIN IMMEDIATE transaction, under this store's lock."""
        with self._lock:
            con = self._db()
            try:
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

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- keys ---------------------------------------------------------------------------------

    def add(self, name: str, budget: int, rate: float | None = None) -> str:
        """Create key `name` allowed `budget` images (at most `rate` images/s) and return its
        secret: the only time it exists in clear."""
        check_name(name)
        if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
            raise InputError(f"budget must be a whole number of images >= 1, got {budget!r}")
        if rate is not None:
            if isinstance(rate, bool) or not isinstance(rate, int | float) or not math.isfinite(rate):
                raise InputError(f"rate must be a finite number of images per second, got {rate!r}")
            if rate <= 0:
                raise InputError(f"rate must be > 0 images per second (or no rate limit), got {rate!r}")
            rate = float(rate)
        secret = KEY_PREFIX + secrets.token_urlsafe(32)

        def insert(con: sqlite3.Connection) -> None:
            if con.execute("SELECT 1 FROM keys WHERE name = ?", (name,)).fetchone():
                raise InputError(f"a key named {name!r} exists already; choose another name")
            con.execute(
                "INSERT INTO keys (name, key_sha256, budget, rate, tokens, refilled_at, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, _sha256(secret), budget, rate, _capacity(rate), time.time(), now()),
            )

        self._run(insert)
        return secret

    def revoke(self, name: str) -> None:
        """Revoke key `name` for good (revoking it again changes nothing)."""

        def update(con: sqlite3.Connection) -> None:
            row = con.execute("SELECT revoked FROM keys WHERE name = ?", (name,)).fetchone()
            if row is None:
                raise InputError(f"no key named {name!r}; `rnd keys list` shows the keys")
            if not row["revoked"]:
                con.execute("UPDATE keys SET revoked = 1, revoked_at = ? WHERE name = ?", (now(), name))

        self._run(update)

    def list(self) -> list[dict[str, Any]]:
        """Every key, oldest first: name, budget, used, remaining, rate, revoked, created_at (never
        the secret nor its hash)."""

        def select(con: sqlite3.Connection) -> list[dict[str, Any]]:
            rows = con.execute(
                "SELECT name, budget, used, rate, revoked, created_at FROM keys ORDER BY created_at, name"
            ).fetchall()
            return [
                {
                    "name": r["name"],
                    "budget": r["budget"],
                    "used": r["used"],
                    "remaining": r["budget"] - r["used"],
                    "rate": r["rate"],
                    "revoked": bool(r["revoked"]),
                    "created_at": r["created_at"],
                }
                for r in rows
            ]

        return self._run(select)

    def remaining(self, key_id: str) -> int:
        """Images left on key `key_id`, without charging it (the server's quota header on refusals)."""

        def select(con: sqlite3.Connection) -> int:
            row = con.execute("SELECT budget, used FROM keys WHERE name = ?", (key_id,)).fetchone()
            if row is None:
                raise InputError(f"no key named {key_id!r}")
            return int(row["budget"] - row["used"])

        return self._run(select)

    def authorize(self, token: str) -> str | None:
        """The key id (its name) of a live key whose secret is `token`; None for anything else."""
        if not isinstance(token, str) or not token:
            return None
        digest = _sha256(token)
        with self._lock:
            try:
                row = (
                    self._db()
                    .execute("SELECT name, key_sha256, revoked FROM keys WHERE key_sha256 = ?", (digest,))
                    .fetchone()
                )
            except sqlite3.Error as exc:
                raise _storage_error(self.path, exc) from exc
        stored = row["key_sha256"] if row is not None else _DUMMY_HASH
        if not hmac.compare_digest(stored.encode(), digest.encode()) or row is None or row["revoked"]:
            return None
        return str(row["name"])

    def charge(self, key_id: str, images: int) -> Charge:
        """Decide whether key `key_id` may have `images` more images answered, and charge them if
        so, atomically (one write transaction)."""
        if isinstance(images, bool) or not isinstance(images, int) or images < 1:
            raise InputError(f"images to charge must be a whole number >= 1, got {images!r}")
        return self._run(_charge, key_id, images)


def _capacity(rate: float | None) -> float | None:
    return None if rate is None else max(rate, 1.0)


def _charge(con: sqlite3.Connection, key_id: str, images: int) -> Charge:
    row = con.execute(
        "SELECT budget, used, rate, tokens, refilled_at, revoked FROM keys WHERE name = ?", (key_id,)
    ).fetchone()
    if row is None:
        raise InputError(f"no key named {key_id!r}; `rnd keys list` shows the keys")
    remaining = row["budget"] - row["used"]
    if row["revoked"]:
        return Charge(False, remaining, None, "revoked")
    if images > remaining:
        return Charge(False, remaining, None, "quota")
    now = time.time()
    tokens, rate = row["tokens"], row["rate"]
    if rate is not None:
        capacity = max(rate, 1.0)
        elapsed = max(0.0, now - row["refilled_at"])  # a clock set back refills nothing
        tokens = min(capacity, tokens + elapsed * rate)
        need = min(float(images), capacity)
        if tokens < need:
            return Charge(False, remaining, (need - tokens) / rate, "rate")
        tokens -= images
    con.execute(
        "UPDATE keys SET used = used + ?, tokens = ?, refilled_at = ? WHERE name = ?",
        (images, tokens, now, key_id),
    )
    return Charge(True, remaining - images, None, "")
