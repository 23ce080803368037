"""The results database: SQLite (stdlib), one file, crash-safe, resumable, shared by concurrent sweeps.

Tables (schema version 6)::

  schema_info     name -> value; `schema_version` must equal `SCHEMA_VERSION`
  history         what happened to the file: created, migrated (with the schema and rnd versions)
  sweeps          one row per (config text, quick) ever started, with the config itself
  cells           one row per cell key: every parameter as columns (the defense as its spec text;
                  `nu` is RND's level, 0 for other defenses) and as JSON, status
                  (pending | done | failed), the error of a failed run, and the claim of the process
                  computing it (`claimed_by`, cleared when the cell is finished); a cell run
                  against a served endpoint has its `url` and the defense its attacker was told
                  (`assume`), both NULL for local cells
  sweep_cells     which cells each sweep asked for
  image_results   one row per (cell, attacked image): data-set index, label, observed success,
                  queries, success re-checked on the clean model and by a noisy vote, and (label-only
                  attacks) the distance of the attacker's best point (NULL for score attacks),
                  the clean-model re-check NULL where it cannot be measured (an endpoint's model),
                  the query count at the first refusal by a stateful defense (NULL: never
                  refused) and the target class of a targeted attack
  cell_summaries  one row per finished cell: failure rates three ways, mean / median queries,
                  clean accuracy, the image indices, the attack's full parameters, rnd version, and
                  (label-only attacks) the median distance and the median distance against
                  queries, and (stateful defenses) the % of images detected and the median
                  queries until the first detection
  calibrations    one row per defense-strength calibration (`rnd audit`): its key (the sha256 of
                  what was calibrated: model, images, defense, budget, method), what was asked and
                  what was measured (JSON), so a resumed audit reuses it instead of recomputing

Guarantees (each pinned by a test in tests/evaluation/test_store*.py and tests/cli/test_sweep_cli.py):

- Creating the schema, recording a finished cell (rows + summary + status), registering a sweep and
  migrating an old schema are each ONE transaction, so a process killed at any moment, even with
  SIGKILL, leaves either all of it or nothing. A file left empty or without tables by such a kill is
  finished by the next open.
- Any number of processes may open one file at once: creation is serialised by SQLite's write lock,
  and a cell is claimed before it is computed, so concurrent sweeps share the work; a claim held by
  a dead process on this host is taken over at once, one from another host after `CLAIM_LEASE_S`
  without a heartbeat.
- Opening never writes to a file that is not an rnd database: another SQLite database, a file of
  another format, a newer schema, a damaged file (integrity checked) are refused untouched. An older
  schema is migrated in place, keeping every row; read-only opens migrate a copy in memory.
- Columns that hold wall-clock values are named as such (`*_at` timestamps, `*_seconds` durations);
  `comparable_content` compares two databases without them.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import socket
import sqlite3
import threading
from collections.abc import Collection, Iterable, Sequence
from pathlib import Path
from typing import Any

from rnd import __version__
from rnd._checks import check_writable_file
from rnd.defenses import legacy_defense
from rnd.errors import InputError
from rnd.evaluation.cells import Cell, CellResult

SCHEMA_VERSION = 6
SQLITE_MAGIC = b"SQLite format 3\x00"
VOLATILE_SUFFIXES = ("_at", "_seconds")
HEARTBEAT_S = 30.0
CLAIM_LEASE_S = 600.0  # a claim from another host is stale after this long without a heartbeat
BUSY_TIMEOUT_S = 60.0
INT64_MAX = 2**63 - 1

_HISTORY = """
CREATE TABLE history (
    id INTEGER PRIMARY KEY,
    event TEXT NOT NULL,
    schema_version INTEGER NOT NULL,
    rnd_version TEXT NOT NULL,
    happened_at TEXT NOT NULL
);
"""

# The two tables schema 5 rebuilt (SQLite cannot drop a NOT NULL in place): migration 4 creates
# them from these texts, so a later schema that changes either table needs texts of its own.
_IMAGE_RESULTS = """
CREATE TABLE image_results (
    cell_key TEXT NOT NULL REFERENCES cells(key),
    position INTEGER NOT NULL,
    image_index INTEGER NOT NULL,
    label INTEGER NOT NULL,
    success INTEGER NOT NULL,
    queries INTEGER NOT NULL,
    success_clean INTEGER,
    success_vote INTEGER NOT NULL,
    distance REAL,
    first_refusal INTEGER,
    target INTEGER,
    PRIMARY KEY (cell_key, position)
);
"""
# Schema 6's new table, created by the schema and by migration 5 from this one text (a later
# schema that changes it needs a text of its own for migration 5, as above).
_CALIBRATIONS = """
CREATE TABLE calibrations (
    key TEXT PRIMARY KEY,
    request TEXT NOT NULL,
    result TEXT NOT NULL,
    rnd_version TEXT NOT NULL,
    created_at TEXT NOT NULL
);
"""
_CELL_SUMMARIES = """
CREATE TABLE cell_summaries (
    cell_key TEXT PRIMARY KEY REFERENCES cells(key),
    images INTEGER NOT NULL,
    failure_rate REAL NOT NULL,
    failure_rate_clean REAL,
    failure_rate_vote REAL NOT NULL,
    mean_queries REAL,
    median_queries REAL,
    clean_accuracy REAL,
    model_accuracy REAL,
    indices TEXT NOT NULL,
    attack_params TEXT NOT NULL,
    rnd_version TEXT NOT NULL,
    wall_seconds REAL NOT NULL,
    finished_at TEXT NOT NULL,
    median_distance REAL,
    distance_curve TEXT,
    detection_rate REAL,
    median_first_refusal REAL
);
"""

_SCHEMA = (
    """
