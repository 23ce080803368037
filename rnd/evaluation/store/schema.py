"""The results database's schema: the tables of version `SCHEMA_VERSION`, the migrations from every
older version (SQL, then the Python steps SQL cannot do), the column lists the store writes, and
the checks that tell an rnd database of this version (or an older one) from anything else.
The only module besides `database` that names a column."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from rnd._version import __version__
from rnd.defenses import legacy_defense
from rnd.errors import InputError
from rnd.sqlite import now, statements, table_columns

SCHEMA_VERSION = 7


VOLATILE_SUFFIXES = ("_at", "_seconds")


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


# Schema 7's new columns of image_results, added to the schema 6 table by the schema itself and
# by migration 6 from this one text (NULL in every row written before: not measured).
_RECHECK_COLUMNS = """
ALTER TABLE image_results ADD COLUMN wrong_answers INTEGER;
ALTER TABLE image_results ADD COLUMN answer_draws INTEGER;
ALTER TABLE image_results ADD COLUMN success_png INTEGER;
ALTER TABLE image_results ADD COLUMN success_jpeg INTEGER;
"""


SCHEMA = (
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
    + _RECHECK_COLUMNS
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
    # Version 6 -> 7: the resubmission counts and the PNG / JPEG re-checks of each final point.
    6: _RECHECK_COLUMNS,
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
    "wrong_answers",
    "answer_draws",
    "success_png",
    "success_jpeg",
)


def expected_columns() -> dict[str, list[str]]:
    """Every table of this schema version and its columns, read off the schema itself."""
    con = sqlite3.connect(":memory:")
    try:
        for stmt in statements(SCHEMA):
            con.execute(stmt)
        return table_columns(con)
    finally:
        con.close()


EXPECTED_COLUMNS = expected_columns()


def version_of(con: sqlite3.Connection, path: Path) -> int | None:
    """The schema version of an open database: None when it holds no table at all (new, or left
    empty by a killed creator); InputError when it is not an rnd database or a damaged one."""
    tables = table_columns(con)
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


def check_schema(con: sqlite3.Connection, path: Path) -> None:
    """Every table and column of this version present (extra ones are tolerated), and the file's
    pages intact (`PRAGMA quick_check`: reads every page once, no index cross-checks)."""
    have = table_columns(con)
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


def refuse_version(path: Path, version: int) -> None:
    if version > SCHEMA_VERSION or (version not in _MIGRATIONS and version != SCHEMA_VERSION):
        raise InputError(
            f"{path} has results schema version {version}, this rnd uses version {SCHEMA_VERSION} "
            "and cannot read it; use a new --db file (the old one is left untouched) or a newer rnd"
        )


def migrate(con: sqlite3.Connection, version: int) -> None:
    """Bring an older schema up to `SCHEMA_VERSION`, inside the caller's transaction."""
    while version < SCHEMA_VERSION:
        for stmt in statements(_MIGRATIONS[version]):
            con.execute(stmt)
        if version in _MIGRATION_STEPS:
            _MIGRATION_STEPS[version](con)
        version += 1
        con.execute(
            "INSERT INTO history (event, schema_version, rnd_version, happened_at) VALUES (?, ?, ?, ?)",
            (f"migrated from schema {version - 1}", version, __version__, now()),
        )
    con.execute("UPDATE schema_info SET value = ? WHERE name = 'schema_version'", (str(SCHEMA_VERSION),))
