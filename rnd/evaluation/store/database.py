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

import hashlib
import json
import math
import sqlite3
from collections.abc import Collection, Iterable, Sequence
from dataclasses import fields
from pathlib import Path
from typing import Any

from rnd._version import __version__
from rnd.errors import InputError
from rnd.evaluation.cells import Cell, CellRecord, CellResult, CellSummary, ImageRow
from rnd.evaluation.store.claims import Heartbeat, owner_alive, owner_id
from rnd.evaluation.store.files import (
    BUSY_TIMEOUT_S,
    check_database,
    check_location,
    has_content,
    storage_error,
)
from rnd.evaluation.store.schema import (
    CELL_COLUMNS,
    IMAGE_COLUMNS,
    NULLABLE_SUMMARY,
    SCHEMA,
    SCHEMA_VERSION,
    SUMMARY_COLUMNS,
    VOLATILE_SUFFIXES,
    check_schema,
    migrate,
    refuse_version,
    version_of,
)
from rnd.sqlite import Transaction, now, statements, table_columns

INT64_MAX = 2**63 - 1


def _real(v: float) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v


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
        self._heartbeat: Heartbeat | None = None
        if readonly:
            self.con = self._open_readonly()
        else:
            check_location(self.path)
            has_content(self.path)  # a foreign format is refused before SQLite opens it read-write
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self.con = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
                self._prepare()
            except sqlite3.Error as exc:
                raise storage_error(self.path, exc) from exc
        self.con.row_factory = sqlite3.Row

    def _prepare(self) -> None:
        """Create, finish or migrate the schema under the write lock, then check it."""
        self.con.execute("PRAGMA foreign_keys = ON")
        self.con.execute("PRAGMA synchronous = FULL")
        try:
            with self.transaction():
                version = version_of(self.con, self.path)
                if version is None:
                    for stmt in statements(SCHEMA):
                        self.con.execute(stmt)
                    self.con.execute(
                        "INSERT INTO schema_info VALUES ('schema_version', ?)", (str(SCHEMA_VERSION),)
                    )
                    self.con.execute(
                        "INSERT INTO history (event, schema_version, rnd_version, happened_at) "
                        "VALUES ('created', ?, ?, ?)",
                        (SCHEMA_VERSION, __version__, now()),
                    )
                elif version != SCHEMA_VERSION:
                    refuse_version(self.path, version)
                    migrate(self.con, version)
                check_schema(self.con, self.path)
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
            version = version_of(con, p)
            if version is not None and version < SCHEMA_VERSION:  # read an old file through a migrated copy
                mem = sqlite3.connect(":memory:", isolation_level=None)
                con.backup(mem)
                con.close()
                con = mem
                with Transaction(con):
                    migrate(con, version)
            return con
        except sqlite3.Error as exc:
            raise storage_error(p, exc) from exc

    def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.stop()
            self._heartbeat = None
        self.con.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def transaction(self) -> Transaction:
        return Transaction(self.con)

    # -- writing ------------------------------------------------------------------------------
    def register_sweep(
        self, name: str, config_text: str, cells: Iterable[Cell], *, quick: bool, config_path: str = ""
    ) -> int:
        """Record a sweep and its cells (new cells as pending); idempotent. Returns the sweep id."""
        cells = list(cells)
        check_cells(cells)
        sha = hashlib.sha256(config_text.encode()).hexdigest()
        stamp = now()
        with self.transaction():
            self.con.execute(
                "INSERT OR IGNORE INTO sweeps (name, config_sha256, quick, config, config_path, rnd_version,"
                " created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (name, sha, int(quick), config_text, config_path, __version__, stamp),
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
                    (cell.key, json.dumps(cell.identity(), sort_keys=True), *values, stamp),
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
                        r.wrong_answers,
                        r.answer_draws,
                        None if r.success_png is None else int(r.success_png),
                        None if r.success_jpeg is None else int(r.success_jpeg),
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
                    now(),
                    None if s.distance_curve is None else json.dumps(s.distance_curve),
                ),
            )
            self.con.execute(
                "UPDATE cells SET status = 'done', error = NULL, claimed_by = NULL, claimed_at = NULL, "
                "updated_at = ? WHERE key = ?",
                (now(), key),
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
                    now(),
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
                (error[:2000], now(), key),
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
                and (r[1] is None or (r[1] != self.owner and not owner_alive(r[1], r[2])))
            ]
            if not free:
                return None
            key = min(free, key=order.__getitem__)
            self.con.execute(
                "UPDATE cells SET claimed_by = ?, claimed_at = ? WHERE key = ?", (self.owner, now(), key)
            )
        if self._heartbeat is None:
            self._heartbeat = Heartbeat(self.path, self.owner)
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

    def records(self, rows: bool = False, keys: Iterable[str] | None = None) -> list[CellRecord]:
        """Every finished cell (or those of `keys`) as a `CellRecord`, ordered by model, attack,
        norm, eps, defense, mu, M and seed; with `rows`, each with its per-image rows."""
        found = self.con.execute(
            "SELECT c.key, c.spec, c.checkpoint, s.* FROM cells c "
            "JOIN cell_summaries s ON s.cell_key = c.key "
            "WHERE c.status = 'done' "
            "ORDER BY c.model, c.attack, c.norm, c.eps, c.defense, c.mu, c.eot, c.seed"
        ).fetchall()
        wanted = None if keys is None else set(keys)
        images = self._all_image_rows() if rows else {}
        return [
            _record(r, tuple(images.get(r["key"], ())) if rows else None)
            for r in found
            if wanted is None or r["key"] in wanted
        ]

    def image_rows(self, key: str) -> list[ImageRow]:
        """One cell's per-image rows, in position order."""
        found = self.con.execute(
            f"SELECT {', '.join(IMAGE_COLUMNS)} FROM image_results WHERE cell_key = ? ORDER BY position",
            (key,),
        )
        return [_image_row(r) for r in found]

    def _all_image_rows(self) -> dict[str, list[ImageRow]]:
        out: dict[str, list[ImageRow]] = {}
        found = self.con.execute(
            f"SELECT {', '.join(IMAGE_COLUMNS)} FROM image_results ORDER BY cell_key, position"
        )
        for r in found:
            out.setdefault(r[0], []).append(_image_row(r))
        return out

    def sweeps(self) -> list[dict[str, Any]]:
        return [
            dict(r)
            for r in self.con.execute(
                "SELECT id, name, quick, config_path, rnd_version, created_at FROM sweeps ORDER BY id"
            )
        ]