CREATE TABLE schema_info (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
    + _HISTORY
    + """
CREATE TABLE sweeps (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    config_sha256 TEXT NOT NULL,
    quick INTEGER NOT NULL,
    config TEXT NOT NULL,
    config_path TEXT,
    rnd_version TEXT NOT NULL,
    created_at TEXT NOT NULL,
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
    updated_at TEXT NOT NULL,
    claimed_by TEXT,
    claimed_at TEXT,
    defense TEXT NOT NULL,
    target TEXT,
    url TEXT,
    assume TEXT
);
CREATE TABLE sweep_cells (
    sweep_id INTEGER NOT NULL REFERENCES sweeps(id),
    cell_key TEXT NOT NULL REFERENCES cells(key),
    PRIMARY KEY (sweep_id, cell_key)
);
"""
    + _IMAGE_RESULTS
    + _CELL_SUMMARIES
    + _CALIBRATIONS
)

#: Version 1 -> 2: wall-clock columns renamed to say what they are, the creation time moved from
#: schema_info into `history`, and the claim columns that let concurrent sweeps share cells.
_MIGRATIONS: dict[int, str] = {
    1: """
ALTER TABLE sweeps RENAME COLUMN created TO created_at;
ALTER TABLE cells RENAME COLUMN updated TO updated_at;
ALTER TABLE cells ADD COLUMN claimed_by TEXT;
ALTER TABLE cells ADD COLUMN claimed_at TEXT;
ALTER TABLE cell_summaries RENAME COLUMN seconds TO wall_seconds;
ALTER TABLE cell_summaries RENAME COLUMN finished TO finished_at;
"""
    + _HISTORY
    + """
INSERT INTO history (event, schema_version, rnd_version, happened_at)
    SELECT 'created', 1, 'unknown', value FROM schema_info WHERE name = 'created';
DELETE FROM schema_info WHERE name = 'created';
""",
    # Version 2 -> 3: the distances of label-only attacks (NULL in every row written before).
    2: """
ALTER TABLE image_results ADD COLUMN distance REAL;
ALTER TABLE cell_summaries ADD COLUMN median_distance REAL;
ALTER TABLE cell_summaries ADD COLUMN distance_curve TEXT;
""",
    # Version 3 -> 4: defenses as spec texts (filled from nu by `_defense_from_nu`), targeted cells,
    # and the refusals of stateful defenses (none before: detection rate 0).
    3: """
ALTER TABLE cells ADD COLUMN defense TEXT NOT NULL DEFAULT 'none';
ALTER TABLE cells ADD COLUMN target TEXT;
ALTER TABLE image_results ADD COLUMN first_refusal INTEGER;
ALTER TABLE image_results ADD COLUMN target INTEGER;
ALTER TABLE cell_summaries ADD COLUMN detection_rate REAL;
ALTER TABLE cell_summaries ADD COLUMN median_first_refusal REAL;
UPDATE cell_summaries SET detection_rate = 0;
""",
    # Version 4 -> 5: cells against a served endpoint (`url`, and the defense its attacker was
    # told, `assume`), and the clean-model judgement may be unmeasured (NULL): the two tables are
    # rebuilt without that NOT NULL by `_rebuild_nullable`, keeping every row and column.
    4: """
ALTER TABLE cells ADD COLUMN url TEXT;
ALTER TABLE cells ADD COLUMN assume TEXT;
""",
    # Version 5 -> 6: the calibrations `rnd audit` made (none before: each audit recomputed its own).
    5: _CALIBRATIONS,
}


