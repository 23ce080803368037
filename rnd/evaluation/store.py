"""The results database: SQLite (stdlib), one file, crash-safe and resumable.

Tables:
  schema_info     name -> value; `schema_version` must equal `SCHEMA_VERSION`
  sweeps          one row per (config text, quick) ever started, with the config itself
  cells           one row per cell key: every parameter as columns and as JSON, status
                  (pending | done | failed), the error of a failed run
  sweep_cells     which cells each sweep asked for
  image_results   one row per (cell, attacked image): data-set index, label, observed success,
                  queries, success re-checked on the clean model and by a noisy vote
  cell_summaries  one row per finished cell: failure rates three ways, mean / median queries,
                  clean accuracy, the image indices, the attack's full parameters, rnd version

A finished cell's rows, summary and status are written in ONE transaction, so a process killed at
any moment (even SIGKILL) leaves either the whole cell or nothing of it; primary keys make a
duplicate impossible. Opening never writes to a file that is not an rnd database of this schema.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from rnd.errors import InputError
from rnd.evaluation.sweep import Cell, CellResult

SCHEMA_VERSION = 1
SQLITE_MAGIC = b"SQLite format 3\x00"

_SCHEMA = """
CREATE TABLE schema_info (name TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE sweeps (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    config_sha256 TEXT NOT NULL,
    quick INTEGER NOT NULL,
    config TEXT NOT NULL,
    config_path TEXT,
    rnd_version TEXT NOT NULL,
    created TEXT NOT NULL,
    UNIQUE (config_sha256, quick)
);
CREATE TABLE cells (
    key TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    model TEXT NOT NULL,
    checkpoint TEXT NOT NULL,
    checkpoint_sha256 TEXT NOT NULL,
    dataset TEXT NOT NULL,
    split TEXT NOT NULL,
    images INTEGER NOT NULL,
    start INTEGER NOT NULL,
    attack TEXT NOT NULL,
    norm TEXT NOT NULL,
    eps REAL NOT NULL,
    mu REAL,
    eot INTEGER NOT NULL,
    budget INTEGER NOT NULL,
    nu REAL NOT NULL,
    seed INTEGER NOT NULL,
    output TEXT NOT NULL,
    params TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'done', 'failed')),
    error TEXT,
    updated TEXT NOT NULL
);
CREATE TABLE sweep_cells (
    sweep_id INTEGER NOT NULL REFERENCES sweeps(id),
    cell_key TEXT NOT NULL REFERENCES cells(key),
    PRIMARY KEY (sweep_id, cell_key)
);
CREATE TABLE image_results (
    cell_key TEXT NOT NULL REFERENCES cells(key),
    position INTEGER NOT NULL,
    image_index INTEGER NOT NULL,
    label INTEGER NOT NULL,
    success INTEGER NOT NULL,
    queries INTEGER NOT NULL,
    success_clean INTEGER NOT NULL,
    success_vote INTEGER NOT NULL,
    PRIMARY KEY (cell_key, position)
);
CREATE TABLE cell_summaries (
    cell_key TEXT PRIMARY KEY REFERENCES cells(key),
    images INTEGER NOT NULL,
    failure_rate REAL NOT NULL,
    failure_rate_clean REAL NOT NULL,
    failure_rate_vote REAL NOT NULL,
    mean_queries REAL,
    median_queries REAL,
    clean_accuracy REAL,
    model_accuracy REAL,
    indices TEXT NOT NULL,
    attack_params TEXT NOT NULL,
    rnd_version TEXT NOT NULL,
    seconds REAL NOT NULL,
    finished TEXT NOT NULL
);
"""

CELL_COLUMNS = (
    "model",
    "checkpoint",
    "checkpoint_sha256",
    "dataset",
    "split",
    "images",
    "start",
    "attack",
    "norm",
    "eps",
    "mu",
    "eot",
    "budget",
    "nu",
    "seed",
    "output",
    "params",
)
SUMMARY_COLUMNS = (
    "images",
    "failure_rate",
    "failure_rate_clean",
    "failure_rate_vote",
    "mean_queries",
    "median_queries",
    "clean_accuracy",
    "model_accuracy",
)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def _real(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def _read_version(uri: str) -> Any:
    con = sqlite3.connect(uri, uri=True)
    try:
        return con.execute("SELECT value FROM schema_info WHERE name = 'schema_version'").fetchone()
    finally:
        con.close()


def check_database(path: str | Path) -> bool:
    """Check, without writing, that `path` is absent (False) or an rnd results database of this
    schema version (True); anything else raises InputError and the file is left as it is."""
    p = Path(path)
    if not p.exists():
        return False
    if not p.is_file():
        raise InputError(f"results database {p} is not a file")
    with open(p, "rb") as fh:
        head = fh.read(len(SQLITE_MAGIC))
    if head == b"":
        raise InputError(
            f"{p} is an empty file, not an rnd results database; remove it or choose another --db"
        )
    if head != SQLITE_MAGIC:
        raise InputError(f"{p} is not an SQLite database; choose another --db")
    try:
        row = _read_version(f"{p.resolve().as_uri()}?mode=ro")
    except sqlite3.OperationalError as exc:
        if "no such table" in str(exc):
            raise InputError(
                f"{p} is an SQLite database but not an rnd results database "
                "(no schema_info table); choose another --db"
            ) from exc
        if not Path(f"{p}-journal").exists():
            raise InputError(f"cannot read results database {p}: {exc}") from exc
        # A hot journal: a writer was killed mid-transaction. Only a read-write connection may roll
        # it back (SQLite's own crash recovery, restoring the last committed state).
        row = _read_version(f"{p.resolve().as_uri()}?mode=rw")
    except sqlite3.DatabaseError as exc:
        raise InputError(f"{p} is not a readable SQLite database: {exc}") from exc
    version = row[0] if row else None
    if version != str(SCHEMA_VERSION):
        raise InputError(
            f"{p} has results schema version {version}, this rnd uses version {SCHEMA_VERSION}; "
            "use a new --db file (the old one is left untouched)"
        )
    return True


class ResultsStore:
    """A results database opened for one process (the sweep driver is the only writer).

    `ResultsStore(path)` creates the file when absent and refuses, without writing, a file of
    another schema; `readonly=True` never creates or changes anything.
    """

    def __init__(self, path: str | Path, *, readonly: bool = False) -> None:
        self.path = Path(path)
        exists = check_database(self.path)
        if readonly:
            if not exists:
                raise InputError(f"results database {self.path} not found")
            uri = f"{self.path.resolve().as_uri()}?mode=ro"
            self.con = sqlite3.connect(uri, uri=True, isolation_level=None)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.con = sqlite3.connect(self.path, isolation_level=None, timeout=30)
            self.con.execute("PRAGMA foreign_keys = ON")
            self.con.execute("PRAGMA synchronous = FULL")
            if not exists:
                self._create()
        self.con.row_factory = sqlite3.Row

    def _create(self) -> None:
        with self.transaction():
            for stmt in _SCHEMA.strip().split(";"):
                if stmt.strip():
                    self.con.execute(stmt)
            self.con.execute("INSERT INTO schema_info VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),))
            self.con.execute("INSERT INTO schema_info VALUES ('created', ?)", (_now(),))

    def close(self) -> None:
        self.con.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def transaction(self) -> _Transaction:
        return _Transaction(self.con)

    # -- writing ------------------------------------------------------------------------------
    def register_sweep(
        self, name: str, config_text: str, cells: Iterable[Cell], *, quick: bool, config_path: str = ""
    ) -> int:
        """Record a sweep and its cells (new cells as pending); idempotent. Returns the sweep id."""
        from rnd import __version__

        sha = hashlib.sha256(config_text.encode()).hexdigest()
        now = _now()
        with self.transaction():
            self.con.execute(
                "INSERT OR IGNORE INTO sweeps (name, config_sha256, quick, config, config_path, rnd_version,"
                " created) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, sha, int(quick), config_text, config_path, __version__, now),
            )
            sweep_id = self.con.execute(
                "SELECT id FROM sweeps WHERE config_sha256 = ? AND quick = ?", (sha, int(quick))
            ).fetchone()[0]
            for cell in cells:
                d = cell.to_dict()
                values = [d[c] for c in CELL_COLUMNS]
                self.con.execute(
                    f"INSERT OR IGNORE INTO cells (key, spec, {', '.join(CELL_COLUMNS)}, status, updated) "
                    f"VALUES (?, ?, {', '.join('?' * len(CELL_COLUMNS))}, 'pending', ?)",
                    (cell.key, json.dumps(cell.identity(), sort_keys=True), *values, now),
                )
                self.con.execute("INSERT OR IGNORE INTO sweep_cells VALUES (?, ?)", (sweep_id, cell.key))
        return int(sweep_id)

    def record(self, result: CellResult) -> bool:
        """Write a finished cell (rows + summary + status) in one transaction.

        Returns False, writing nothing, when the cell is already done (a retried or duplicated task).
        """
        key = result.key
        s = result.summary
        with self.transaction():
            row = self.con.execute("SELECT status FROM cells WHERE key = ?", (key,)).fetchone()
            if row is None:
                raise InputError(f"cell {key[:12]}... is not part of any sweep in {self.path}")
            if row[0] == "done":
                return False
            self.con.executemany(
                "INSERT INTO image_results VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        key,
                        r.position,
                        r.index,
                        r.label,
                        int(r.success),
                        r.queries,
                        int(r.success_clean),
                        int(r.success_vote),
                    )
                    for r in result.rows
                ],
            )
            self.con.execute(
                f"INSERT INTO cell_summaries (cell_key, {', '.join(SUMMARY_COLUMNS)}, indices, attack_params,"
                f" rnd_version, seconds, finished) VALUES (?, {', '.join('?' * len(SUMMARY_COLUMNS))},"
                " ?, ?, ?, ?, ?)",
                (
                    key,
                    *[_real(getattr(s, c)) for c in SUMMARY_COLUMNS],
                    json.dumps([r.index for r in result.rows]),
                    json.dumps(result.attack_params, sort_keys=True),
                    result.rnd_version,
                    result.seconds,
                    _now(),
                ),
            )
            self.con.execute(
                "UPDATE cells SET status = 'done', error = NULL, updated = ? WHERE key = ?", (_now(), key)
            )
        return True

    def mark_failed(self, key: str, error: str) -> None:
        """Record that a cell's run raised (it will be retried by the next start)."""
        with self.transaction():
            self.con.execute(
                "UPDATE cells SET status = 'failed', error = ?, updated = ? "
                "WHERE key = ? AND status != 'done'",
                (error[:2000], _now(), key),
            )

    # -- reading ------------------------------------------------------------------------------
    def done_keys(self) -> set[str]:
        return {r[0] for r in self.con.execute("SELECT key FROM cells WHERE status = 'done'")}

    def status_counts(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self.con.execute("SELECT status, COUNT(*) FROM cells GROUP BY status")}

    def results(self) -> list[dict[str, Any]]:
        """Every finished cell: its parameters joined with its summary, one dict per cell."""
        rows = self.con.execute(
            "SELECT c.key, c.spec, s.*, c.checkpoint FROM cells c "
            "JOIN cell_summaries s ON s.cell_key = c.key "
            "WHERE c.status = 'done' ORDER BY c.model, c.attack, c.norm, c.eps, c.nu, c.mu, c.eot, c.seed"
        ).fetchall()
        out = []
        for r in rows:
            d = json.loads(r["spec"])
            d.update({k: r[k] for k in r.keys() if k not in ("spec", "cell_key")})  # noqa: SIM118
            d["attack_params"] = json.loads(r["attack_params"])
            d["indices"] = json.loads(r["indices"])
            for k in ("mean_queries", "median_queries", "clean_accuracy", "model_accuracy"):
                if d[k] is None:
                    d[k] = math.nan
            out.append(d)
        return out

    def image_rows(self, key: str | None = None) -> list[tuple[Any, ...]]:
        """Per-image rows (all, or one cell's), in (cell, position) order."""
        sql = "SELECT * FROM image_results"
        args: tuple[Any, ...] = ()
        if key is not None:
            sql += " WHERE cell_key = ?"
            args = (key,)
        return [tuple(r) for r in self.con.execute(sql + " ORDER BY cell_key, position", args)]

    def sweeps(self) -> list[dict[str, Any]]:
        return [
            dict(r)
            for r in self.con.execute(
                "SELECT id, name, quick, config_path, rnd_version, created FROM sweeps ORDER BY id"
            )
        ]


class _Transaction:
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