def _record(r: sqlite3.Row, rows: tuple[ImageRow, ...] | None) -> CellRecord:
    """A `CellRecord` from a row of cells joined with cell_summaries: the cell from its identity
    (written by `register_sweep`) and its recorded checkpoint, NULL summary values as NaN."""
    cell = Cell.from_dict({**json.loads(r["spec"]), "checkpoint": r["checkpoint"]})
    summary = {f.name: r[f.name] for f in fields(CellSummary) if f.name != "distance_curve"}
    for k in NULLABLE_SUMMARY:
        if summary[k] is None:
            summary[k] = math.nan
    curve = r["distance_curve"]
    return CellRecord(
        key=r["key"],
        cell=cell,
        summary=CellSummary(
            **summary,
            distance_curve=None if curve is None else [(int(q), float(d)) for q, d in json.loads(curve)],
        ),
        indices=tuple(json.loads(r["indices"])),
        attack_params=json.loads(r["attack_params"]),
        rnd_version=r["rnd_version"],
        seconds=r["wall_seconds"],
        rows=rows,
    )


def _image_row(r: Sequence[Any]) -> ImageRow:
    """An `ImageRow` from a row of image_results in `IMAGE_COLUMNS` order."""
    _, position, index, label, success, queries, clean, vote, distance, first, target, *more = r
    wrong, draws, png, jpeg = more
    return ImageRow(
        position=position,
        index=index,
        label=label,
        success=bool(success),
        queries=queries,
        success_clean=None if clean is None else bool(clean),
        success_vote=bool(vote),
        distance=distance,
        first_refusal=first,
        target=target,
        wrong_answers=wrong,
        answer_draws=draws,
        success_png=None if png is None else bool(png),
        success_jpeg=None if jpeg is None else bool(jpeg),
    )


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
        for table, cols in table_columns(con).items():
            keep = [c for c in cols if not c.endswith(VOLATILE_SUFFIXES)]
            rows = con.execute(f'SELECT {", ".join(keep)} FROM "{table}"').fetchall()
            out[table] = sorted(rows, key=repr)
        return out
    finally:
        con.close()