def _defense_from_nu(con: sqlite3.Connection) -> None:
    """Schema 4: the defense of every cell written when it was a bare nu (`none`, `rnd:nu=X`)."""
    for key, nu in con.execute("SELECT key, nu FROM cells").fetchall():
        con.execute("UPDATE cells SET defense = ? WHERE key = ?", (legacy_defense(float(nu)), key))


def _rebuild_nullable(con: sqlite3.Connection) -> None:
    """Schema 5: image_results and cell_summaries recreated from their schema 5 texts (the
    clean-model columns nullable), every row copied column by column name."""
    for table, ddl in (("image_results", _IMAGE_RESULTS), ("cell_summaries", _CELL_SUMMARIES)):
        cols = ", ".join(r[0] for r in con.execute("SELECT name FROM pragma_table_info(?)", (table,)))
        con.execute(ddl.replace(f"CREATE TABLE {table} (", f"CREATE TABLE {table}_v5 (").strip().rstrip(";"))
        con.execute(f"INSERT INTO {table}_v5 ({cols}) SELECT {cols} FROM {table}")
        con.execute(f"DROP TABLE {table}")
        con.execute(f"ALTER TABLE {table}_v5 RENAME TO {table}")


#: Python steps run after a migration's SQL (values SQL cannot compute, tables SQLite cannot alter).
_MIGRATION_STEPS = {3: _defense_from_nu, 4: _rebuild_nullable}

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
    "defense",
    "target",
    "url",
    "assume",
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
    "median_distance",
    "detection_rate",
    "median_first_refusal",
)


#: Summary values stored as NULL when undefined (NaN), read back as NaN.
NULLABLE_SUMMARY = (
    "failure_rate_clean",
    "mean_queries",
    "median_queries",
    "clean_accuracy",
    "model_accuracy",
    "median_distance",
    "detection_rate",
    "median_first_refusal",
)
#: Columns of image_results, in the order `record` writes them.
IMAGE_COLUMNS = (
    "cell_key",
    "position",
    "image_index",
    "label",
    "success",
    "queries",
    "success_clean",
    "success_vote",
    "distance",
    "first_refusal",
    "target",
)


def _now() -> str:
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="milliseconds")


def _real(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


def _statements(script: str) -> list[str]:
    return [s.strip() for s in script.strip().split(";") if s.strip()]


def _expected_columns() -> dict[str, list[str]]:
    """Every table of this schema version and its columns, read off the schema itself."""
    con = sqlite3.connect(":memory:")
    try:
        for stmt in _statements(_SCHEMA):
            con.execute(stmt)
        return _columns(con)
    finally:
        con.close()


def _columns(con: sqlite3.Connection) -> dict[str, list[str]]:
    tables = [
        r[0]
        for r in con.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
        )
    ]
    return {t: [r[0] for r in con.execute("SELECT name FROM pragma_table_info(?)", (t,))] for t in tables}


EXPECTED_COLUMNS = _expected_columns()


