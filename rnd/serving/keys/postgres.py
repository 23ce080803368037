"""The key store in a PostgreSQL database, shared by servers on several hosts (`rnd serve --keys
postgresql://...`; the `postgres` extra, psycopg 3). Same contract as the SQLite store
(`rnd.serving.keys.base`); what differs:

- `charge` is one statement, so one transaction and one round trip (`_CHARGE`): it reads the key
  under its row lock (`SELECT ... FOR UPDATE`), decides as `decide` does, and writes the charge with
  a conditional `UPDATE` when it passes. Two servers charging one key wait for each other on the
  row lock; different keys never do.
- The token bucket runs on the database's clock (`clock_timestamp()`), so hosts whose clocks
  disagree still share one rate.
- Tables `schema_info` and `keys` in the connection's current schema (`search_path`), created when
  the schema has no table at all (under an advisory lock, so replicas starting together create them
  once). A schema with other tables, or an rnd key store of a newer version, is refused untouched.
- Connections: a small pool per process (`POOL_SIZE`, opened on demand, reopened after a fork). A
  connection that fails is dropped; the call raises `StoreUnavailable` (the server answers 503) and
  the next call opens a new one, so the server recovers from a database restart without one of its
  own. A charge whose COMMIT got no answer may have been recorded: the request is not answered, so
  an image is never answered uncharged (charged >= answered).
- The URL's password is never echoed: `location` and every message show the URL without it.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator
from typing import Any

from rnd.errors import InputError
from rnd.extras import require
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
from rnd.sqlite import now, statements

#: Connections a process keeps open at most (the server's threads wait for a free one beyond it).
POOL_SIZE = 8
#: Seconds to wait for a connection to open, and for a statement to finish (lock waits included).
CONNECT_TIMEOUT_S = 5
STATEMENT_TIMEOUT_S = 30
#: The advisory lock taken while the schema is checked or created (any 64-bit number, fixed).
_SCHEMA_LOCK = 0x726E_645F_6B65_7973  # "rnd_keys"

_SCHEMA = """
CREATE TABLE schema_info (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE keys (
    name TEXT PRIMARY KEY,
    key_sha256 TEXT NOT NULL UNIQUE,
    budget BIGINT NOT NULL CHECK (budget >= 1),
    used BIGINT NOT NULL DEFAULT 0 CHECK (used >= 0 AND used <= budget),
    rate DOUBLE PRECISION CHECK (rate IS NULL OR rate > 0),
    tokens DOUBLE PRECISION,
    refilled_at DOUBLE PRECISION,
    revoked BOOLEAN NOT NULL DEFAULT FALSE,
    created_at TEXT NOT NULL,
    revoked_at TEXT
)
"""

URL_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(target: object) -> bool:
    return isinstance(target, str) and target.lower().startswith(URL_SCHEMES)


def redact(url: str) -> str:
    """The URL without its password (`postgresql://user:***@host/db`)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    auth, at, host = rest.rpartition("@")
    if not at:
        return url
    user, colon, _ = auth.partition(":")
    return f"{scheme}://{user}{':***' if colon else ''}@{host}"


def _first_line(exc: BaseException) -> str:
    """libpq's message in one line: the server's or the socket's reason, without the wrappers
    ("connection failed: connection to server at ... failed: FATAL:  ...")."""
    text = str(exc).strip().splitlines()
    line = text[0].strip() if text else type(exc).__name__
    line = line.rsplit(" failed: ", 1)[-1]
    for prefix in ("connection is bad:", "FATAL:", "ERROR:"):
        line = line.removeprefix(prefix).strip()
    return line


class PostgresKeyStore(KeyStore):
    """The key store in the PostgreSQL database at `url` (libpq's URL form).

    Args:
        url: e.g. ``postgresql://rnd:secret@db.internal:5432/rnd``; libpq's environment variables
            (`PGPASSWORD`, `PGSSLMODE`, ...) and `~/.pgpass` apply as usual.
        create: create the tables when the schema has none; False refuses a database without a key
            store (a server must not start on an empty one).
    """

    def __init__(self, url: str, *, create: bool = True) -> None:
        require("postgres", "a PostgreSQL key store")
        import psycopg

        self._psycopg = psycopg
        self.url = url
        self.location = redact(url)
        try:
            psycopg.conninfo.conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise InputError(f"{self.location} is not a valid PostgreSQL URL: {_first_line(exc)}") from None
        self._lock = threading.Lock()
        self._free: list[Any] = []
        self._open = 0
        self._slots = threading.BoundedSemaphore(POOL_SIZE)
        self._pid = os.getpid()
        self._closed = False
        try:
            self._prepare(create)
        except BaseException:
            self.close()
            raise

    # -- connections --------------------------------------------------------------------------

    def _connect(self) -> Any:
        psycopg = self._psycopg
        try:
            con = psycopg.connect(
                self.url,
                connect_timeout=CONNECT_TIMEOUT_S,
                options=f"-c statement_timeout={STATEMENT_TIMEOUT_S * 1000}",
                application_name="rnd keys",
                row_factory=psycopg.rows.dict_row,
                autocommit=True,  # reads are single statements; writes open a transaction
            )
        except psycopg.OperationalError as exc:
            message = _first_line(exc)
            if message.lower().startswith(("invalid", "missing")):  # libpq's reading of the URL
                raise InputError(f"{self.location} is not a valid PostgreSQL URL: {message}") from None
            if "password authentication failed" in message or "does not exist" in message:
                raise InputError(f"key store {self.location}: {message}") from None
            raise StoreUnavailable(f"key store {self.location} is unreachable: {message}") from None
        return con

    @contextlib.contextmanager
    def _connection(self) -> Iterator[Any]:
        """A pooled connection for one call; dropped (not returned) when the call failed on it."""
        if self._closed:
            raise InputError(f"key store {self.location} is closed; open a new key store")
        if os.getpid() != self._pid:  # a forked child never uses its parent's connections
            with self._lock:
                self._pid, self._free, self._open = os.getpid(), [], 0
                self._slots = threading.BoundedSemaphore(POOL_SIZE)
        slots = self._slots
        if not slots.acquire(timeout=STATEMENT_TIMEOUT_S):
            raise StoreUnavailable(
                f"key store {self.location}: no free connection in {STATEMENT_TIMEOUT_S} s"
            )
        con = None
        try:
            with self._lock:
                con = self._free.pop() if self._free else None
            if con is None:
                con = self._connect()
            yield con
        except BaseException:
            if con is not None and (con.closed or con.info.transaction_status != 0):
                with contextlib.suppress(Exception):
                    con.close()
                con = None
            raise
        finally:
            if con is not None:
                with self._lock:
                    if self._closed or con.closed:
                        con.close()
                    else:
                        self._free.append(con)
            slots.release()

    def _run(self, fn: Any, *args: Any, write: bool = True) -> Any:
        """Run `fn(cursor, *args)` on a pooled connection, in one transaction when `write` (a read of
        one statement runs on its own, in autocommit); database failures become one-line errors
        (`StoreUnavailable` for the ones a retry may cure)."""
        psycopg = self._psycopg
        with self._connection() as con:
            try:
                if not write:  # one statement in autocommit: one round trip
                    with con.cursor() as cur:
                        return fn(cur, *args)
                with con.transaction(), con.cursor() as cur:
                    return fn(cur, *args)
            except (psycopg.OperationalError, psycopg.errors.QueryCanceled) as exc:
                with contextlib.suppress(Exception):
                    con.close()
                raise StoreUnavailable(f"key store {self.location}: {_first_line(exc)}") from None
            except psycopg.errors.InsufficientPrivilege as exc:
                raise InputError(f"key store {self.location}: {_first_line(exc)}") from None
            except psycopg.DatabaseError as exc:
                with contextlib.suppress(Exception):
                    con.close()
                raise InputError(f"key store {self.location}: {_first_line(exc)}") from None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            free, self._free = self._free, []
        for con in free:
            with contextlib.suppress(Exception):
                con.close()

    # -- schema -------------------------------------------------------------------------------

    def _prepare(self, create: bool) -> None:
        def check(cur: Any) -> None:
            cur.execute("SELECT pg_advisory_xact_lock(%s)", (_SCHEMA_LOCK,))
            cur.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema() AND table_type = 'BASE TABLE'"
            )
            tables = {r["table_name"] for r in cur.fetchall()}
            if not tables:
                if not create:
                    raise InputError(
                        f"{self.location} holds no rnd key store; create one with "
                        f"`rnd keys add NAME --budget N --db URL`"
                    )
                for stmt in statements(_SCHEMA):
                    cur.execute(stmt)
                cur.executemany(
                    "INSERT INTO schema_info VALUES (%s, %s)",
                    [("kind", KIND), ("schema_version", str(SCHEMA_VERSION)), ("created_at", now())],
                )
                return
            info: dict[str, str] = {}
            if "schema_info" in tables:
                cur.execute("SELECT name, value FROM schema_info")
                info = {r["name"]: r["value"] for r in cur.fetchall()}
            if info.get("kind") != KIND:
                raise InputError(
                    f"{self.location} has tables but is not an rnd key store; give an empty database "
                    "(or schema) or an rnd key store"
                )
            version = info.get("schema_version")
            if version != str(SCHEMA_VERSION):
                raise InputError(
                    f"{self.location} has key schema version {version}, this rnd uses version "
                    f"{SCHEMA_VERSION} and cannot read it; use a newer rnd (the database is left untouched)"
                )
            cur.execute(
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = current_schema() AND table_name = 'keys'"
            )
            have = {r["column_name"] for r in cur.fetchall()}
            missing = [c for c in KEY_COLUMNS if c not in have]
            if missing:
                raise InputError(f"{self.location} is a damaged rnd key store (missing {', '.join(missing)})")

        self._run(check)

    # -- the store's statements ---------------------------------------------------------------

    def _insert(self, row: dict[str, Any]) -> None:
        def insert(cur: Any) -> None:
            cur.execute("SELECT 1 FROM keys WHERE name = %s", (row["name"],))
            if cur.fetchone():
                raise InputError(f"a key named {row['name']!r} exists already; choose another name")
            _insert_rows(cur, [row])

        self._run(insert)

    def _load(self, rows: list[dict[str, Any]]) -> None:
        def insert(cur: Any) -> None:
            cur.execute("LOCK TABLE keys IN SHARE ROW EXCLUSIVE MODE")
            cur.execute("SELECT name FROM keys WHERE name = ANY(%s)", ([r["name"] for r in rows],))
            clash = [r["name"] for r in cur.fetchall()]
            if clash:
                raise InputError(
                    f"{self.location} has keys named {', '.join(map(repr, clash[:5]))} already; "
                    "nothing was copied"
                )
            _insert_rows(cur, rows)

        self._run(insert)

    def _revoke(self, name: str, at: str) -> None:
        def update(cur: Any) -> None:
            cur.execute("SELECT revoked FROM keys WHERE name = %s FOR UPDATE", (name,))
            row = cur.fetchone()
            if row is None:
                raise no_key(name)
            if not row["revoked"]:
                cur.execute("UPDATE keys SET revoked = TRUE, revoked_at = %s WHERE name = %s", (at, name))

        self._run(update)

    def _rows(self, columns: tuple[str, ...]) -> list[dict[str, Any]]:
        def select(cur: Any) -> list[dict[str, Any]]:
            cur.execute(f"SELECT {', '.join(columns)} FROM keys ORDER BY created_at, name")
            return [dict(r) for r in cur.fetchall()]

        return self._run(select, write=False)

    def _counts(self, name: str) -> tuple[int, int] | None:
        def select(cur: Any) -> tuple[int, int] | None:
            cur.execute("SELECT budget, used FROM keys WHERE name = %s", (name,))
            row = cur.fetchone()
            return None if row is None else (int(row["budget"]), int(row["used"]))

        return self._run(select, write=False)

    def _lookup(self, key_sha256: str) -> dict[str, Any] | None:
        def select(cur: Any) -> dict[str, Any] | None:
            cur.execute(
                f"SELECT {', '.join(STATE_COLUMNS)}, extract(epoch FROM clock_timestamp())::float8 AS now "
                "FROM keys WHERE key_sha256 = %s",
                (key_sha256,),
            )
            row = cur.fetchone()
            return None if row is None else dict(row)

        return self._run(select, write=False)

    def _charge(self, name: str, images: int) -> Charge:
        return self._run(_charge, name, images, write=False)  # one statement: its own transaction