def _version_of(con: sqlite3.Connection, path: Path) -> int | None:
    """The schema version of an open database: None when it holds no table at all (new, or left
    empty by a killed creator); InputError when it is not an rnd database or a damaged one."""
    tables = _columns(con)
    if not tables:
        return None
    if "schema_info" not in tables:
        raise InputError(
            f"{path} is an SQLite database but not an rnd results database (no schema_info table); "
            "choose another --db"
        )
    row = con.execute("SELECT value FROM schema_info WHERE name = 'schema_version'").fetchone()
    try:
        return int(row[0])
    except (TypeError, ValueError):
        raise InputError(
            f"{path} has no readable results schema version ({row!r}); choose another --db"
        ) from None


def _check_schema(con: sqlite3.Connection, path: Path) -> None:
    """Every table and column of this version present (extra ones are tolerated), and the file's
    pages intact (`PRAGMA quick_check`: reads every page once, no index cross-checks)."""
    have = _columns(con)
    for table, cols in EXPECTED_COLUMNS.items():
        missing = [c for c in cols if c not in have.get(table, [])]
        if table not in have or missing:
            what = f"table {table}" if table not in have else f"columns {', '.join(missing)} of {table}"
            raise InputError(
                f"{path} is a damaged rnd results database ({what} missing); restore a copy or use "
                "another --db"
            )
    problems = [r[0] for r in con.execute("PRAGMA quick_check(3)")]
    if problems != ["ok"]:
        lines = [ln.strip() for p in problems for ln in p.splitlines()]
        detail = next((ln for ln in lines if ln and not ln.startswith("***")), "integrity check failed")
        raise InputError(
            f"{path} is a damaged SQLite database ({detail}); restore a copy or use another --db"
        )


def _refuse_version(path: Path, version: int) -> None:
    if version > SCHEMA_VERSION or (version not in _MIGRATIONS and version != SCHEMA_VERSION):
        raise InputError(
            f"{path} has results schema version {version}, this rnd uses version {SCHEMA_VERSION} "
            "and cannot read it; use a new --db file (the old one is left untouched) or a newer rnd"
        )


def _migrate(con: sqlite3.Connection, version: int) -> None:
    """Bring an older schema up to `SCHEMA_VERSION`, inside the caller's transaction."""
    while version < SCHEMA_VERSION:
        for stmt in _statements(_MIGRATIONS[version]):
            con.execute(stmt)
        if version in _MIGRATION_STEPS:
            _MIGRATION_STEPS[version](con)
        version += 1
        con.execute(
            "INSERT INTO history (event, schema_version, rnd_version, happened_at) VALUES (?, ?, ?, ?)",
            (f"migrated from schema {version - 1}", version, __version__, _now()),
        )
    con.execute("UPDATE schema_info SET value = ? WHERE name = 'schema_version'", (str(SCHEMA_VERSION),))


def _has_content(p: Path) -> bool:
    """False for an absent or empty file (a new database goes there); True for an SQLite file;
    InputError, reading nothing but the header, for anything else."""
    if not p.exists():
        return False
    if not p.is_file():
        raise InputError(f"results database {p} is not a file; choose another --db")
    try:
        with open(p, "rb") as fh:
            head = fh.read(len(SQLITE_MAGIC))
    except OSError as exc:
        raise InputError(f"cannot read results database {p}: {exc.strerror or exc}") from exc
    if head and head != SQLITE_MAGIC:
        raise InputError(f"{p} is not an SQLite database; choose another --db")
    return head != b""


def _storage_error(path: Path, exc: sqlite3.Error) -> InputError:
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
    if not _has_content(p):
        return False
    mode = "rw" if Path(f"{p}-journal").exists() else "ro"  # a hot journal needs rw to roll back
    try:
        con = sqlite3.connect(f"{p.resolve().as_uri()}?mode={mode}", uri=True, timeout=BUSY_TIMEOUT_S)
        try:
            version = _version_of(con, p)
            if version is None:
                return False
            _refuse_version(p, version)
            if version == SCHEMA_VERSION:
                _check_schema(con, p)
        finally:
            con.close()
    except sqlite3.Error as exc:
        raise _storage_error(p, exc) from exc
    return True


def owner_id() -> str:
    """This process, as `host:pid:start`; `start` (the process start time) tells a live process
    from a later one that got the same pid."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def _start_time(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "?"
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 (starttime), counted after the command name


def _owner_alive(owner: str, claimed_at: str | None) -> bool:
    host, _, rest = owner.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname():
        if claimed_at is None:
            return False
        age = _dt.datetime.now(_dt.UTC) - _dt.datetime.fromisoformat(claimed_at)
        return age.total_seconds() < CLAIM_LEASE_S
    try:
        pid = int(pid_text)
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True  # alive, another user's
    return start in ("?", _start_time(pid))


class ResultsStore:
    """A results database opened by one process; several processes may open the same file.

    `ResultsStore(path)` creates the file when absent (or finishes one left empty by a killed
    creator), migrates an older schema, and refuses without writing anything else;
    `readonly=True` never creates or changes anything. `owner` names this process in the claims it
    takes (default `owner_id()`; tests use it to play several processes).
    """

    def __init__(self, path: str | Path, *, readonly: bool = False, owner: str | None = None) -> None:
        self.path = Path(path)
        self.owner = owner or owner_id()
        self._heartbeat: _Heartbeat | None = None
        if readonly:
            self.con = self._open_readonly()
        else:
            check_location(self.path)
            _has_content(self.path)  # a foreign format is refused before SQLite opens it read-write
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.con = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
                self._prepare()
            except sqlite3.Error as exc:
                raise _storage_error(self.path, exc) from exc
        self.con.row_factory = sqlite3.Row

    def _prepare(self) -> None:
        """Create, finish or migrate the schema under the write lock, then check it."""
        self.con.execute("PRAGMA foreign_keys = ON")
        self.con.execute("PRAGMA synchronous = FULL")
        try:
            with self.transaction():
                version = _version_of(self.con, self.path)
                if version is None:
                    for stmt in _statements(_SCHEMA):
                        self.con.execute(stmt)
                    self.con.execute(
                        "INSERT INTO schema_info VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                    )
                    self.con.execute(
                        "INSERT INTO history (event, schema_version, rnd_version, happened_at) "
                        "VALUES ('created', ?, ?, ?)",
                        (SCHEMA_VERSION, __version__, _now()),
                    )
                elif version != SCHEMA_VERSION:
                    _refuse_version(self.path, version)
                    _migrate(self.con, version)
                _check_schema(self.con, self.path)
        except BaseException:
            self.con.close()
            raise

    def _open_readonly(self) -> sqlite3.Connection:
        p = self.path
        if not p.exists():
            raise InputError(f"results database {p} not found; run `rnd sweep CONFIG --db {p}` first")
        if not check_database(p):
            raise InputError(
                f"results database {p} holds no results yet (no sweep has written to it); run "
                f"`rnd sweep CONFIG --db {p}` first"
            )
        try:
            con = sqlite3.connect(f"{p.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
            version = _version_of(con, p)
            if version is not None and version < SCHEMA_VERSION:  # read an old file through a migrated copy
                mem = sqlite3.connect(":memory:", isolation_level=None)
                con.backup(mem)
                con.close()
                con = mem
                with _Transaction(con):
                    _migrate(con, version)
            return con
        except sqlite3.Error as exc:
            raise _storage_error(p, exc) from exc

    def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
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
        cells = list(cells)
        check_cells(cells)
        sha = hashlib.sha256(config_text.encode()).hexdigest()
        now = _now()
        with self.transaction():
            self.con.execute(
                "INSERT OR IGNORE INTO sweeps (name, config_sha256, quick, config, config_path, rnd_version,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, sha, int(quick), config_text, config_path, __version__, now),
            )
            sweep_id = self.con.execute(
                "SELECT id FROM sweeps WHERE config_sha256 = ? AND quick = ?", (sha, int(quick))
            ).fetchone()[0]
            for cell in cells:
                d = cell.to_dict() | {"nu": cell.nu}
                values = [d[c] for c in CELL_COLUMNS]
                self.con.execute(
                    f"INSERT OR IGNORE INTO cells (key, spec, {', '.join(CELL_COLUMNS)}, status, updated_at) "
                    f"VALUES (?, ?, {', '.join('?' * len(CELL_COLUMNS))}, 'pending', ?)",
                    (cell.key, json.dumps(cell.identity(), sort_keys=True), *values, now),
                )
                self.con.execute("INSERT OR IGNORE INTO sweep_cells VALUES (?, ?)", (sweep_id, cell.key))
        return int(sweep_id)

    def record(self, result: CellResult) -> bool:
        """Write a finished cell (rows + summary + status, claim released) in one transaction.

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
                f"INSERT INTO image_results ({', '.join(IMAGE_COLUMNS)}) "
                f"VALUES ({', '.join('?' * len(IMAGE_COLUMNS))})",
                [
                    (
                        key,
                        r.position,
                        r.index,
                        r.label,
                        int(r.success),
                        r.queries,
                        None if r.success_clean is None else int(r.success_clean),
                        int(r.success_vote),
                        None if r.distance is None else _real(r.distance),
                        r.first_refusal,
                        r.target,
                    )
                    for r in result.rows
                ],
            )
            self.con.execute(
                f"INSERT INTO cell_summaries (cell_key, {', '.join(SUMMARY_COLUMNS)}, indices,"
                " attack_params, rnd_version, wall_seconds, finished_at, distance_curve)"
                f" VALUES (?, {', '.join('?' * len(SUMMARY_COLUMNS))}, ?, ?, ?, ?, ?, ?)",
                (
                    key,
                    *[_real(getattr(s, c)) for c in SUMMARY_COLUMNS],
                    json.dumps([r.index for r in result.rows]),
                    json.dumps(result.attack_params, sort_keys=True),
                    result.rnd_version,
                    result.seconds,
                    _now(),
                    None if s.distance_curve is None else json.dumps(s.distance_curve),
                ),
            )
            self.con.execute(
                "UPDATE cells SET status = 'done', error = NULL, claimed_by = NULL, claimed_at = NULL, "
                "updated_at = ? WHERE key = ?",
                (_now(), key),
            )
        return True

    def record_calibration(self, key: str, request: dict[str, Any], result: dict[str, Any]) -> bool:
        """Keep a calibration (what was asked, what was measured) under `key`; returns False,
        writing nothing, when one is already kept there (the first stays: the same inputs give
        the same measurement)."""
        with self.transaction():
            cur = self.con.execute(
                "INSERT OR IGNORE INTO calibrations (key, request, result, rnd_version, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    key,
                    json.dumps(request, sort_keys=True),
                    json.dumps(result, sort_keys=True),
                    __version__,
                    _now(),
                ),
            )
        return cur.rowcount == 1

    def calibration(self, key: str) -> dict[str, Any] | None:
        """The measurement kept under `key` (`record_calibration`), or None."""
        row = self.con.execute("SELECT result FROM calibrations WHERE key = ?", (key,)).fetchone()
        return None if row is None else json.loads(row[0])

    def mark_failed(self, key: str, error: str) -> None:
        """Record that a cell's run raised (it is retried by the next start) and release its claim."""
        with self.transaction():
            self.con.execute(
                "UPDATE cells SET status = 'failed', error = ?, claimed_by = NULL, claimed_at = NULL, "
                "updated_at = ? WHERE key = ? AND status != 'done'",
                (error[:2000], _now(), key),
            )

    # -- sharing cells between processes ------------------------------------------------------
    def claim_next(self, keys: Sequence[str], skip: Collection[str] = ()) -> str | None:
        """Claim, for this process, the first of `keys` (in order) that is not done, not in `skip`
        and not claimed by a live process; None when there is none now. Starts the heartbeat that
        keeps this process's claims fresh."""
        order = {k: i for i, k in enumerate(keys)}
        with self.transaction():
            rows = self.con.execute(
                "SELECT key, claimed_by, claimed_at FROM cells WHERE status != 'done'"
            ).fetchall()
            free = [
                r[0]
                for r in rows
                if r[0] in order
                and r[0] not in skip
                and (r[1] is None or (r[1] != self.owner and not _owner_alive(r[1], r[2])))
            ]
            if not free:
                return None
            key = min(free, key=order.__getitem__)
            self.con.execute(
                "UPDATE cells SET claimed_by = ?, claimed_at = ? WHERE key = ?", (self.owner, _now(), key)
            )
        if self._heartbeat is None:
            self._heartbeat = _Heartbeat(self.path, self.owner)
        return key

    def release_claims(self) -> None:
        """Give back every cell this process claimed and did not finish (on exit or error)."""
        with self.transaction():
            self.con.execute(
                "UPDATE cells SET claimed_by = NULL, claimed_at = NULL WHERE claimed_by = ?", (self.owner,)
            )

    def unfinished(self, keys: Iterable[str]) -> dict[str, tuple[str, str | None]]:
        """key -> (status, claimed_by) of those of `keys` not done yet."""
        wanted = set(keys)
        rows = self.con.execute("SELECT key, status, claimed_by FROM cells WHERE status != 'done'")
        return {r[0]: (r[1], r[2]) for r in rows if r[0] in wanted}

    # -- reading ------------------------------------------------------------------------------
    def done_keys(self) -> set[str]:
        return {r[0] for r in self.con.execute("SELECT key FROM cells WHERE status = 'done'")}

    def status_counts(self) -> dict[str, int]:
        return {r[0]: r[1] for r in self.con.execute("SELECT status, COUNT(*) FROM cells GROUP BY status")}

    def results(self) -> list[dict[str, Any]]:
        """Every finished cell: its parameters joined with its summary, one dict per cell."""
        rows = self.con.execute(
            "SELECT c.key, c.spec, s.*, c.checkpoint, c.defense, c.nu, c.target, c.url, c.assume "
            "FROM cells c "
            "JOIN cell_summaries s ON s.cell_key = c.key "
            "WHERE c.status = 'done' "
            "ORDER BY c.model, c.attack, c.norm, c.eps, c.defense, c.mu, c.eot, c.seed"
        ).fetchall()
        out = []
        for r in rows:
            d = json.loads(r["spec"])
            d.update({k: r[k] for k in r.keys() if k not in ("spec", "cell_key")})  # noqa: SIM118
            d["attack_params"] = json.loads(r["attack_params"])
            d["indices"] = json.loads(r["indices"])
            curve = r["distance_curve"]
            d["distance_curve"] = None if curve is None else [tuple(p) for p in json.loads(curve)]
            for k in NULLABLE_SUMMARY:
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
                "SELECT id, name, quick, config_path, rnd_version, created_at FROM sweeps ORDER BY id"
            )
        ]