def _insert_rows(cur: Any, rows: list[dict[str, Any]]) -> None:
    cols = ", ".join(KEY_COLUMNS)
    marks = ", ".join("%s" for _ in KEY_COLUMNS)
    cur.executemany(
        f"INSERT INTO keys ({cols}) VALUES ({marks})",
        [tuple(bool(r[c]) if c == "revoked" else r[c] for c in KEY_COLUMNS) for r in rows],
    )


#: `decide` in one statement: read the key under its row lock, decide, and write the charge when it
#: passes, in one round trip (autocommit makes the statement its own transaction). The statement
#: returns the key as it was read, the database's clock and whether the charge was written; the
#: caller decides the same row again with `decide_row`, which is what it reports (and what the tests
#: hold both stores to), and checks that the two decisions agree.
_CHARGE = """
WITH k AS (
    SELECT name, budget, used, rate, tokens, refilled_at, revoked,
           extract(epoch FROM clock_timestamp())::float8 AS now
    FROM keys WHERE name = %(name)s FOR UPDATE
), d AS (
    SELECT k.*,
           CASE WHEN rate IS NULL THEN NULL ELSE LEAST(
               GREATEST(rate, 1.0),
               COALESCE(tokens, GREATEST(rate, 1.0)) + GREATEST(0.0, now - COALESCE(refilled_at, now)) * rate
           ) END AS avail
    FROM k
), ok AS (
    SELECT d.*, (NOT revoked AND %(n)s <= budget - used
                 AND (rate IS NULL OR avail >= LEAST(%(n)s::float8, GREATEST(rate, 1.0)))) AS pass
    FROM d
), u AS (
    UPDATE keys SET used = keys.used + %(n)s,
                    tokens = CASE WHEN ok.rate IS NULL THEN keys.tokens ELSE ok.avail - %(n)s END,
                    refilled_at = ok.now
    FROM ok WHERE keys.name = ok.name AND ok.pass
    RETURNING keys.used
)
SELECT ok.budget, ok.used, ok.rate, ok.tokens, ok.refilled_at, ok.revoked, ok.now,
       EXISTS (SELECT 1 FROM u) AS charged
FROM ok
"""


def _charge(cur: Any, key_id: str, images: int) -> Charge:
    cur.execute(_CHARGE, {"name": key_id, "n": images})
    row = cur.fetchone()
    if row is None:
        raise no_key(key_id)
    decision = decide_row(row, images, row["now"])
    if decision.charge.ok != row["charged"]:  # the statement and `decide` disagree: a bug, not input
        raise RuntimeError(f"key store: the charge statement and decide() disagree on {dict(row)}")
    return decision.charge