def check_cells(cells: Iterable[Cell]) -> None:
    """Refuse, before anything is written, cell values SQLite cannot store (integers beyond int64)."""
    for cell in cells:
        for k, v in cell.to_dict().items():
            if isinstance(v, int) and not -INT64_MAX - 1 <= v <= INT64_MAX:
                raise InputError(f"{k} = {v} does not fit a 64-bit integer; use a smaller value")


def comparable_content(path: str | Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every table's rows, sorted, without the wall-clock columns (`*_at`, `*_seconds`): equal for
    two databases that hold the same results, however and whenever they were computed."""
    con = sqlite3.connect(f"{Path(path).resolve().as_uri()}?mode=ro", uri=True)
    try:
        out: dict[str, list[tuple[Any, ...]]] = {}
        for table, cols in _columns(con).items():
            keep = [c for c in cols if not c.endswith(VOLATILE_SUFFIXES)]
            rows = con.execute(f'SELECT {", ".join(keep)} FROM "{table}"').fetchall()
            out[table] = sorted(rows, key=repr)
        return out
    finally:
        con.close()


class _Heartbeat:
    """A daemon thread that refreshes `claimed_at` of this process's claims every `HEARTBEAT_S`, so
    that a claim outlives a long cell while a dead process's claims go stale."""

    def __init__(self, path: Path, owner: str) -> None:
        self.path, self.owner = path, owner
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rnd-store-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S)
                try:
                    with con:
                        con.execute(
                            "UPDATE cells SET claimed_at = ? WHERE claimed_by = ?", (_now(), self.owner)
                        )
                finally:
                    con.close()
            except sqlite3.Error:
                continue  # try again next beat; a missed beat only shortens the lease

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


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
