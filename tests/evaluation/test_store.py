"""The SQLite results store: schema checks that never modify a foreign file, atomic cell writes,
no duplicates, and recovery after a writer is killed in the middle of a transaction."""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import math
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import time
from dataclasses import replace
from pathlib import Path

import pytest

from rnd.defenses import legacy_defense
from rnd.errors import InputError
from rnd.evaluation.cells import Cell, CellResult, ImageRow, summarize_rows
from rnd.evaluation.store import (
    CLAIM_LEASE_S,
    SCHEMA_VERSION,
    ResultsStore,
    check_database,
    comparable_content,
    owner_id,
)


def cell(nu: float = 0.02, seed: int = 0) -> Cell:
    return Cell(
        model="m",
        checkpoint="/x/m",
        checkpoint_sha256="ab" * 32,
        dataset="fashion-mnist",
        split="test",
        images=3,
        start=0,
        attack="nes",
        norm="linf",
        eps=0.1,
        mu=None,
        eot=1,
        budget=100,
        defense=legacy_defense(nu),
        seed=seed,
    )


def result(c: Cell, successes=(True, False, True)) -> CellResult:
    rows = [ImageRow(i, 10 + i, i % 10, s, 40 + i, s, s and i == 0) for i, s in enumerate(successes)]
    return CellResult(c.key, c, rows, summarize_rows(rows, 90.0, 91.0), {"mu": 0.01}, "0.1.0", 1.5)


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_roundtrip_and_summary(tmp_path):
    db = tmp_path / "r.sqlite"
    c = cell()
    with ResultsStore(db) as store:
        store.register_sweep("s", "text", [c], quick=False)
        assert store.status_counts() == {"pending": 1}
        assert store.record(result(c))
        (r,) = store.records()
        assert r.cell.nu == 0.02 and r.cell.attack == "nes" and r.cell.checkpoint_sha256 == "ab" * 32
        assert r.summary.failure_rate == pytest.approx(
            100 / 3
        ) and r.summary.failure_rate_vote == pytest.approx(200 / 3)
        assert r.summary.mean_queries == 41.0 and r.indices == (10, 11, 12) and r.rnd_version == "0.1.0"
        assert len(store.image_rows(c.key)) == 3


def test_a_record_reads_back_as_the_result_written(tmp_path):
    """The typed record is what was written: the cell (key and every field but the machine-local
    ones), the summary field by field (NaN where undefined), the attack's parameters and each
    image row, for a label-only targeted cell with refusals and an unmeasured clean judgement."""
    c = Cell.from_dict({**cell().to_dict(), "attack": "hsja", "target": "next", "data_root": "/x"})
    rows = [
        ImageRow(0, 10, 1, True, 40, None, True, 0.25, 7, 2),
        ImageRow(1, 11, 2, False, 100, None, False, math.inf, None, 3),
    ]
    written = CellResult(c.key, c, rows, summarize_rows(rows, 90.0, math.nan, [(10, math.inf), (100, 0.25)]))
    written.attack_params = {"gamma": 1.0, "steps": [1, 2]}
    with ResultsStore(tmp_path / "r.sqlite") as store:
        store.register_sweep("s", "text", [c], quick=False)
        assert store.record(written)
        (rec,) = store.records(rows=True)
        assert rec.key == c.key and rec.cell == replace(c, data_root=None)  # local paths are not kept
        assert rec.rows == tuple(rows) and store.image_rows(c.key) == rows
        for f in dataclasses.fields(written.summary):
            got, want = getattr(rec.summary, f.name), getattr(written.summary, f.name)
            assert got == want or (got != got and want != want), f.name  # NaN == NaN here
        assert rec.attack_params == {"gamma": 1.0, "steps": [1, 2]} and rec.indices == (10, 11)
        assert store.records(keys=["nope"]) == [] and store.records()[0].rows is None


def test_record_twice_writes_nothing(tmp_path):
    c = cell()
    with ResultsStore(tmp_path / "r.sqlite") as store:
        store.register_sweep("s", "text", [c], quick=False)
        store.register_sweep("s", "text", [c], quick=False)  # idempotent
        assert store.record(result(c)) is True
        assert store.record(result(c)) is False
        assert len(image_rows_in(tmp_path / "r.sqlite")) == 3 and len(store.records()) == 1
        assert len(store.sweeps()) == 1


def test_failed_write_leaves_no_partial_rows(tmp_path):
    """A write that fails half-way (here: a duplicate row position) is rolled back entirely."""
    c = cell()
    bad = result(c)
    bad.rows[2].position = 0
    with ResultsStore(tmp_path / "r.sqlite") as store:
        store.register_sweep("s", "text", [c], quick=False)
        with pytest.raises(sqlite3.IntegrityError):
            store.record(bad)
        assert image_rows_in(tmp_path / "r.sqlite") == [] and store.records() == []
        assert store.status_counts() == {"pending": 1}
        assert store.record(result(c))  # and the cell can still be recorded afterwards


def test_unregistered_cell_is_refused(tmp_path):
    with (
        ResultsStore(tmp_path / "r.sqlite") as store,
        pytest.raises(InputError, match="not part of any sweep"),
    ):
        store.record(result(cell()))


def test_incompatible_schema_is_refused_untouched(tmp_path):
    db = tmp_path / "old.sqlite"
    with ResultsStore(db) as store:
        store.register_sweep("s", "text", [cell()], quick=False)
    con = sqlite3.connect(db)
    con.execute("UPDATE schema_info SET value = '999' WHERE name = 'schema_version'")
    con.commit()
    con.close()
    before = digest(db)
    with pytest.raises(InputError, match=f"schema version 999.*version {SCHEMA_VERSION}"):
        ResultsStore(db)
    with pytest.raises(InputError, match="schema version 999"):
        ResultsStore(db, readonly=True)
    assert digest(db) == before


def test_foreign_files_are_refused_untouched(tmp_path):
    db = tmp_path / "x.sqlite"
    db.write_bytes(b"not a database at all")
    with pytest.raises(InputError, match="not an SQLite database"):
        ResultsStore(db)
    assert db.read_bytes() == b"not a database at all"


def test_other_sqlite_database_is_refused_untouched(tmp_path):
    db = tmp_path / "other.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    before = digest(db)
    with pytest.raises(InputError, match="not an rnd results database"):
        ResultsStore(db)
    assert digest(db) == before


def test_readonly_never_creates(tmp_path):
    with pytest.raises(InputError, match="not found"):
        ResultsStore(tmp_path / "absent.sqlite", readonly=True)
    assert not (tmp_path / "absent.sqlite").exists()


def test_writer_killed_mid_transaction_leaves_last_commit(tmp_path):
    """SIGKILL between the rows and the COMMIT: the next open rolls back to the committed state."""
    db = tmp_path / "r.sqlite"
    c = cell()
    with ResultsStore(db) as store:
        store.register_sweep("s", "text", [c], quick=False)
    script = textwrap.dedent(f"""
        import os, signal, sqlite3
        con = sqlite3.connect({str(db)!r}, isolation_level=None)
        con.execute("BEGIN IMMEDIATE")
        con.execute("INSERT INTO image_results VALUES ({c.key!r}, 0, 1, 2, 1, 5, 1, 1{", NULL" * 7})")
        con.execute("UPDATE cells SET status = 'done'")
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert (tmp_path / "r.sqlite-journal").exists()  # a hot journal: the case being tested
    assert check_database(db)
    with ResultsStore(db, readonly=True) as store:
        assert image_rows_in(db) == [] and store.status_counts() == {"pending": 1}
    with ResultsStore(db) as store:
        assert store.record(result(c))
        assert len(image_rows_in(db)) == 3


# -- creation that survives SIGKILL and concurrent starts ---------------------------------------------


def image_rows_in(db: Path) -> list[tuple]:
    """Every image_results row as SQLite holds it (the store's own columns), in (cell, position) order."""
    con = sqlite3.connect(db)
    try:
        return con.execute("SELECT * FROM image_results ORDER BY cell_key, position").fetchall()
    finally:
        con.close()


def finished_at(db: Path) -> list[str]:
    con = sqlite3.connect(db)
    try:
        return [r[0] for r in con.execute("SELECT finished_at FROM cell_summaries")]
    finally:
        con.close()


def history(db: Path) -> list[str]:
    con = sqlite3.connect(db)
    try:
        return [r[0] for r in con.execute("SELECT event FROM history ORDER BY id")]
    finally:
        con.close()


def test_empty_file_left_by_a_killed_creator_is_finished(tmp_path):
    """`sqlite3.connect` creates a 0-byte file before the schema exists: a kill then leaves one."""
    db = tmp_path / "r.sqlite"
    db.write_bytes(b"")
    assert check_database(db) is False  # to be created, not refused
    with ResultsStore(db) as store:
        store.register_sweep("s", "text", [cell()], quick=False)
        assert store.record(result(cell()))
    assert history(db) == ["created"]


def test_sqlite_file_without_tables_is_finished(tmp_path):
    db = tmp_path / "r.sqlite"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (x)")
    con.execute("DROP TABLE t")
    con.commit()
    con.close()
    assert db.read_bytes().startswith(b"SQLite format 3")
    with ResultsStore(db) as store:
        assert store.status_counts() == {}


def test_creator_killed_mid_schema_is_rolled_back_and_finished(tmp_path):
    """SIGKILL inside the schema transaction (some tables made, hot journal left): the next open
    rolls the half schema back (SQLite's recovery) and creates the whole one."""
    db = tmp_path / "r.sqlite"
    script = textwrap.dedent(f"""
        import os, signal, sqlite3
        con = sqlite3.connect({str(db)!r}, isolation_level=None)
        con.execute("BEGIN IMMEDIATE")
        con.execute("CREATE TABLE schema_info (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
        con.execute("CREATE TABLE sweeps (id INTEGER PRIMARY KEY)")
        con.execute("INSERT INTO schema_info VALUES ('schema_version', '2')")
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert (tmp_path / "r.sqlite-journal").exists()
    with ResultsStore(db) as store:
        store.register_sweep("s", "text", [cell()], quick=False)
        assert store.record(result(cell()))
    assert history(db) == ["created"]


OPEN_AT_ONCE = """
import sys, time
from rnd.evaluation.store import ResultsStore
time.sleep(max(0.0, float(sys.argv[2]) - time.time()))
with ResultsStore(sys.argv[1]) as store:
    store.register_sweep("s", "text", [], quick=False)
"""


@pytest.mark.parametrize("processes", [2, pytest.param(4, marks=pytest.mark.slow)])
def test_concurrent_creation_makes_one_database(tmp_path, processes):
    db = tmp_path / "r.sqlite"
    start = time.time() + 8  # after every interpreter has imported rnd
    procs = [
        subprocess.Popen([sys.executable, "-c", OPEN_AT_ONCE, str(db), str(start)], stderr=subprocess.PIPE)
        for _ in range(processes)
    ]
    errors = [p.communicate(timeout=120)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0] * processes, errors
    assert history(db) == ["created"]
    with ResultsStore(db, readonly=True) as store:
        assert len(store.sweeps()) == 1


# -- files rnd refuses, untouched ---------------------------------------------------------------------


def made(tmp_path: Path, name: str = "r.sqlite") -> Path:
    db = tmp_path / name
    with ResultsStore(db) as store:
        store.register_sweep("s", "text", [cell(seed=s) for s in range(40)], quick=False)
        for s in range(40):
            store.record(result(cell(seed=s)))
    return db


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("DROP TABLE cell_summaries", r"damaged rnd results database \(table cell_summaries missing\)"),
        ("ALTER TABLE cells DROP COLUMN claimed_at", r"columns claimed_at of cells missing"),
        ("DELETE FROM schema_info", r"no readable results schema version"),
    ],
)
def test_database_with_missing_parts_is_refused_untouched(tmp_path, damage, message):
    db = made(tmp_path)
    con = sqlite3.connect(db)
    con.execute(damage)
    con.commit()
    con.close()
    before = digest(db)
    for readonly in (False, True):
        with pytest.raises(InputError, match=message):
            ResultsStore(db, readonly=readonly)
    assert digest(db) == before


def test_corrupt_page_is_refused_untouched(tmp_path):
    db = made(tmp_path)
    data = bytearray(db.read_bytes())
    page = 4096
    assert len(data) > 6 * page
    at = (len(data) // page - 2) * page  # a data page of the last tables (not the schema's)
    data[at + 8 : at + page] = bytes(range(256)) * ((page - 8) // 256) + bytes((page - 8) % 256)
    db.write_bytes(bytes(data))
    before = digest(db)
    for readonly in (False, True):
        with pytest.raises(InputError, match=r"damaged|malformed|not a readable"):
            ResultsStore(db, readonly=readonly)
    assert digest(db) == before


def test_location_errors(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(InputError, match="is a file, not a folder"):
        ResultsStore(blocker / "sub" / "r.sqlite")
    with pytest.raises(InputError, match="is not a file"):
        ResultsStore(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_integers_beyond_int64_are_refused_before_writing(tmp_path):
    db = tmp_path / "r.sqlite"
    with ResultsStore(db) as store:
        with pytest.raises(InputError, match="seed = 18446744073709551616 does not fit a 64-bit integer"):
            store.register_sweep("s", "text", [cell(seed=2**64)], quick=False)
        assert store.status_counts() == {} and store.sweeps() == []


# -- migration from schema 1 --------------------------------------------------------------------------


def v1_database(path: Path) -> Path:
    """A database exactly as rnd wrote schema version 1 (its DDL kept in schema_v1.sql)."""
    con = sqlite3.connect(path)
    con.executescript((Path(__file__).parent / "schema_v1.sql").read_text())
    created = "2026-11-01T10:00:00+00:00"
    con.execute("INSERT INTO schema_info VALUES ('schema_version', '1'), ('created', ?)", (created,))
    c = cell()
    con.execute("INSERT INTO sweeps VALUES (1, 's', 'sha', 0, 'text', 'cfg.toml', '0.1.0', ?)", (created,))
    d = c.to_dict() | {"nu": c.nu}
    cols = ", ".join("?" * len(STORE_CELL_COLUMNS))
    con.execute(
        f"INSERT INTO cells VALUES (?, ?, {cols}, 'done', NULL, '2026-11-01T10:01:00+00:00')",
        (c.key, json.dumps(c.identity(), sort_keys=True), *[d[k] for k in STORE_CELL_COLUMNS]),
    )
    con.execute("INSERT INTO sweep_cells VALUES (1, ?)", (c.key,))
    con.executemany(
        "INSERT INTO image_results VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [(c.key, i, 10 + i, i, 1, 40 + i, 1, int(i == 0)) for i in range(3)],
    )
    con.execute(
        "INSERT INTO cell_summaries VALUES (?, 3, 0.0, 0.0, 66.7, 41.0, 41.0, 90.0, 91.0, '[10, 11, 12]',"
        " '{\"mu\": 0.01}', '0.1.0', 1.5, '2026-11-01T10:01:00+00:00')",
        (c.key,),
    )
    con.commit()
    con.close()
    return path


STORE_CELL_COLUMNS = (
    "model", "checkpoint", "checkpoint_sha256", "dataset", "split", "images", "start", "attack", "norm",
    "eps", "mu", "eot", "budget", "nu", "seed", "output", "params",
)  # fmt: skip


def test_schema_1_is_migrated_keeping_every_row(tmp_path):
    db = v1_database(tmp_path / "old.sqlite")
    old = sqlite3.connect(db)
    old_rows = old.execute("SELECT * FROM image_results ORDER BY position").fetchall()
    old.close()
    before = digest(db)
    with ResultsStore(db, readonly=True) as store:  # reading migrates a copy in memory only
        (r,) = store.records()
        assert r.summary.failure_rate_vote == 66.7 and r.seconds == 1.5 and r.indices == (10, 11, 12)
    assert digest(db) == before
    with ResultsStore(db) as store:
        # no distance (score attack), never refused, untargeted
        assert image_rows_in(db) == [(*row, *[None] * 7) for row in old_rows]
        assert r.cell.defense == "rnd:nu=0.02" and r.cell.nu == 0.02
        (r,) = store.records()
        assert finished_at(db) == ["2026-11-01T10:01:00+00:00"] and r.summary.mean_queries == 41.0
        assert store.sweeps()[0]["created_at"] == "2026-11-01T10:00:00+00:00"
        assert store.record(result(cell())) is False  # still known as done
        store.register_sweep("s2", "other", [cell(seed=1)], quick=False)
        assert store.record(result(cell(seed=1)))
    con = sqlite3.connect(db)
    assert con.execute("SELECT value FROM schema_info").fetchall() == [(str(SCHEMA_VERSION),)]
    first = con.execute("SELECT event, schema_version, happened_at FROM history ORDER BY id").fetchone()
    assert first == ("created", 1, "2026-11-01T10:00:00+00:00")
    con.close()
    assert history(db) == [
        "created",
        "migrated from schema 1",
        "migrated from schema 2",
        "migrated from schema 3",
        "migrated from schema 4",
        "migrated from schema 5",
        "migrated from schema 6",
    ]


# -- migration from schema 2 --------------------------------------------------------------------------


def c_spec(c: Cell) -> str:
    return json.dumps(c.identity(), sort_keys=True)


def v2_database(path: Path) -> Path:
    """A database exactly as rnd wrote schema version 2 (its DDL kept in schema_v2.sql), with one
    finished cell, one pending cell and a history row."""
    con = sqlite3.connect(path)
    con.executescript((Path(__file__).parent / "schema_v2.sql").read_text())
    created = "2026-11-20T10:00:00+00:00"
    con.execute("INSERT INTO schema_info VALUES ('schema_version', '2')")
    con.execute("INSERT INTO history VALUES (1, 'created', 2, '0.2.0', ?)", (created,))
    con.execute("INSERT INTO sweeps VALUES (1, 's', 'sha', 0, 'text', 'cfg.toml', '0.2.0', ?)", (created,))
    cols = ", ".join("?" * len(STORE_CELL_COLUMNS))
    for c, status in ((cell(), "done"), (cell(seed=7), "pending")):
        d = c.to_dict() | {"nu": c.nu}
        con.execute(
            f"INSERT INTO cells VALUES (?, ?, {cols}, ?, NULL, ?, NULL, NULL)",
            (c.key, c_spec(c), *[d[k] for k in STORE_CELL_COLUMNS], status, created),
        )
        con.execute("INSERT INTO sweep_cells VALUES (1, ?)", (c.key,))
    c = cell()
    con.executemany(
        "INSERT INTO image_results VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        [(c.key, i, 10 + i, i, 1, 40 + i, 1, int(i == 0)) for i in range(3)],
    )
    con.execute(
        "INSERT INTO cell_summaries VALUES (?, 3, 0.0, 0.0, 66.7, 41.0, 41.0, 90.0, 91.0, '[10, 11, 12]',"
        " '{\"mu\": 0.01}', '0.2.0', 1.5, ?)",
        (c.key, created),
    )
    con.commit()
    con.close()
    return path


def test_schema_2_is_migrated_keeping_every_row(tmp_path):
    db = v2_database(tmp_path / "v2.sqlite")
    old = sqlite3.connect(db)
    old_rows = old.execute("SELECT * FROM image_results ORDER BY position").fetchall()
    old_cells = old.execute("SELECT * FROM cells ORDER BY key").fetchall()
    old.close()
    before = digest(db)
    with ResultsStore(db, readonly=True) as store:
        (r,) = store.records()
        assert r.summary.failure_rate_vote == 66.7 and math.isnan(r.summary.median_distance)
        assert r.summary.distance_curve is None
    assert digest(db) == before
    with ResultsStore(db) as store:
        assert image_rows_in(db) == [(*row, *[None] * 7) for row in old_rows]
        assert store.status_counts() == {"done": 1, "pending": 1}
        assert store.record(result(cell())) is False  # still done
        assert store.record(result(cell(seed=7)))  # the pending cell can be finished
    con = sqlite3.connect(db)
    old_row = next(row for row in old_cells if row[0] == cell().key)
    new_row = con.execute("SELECT * FROM cells WHERE key = ?", (cell().key,)).fetchone()
    # every old value kept; defense from nu, untargeted, local (no url, nothing assumed)
    assert new_row == (*old_row, "rnd:nu=0.02", None, None, None)
    con.close()
    assert history(db) == [
        "created",
        "migrated from schema 2",
        "migrated from schema 3",
        "migrated from schema 4",
        "migrated from schema 5",
        "migrated from schema 6",
    ]


def test_distances_round_trip(tmp_path):
    c = cell()
    r = result(c)
    for i, row in enumerate(r.rows):
        row.distance = [0.05, math.inf, 0.2][i % 3]
    r.summary = summarize_rows(r.rows, 90.0, 91.0, [(10, math.inf), (100, 0.2), (1000, 0.05)])
    with ResultsStore(tmp_path / "d.sqlite") as store:
        store.register_sweep("s", "text", [c], quick=False)
        assert store.record(r)
        (got,) = store.records()
        assert got.summary.median_distance == r.summary.median_distance
        assert got.summary.distance_curve == [(10, math.inf), (100, 0.2), (1000, 0.05)]
        assert [row.distance for row in store.image_rows(c.key)] == [row.distance for row in r.rows]


# -- comparing databases ------------------------------------------------------------------------------


def test_comparable_content_ignores_only_wall_clock_columns(tmp_path):
    a, b = tmp_path / "a.sqlite", tmp_path / "b.sqlite"
    for db, seconds in ((a, 1.5), (b, 99.0)):
        with ResultsStore(db) as store:
            store.register_sweep("s", "text", [cell()], quick=False)
            r = result(cell())
            r.seconds = seconds
            store.record(r)
        time.sleep(0.01)  # the timestamps differ too
    assert digest(a) != digest(b)
    assert comparable_content(a) == comparable_content(b)
    assert set(comparable_content(a)) == {
        "schema_info", "history", "sweeps", "cells", "sweep_cells", "image_results", "cell_summaries",
        "calibrations",
    }  # fmt: skip
    con = sqlite3.connect(b)
    con.execute("UPDATE image_results SET queries = queries + 1 WHERE position = 0")
    con.commit()
    con.close()
    assert comparable_content(a) != comparable_content(b)


# -- claims: concurrent sweeps share cells ------------------------------------------------------------


def dead_owner() -> str:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True)
    return f"{socket.gethostname()}:{int(proc.stdout)}:12345"


def test_claims_are_exclusive_and_dead_claims_are_taken_over(tmp_path):
    db = tmp_path / "r.sqlite"
    cells = [cell(seed=s) for s in range(3)]
    keys = [c.key for c in cells]
    with ResultsStore(db) as me:
        me.register_sweep("s", "text", cells, quick=False)
        with ResultsStore(db, owner=dead_owner()) as dead:
            assert dead.claim_next(keys) == keys[0]
            assert dead.claim_next(keys) == keys[1]
        live = ResultsStore(db, owner=f"{socket.gethostname()}:{os.getppid()}:{owner_id().split(':')[2]}")
        with live:
            # the parent process is alive (its start time differs, so it only counts as alive
            # when the recorded start time matches: use '?' to skip that check)
            live.owner = f"{socket.gethostname()}:{os.getppid()}:?"
            assert live.claim_next(keys) == keys[0]  # the dead process's claim is free again
            assert me.claim_next(keys) == keys[1]
            assert me.claim_next(keys) == keys[2]
            assert me.claim_next(keys) is None  # keys[0] is held by a live process
            assert me.claim_next(keys, skip={keys[1], keys[2]}) is None
            assert me.unfinished(keys)[keys[0]] == ("pending", live.owner)
            me.record(result(cells[1]))
            assert me.unfinished(keys).keys() == {keys[0], keys[2]}
            me.release_claims()
            assert me.unfinished(keys)[keys[2]] == ("pending", None)


def test_claims_from_another_host_expire_after_the_lease(tmp_path):
    db = tmp_path / "r.sqlite"
    c = cell()
    with ResultsStore(db) as me:
        me.register_sweep("s", "text", [c], quick=False)
        con = sqlite3.connect(db)
        fresh = dt.datetime.now(dt.UTC).isoformat()
        con.execute("UPDATE cells SET claimed_by = 'elsewhere:1:1', claimed_at = ?", (fresh,))
        con.commit()
        assert me.claim_next([c.key]) is None
        old = (dt.datetime.now(dt.UTC) - dt.timedelta(seconds=CLAIM_LEASE_S + 1)).isoformat()
        con.execute("UPDATE cells SET claimed_at = ?", (old,))
        con.commit()
        con.close()
        assert me.claim_next([c.key]) == c.key


def test_recording_releases_the_claim(tmp_path):
    db = tmp_path / "r.sqlite"
    a, b = cell(seed=0), cell(seed=1)
    with ResultsStore(db) as store:
        store.register_sweep("s", "text", [a, b], quick=False)
        store.claim_next([a.key, b.key])
        store.claim_next([a.key, b.key])
        store.record(result(a))
        store.mark_failed(b.key, "boom")
        con = sqlite3.connect(db)
        assert con.execute("SELECT status, claimed_by, claimed_at FROM cells ORDER BY status").fetchall() == [
            ("done", None, None),
            ("failed", None, None),
        ]
        con.close()


def test_heartbeat_keeps_claims_fresh_until_closed(tmp_path, monkeypatch):
    import rnd.evaluation.store.claims as store_module

    monkeypatch.setattr(store_module, "HEARTBEAT_S", 0.05)
    db = tmp_path / "r.sqlite"
    c = cell()

    def claimed_at() -> str:
        con = sqlite3.connect(db)
        try:
            return con.execute("SELECT claimed_at FROM cells").fetchone()[0]
        finally:
            con.close()

    with ResultsStore(db) as store:
        store.register_sweep("s", "text", [c], quick=False)
        store.claim_next([c.key])
        first = claimed_at()
        deadline = time.monotonic() + 10
        while claimed_at() == first and time.monotonic() < deadline:
            time.sleep(0.02)
        assert claimed_at() > first
    last = claimed_at()
    time.sleep(0.2)
    assert claimed_at() == last  # the beat stopped with the store


# -- migration from schema 3 --------------------------------------------------------------------------


def v3_database(path: Path) -> Path:
    """A database exactly as rnd wrote schema version 3 (its DDL kept in schema_v3.sql): an
    undefended and an RND cell, done, with rows, summaries and a distance; a pending cell."""
    con = sqlite3.connect(path)
    con.executescript((Path(__file__).parent / "schema_v3.sql").read_text())
    created = "2026-11-28T10:00:00+00:00"
    con.execute("INSERT INTO schema_info VALUES ('schema_version', '3')")
    con.execute("INSERT INTO history VALUES (1, 'created', 3, '0.3.0', ?)", (created,))
    con.execute("INSERT INTO sweeps VALUES (1, 's', 'sha', 0, 'text', 'cfg.toml', '0.3.0', ?)", (created,))
    cols = ", ".join("?" * len(STORE_CELL_COLUMNS))
    for c, status in ((cell(0.0), "done"), (cell(0.02), "done"), (cell(0.05, seed=3), "pending")):
        d = c.to_dict() | {"nu": c.nu}
        con.execute(
            f"INSERT INTO cells VALUES (?, ?, {cols}, ?, NULL, ?, NULL, NULL)",
            (c.key, c_spec(c), *[d[k] for k in STORE_CELL_COLUMNS], status, created),
        )
        con.execute("INSERT INTO sweep_cells VALUES (1, ?)", (c.key,))
        if status == "done":
            con.executemany(
                "INSERT INTO image_results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(c.key, i, 10 + i, i, 1, 40 + i, 1, 1, 0.5 * i) for i in range(3)],
            )
            con.execute(
                "INSERT INTO cell_summaries VALUES (?, 3, 0.0, 0.0, 0.0, 41.0, 41.0, 90.0, 91.0,"
                " '[10, 11, 12]', '{}', '0.3.0', 1.5, ?, 0.5, '[[10, 0.5]]')",
                (c.key, created),
            )
    con.commit()
    con.close()
    return path


def test_schema_3_is_migrated_keeping_every_row_and_every_key(tmp_path):
    """Every row of a schema 3 database survives; each cell's defense is filled from its nu; the
    keys are those the current Cell computes (a resumed sweep finds its finished cells done)."""
    db = v3_database(tmp_path / "v3.sqlite")
    old = sqlite3.connect(db)
    tables = ("cells", "image_results", "cell_summaries")
    before = {t: sorted(old.execute(f"SELECT * FROM {t}").fetchall()) for t in tables}
    old.close()
    with ResultsStore(db) as store:
        assert store.status_counts() == {"done": 2, "pending": 1}
        by_defense = {r.cell.defense: r for r in store.records()}
        assert set(by_defense) == {"none", "rnd:nu=0.02"}
        assert by_defense["none"].cell.nu == 0.0 and by_defense["rnd:nu=0.02"].summary.detection_rate == 0
        assert by_defense["none"].summary.distance_curve == [(10, 0.5)]
    con = sqlite3.connect(db)
    for t in tables:  # every old row, every old value, in the old columns
        after = sorted(con.execute(f"SELECT * FROM {t}").fetchall())
        assert [row[: len(before[t][0])] for row in after] == before[t]
    assert con.execute("SELECT defense FROM cells ORDER BY nu").fetchall() == [
        ("none",),
        ("rnd:nu=0.02",),
        ("rnd:nu=0.05",),
    ]
    con.close()
    with ResultsStore(db) as store:
        assert store.record(result(cell(0.02))) is False  # the same key: already done
        assert store.record(result(cell(0.05, seed=3)))  # the pending one finishes
    assert history(db)[-4:] == [f"migrated from schema {v}" for v in (3, 4, 5, 6)]


def test_defense_and_target_and_refusals_round_trip(tmp_path):
    """A rival defense, a targeted cell and a detector's refusals are stored and read back."""
    c = replace(cell(), defense="aaa:interval=6", target="next")
    r = result(c)
    r.rows[0].first_refusal, r.rows[0].target = 7, 3
    r.summary = summarize_rows(r.rows, 90.0, 91.0)
    with ResultsStore(tmp_path / "t.sqlite") as store:
        store.register_sweep("s", "text", [c], quick=False)
        assert store.record(r)
        (got,) = store.records()
        assert got.cell.defense == "aaa:interval=6" and got.cell.target == "next"
        assert got.summary.detection_rate == pytest.approx(100 / 3) and got.summary.median_first_refusal == 7
        first = store.image_rows(c.key)[0]
        assert (first.first_refusal, first.target) == (7, 3)
    assert c.key != cell().key and "defense" in c.identity() and "nu" not in c.identity()


def test_cell_keys_written_before_defense_specs_are_kept():
    """Keys computed by rnd before defenses became specs (schema 3), pinned: a resumed sweep finds
    its finished undefended and RND cells under the same keys."""
    assert cell(0.0).key == "476af857ea44c0e55a6fce23acbc948dbc235688519bdc60522ee356c3ec9b70"
    assert cell(0.02).key == "7f9fce18b38107cba7137502a730bf2852114c2cf97de01e9c138567c26a8e0f"


# -- migration from schema 4 --------------------------------------------------------------------------


def v4_database(path: Path, version: int = 4) -> Path:
    """A database exactly as rnd wrote schema version 4 (its DDL kept in schema_v4.sql): a done RND
    cell of a rival-era sweep with rows and summary (a refusal, a target), and a pending cell. With
    `version=5` (or 6) the same rows in schema 5 (schema_v5.sql: the cells have url and assume,
    NULL) or 6 (schema_v6.sql: and an empty calibrations table)."""
    con = sqlite3.connect(path)
    con.executescript((Path(__file__).parent / f"schema_v{version}.sql").read_text())
    created = "2026-11-30T10:00:00+00:00"
    con.execute("INSERT INTO schema_info VALUES ('schema_version', ?)", (str(version),))
    con.execute("INSERT INTO history VALUES (1, 'created', ?, '0.4.0', ?)", (version, created))
    con.execute("INSERT INTO sweeps VALUES (1, 's', 'sha', 0, 'text', 'cfg.toml', '0.4.0', ?)", (created,))
    cols = ", ".join("?" * len(STORE_CELL_COLUMNS))
    url_assume = ", NULL, NULL" if version >= 5 else ""
    for c, status in ((cell(0.02), "done"), (cell(0.05, seed=3), "pending")):
        d = c.to_dict() | {"nu": c.nu}
        con.execute(
            f"INSERT INTO cells VALUES (?, ?, {cols}, ?, NULL, ?, NULL, NULL, ?, NULL{url_assume})",
            (c.key, c_spec(c), *[d[k] for k in STORE_CELL_COLUMNS], status, created, c.defense),
        )
        con.execute("INSERT INTO sweep_cells VALUES (1, ?)", (c.key,))
        if status == "done":
            con.executemany(
                "INSERT INTO image_results VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [(c.key, i, 10 + i, i, 1, 40 + i, i % 2, 1, None, [7, None, None][i], 3) for i in range(3)],
            )
            con.execute(
                "INSERT INTO cell_summaries VALUES (?, 3, 0.0, 33.3, 0.0, 41.0, 41.0, 90.0, 91.0,"
                " '[10, 11, 12]', '{}', '0.4.0', 1.5, ?, NULL, NULL, 33.3, 7.0)",
                (c.key, created),
            )
    con.commit()
    con.close()
    return path


def test_schema_4_is_migrated_keeping_every_row_and_the_clean_column_becomes_nullable(tmp_path):
    """Schema 4 -> 5 rebuilds image_results and cell_summaries (the clean-model judgement may be
    unmeasured, NULL): every old row and value survives, in the old column order; the cells gain
    url and assume (NULL); a resumed sweep finds its done cell done; an endpoint cell, with no
    clean judgement, is stored and read back."""
    db = v4_database(tmp_path / "v4.sqlite")
    old = sqlite3.connect(db)
    tables = ("cells", "image_results", "cell_summaries")
    before = {t: sorted(old.execute(f"SELECT * FROM {t}").fetchall()) for t in tables}
    old.close()
    with ResultsStore(db, readonly=True) as store:  # a read migrates a copy in memory only
        (r,) = store.records()
        assert r.summary.failure_rate_clean == 33.3 and r.summary.median_first_refusal == 7.0
    with ResultsStore(db) as store:
        assert store.status_counts() == {"done": 1, "pending": 1}
        assert store.record(result(cell(0.02))) is False
    con = sqlite3.connect(db)
    for t in tables:
        after = sorted(con.execute(f"SELECT * FROM {t}").fetchall())
        assert [row[: len(before[t][0])] for row in after] == before[t]
    assert {r[0] for r in con.execute("SELECT url FROM cells")} == {None}
    notnull = dict(con.execute("SELECT name, \"notnull\" FROM pragma_table_info('image_results')").fetchall())
    assert notnull["success_clean"] == 0 and notnull["success_vote"] == 1
    con.close()
    assert history(db)[-3:] == [f"migrated from schema {v}" for v in (4, 5, 6)]
    remote = replace(
        cell(0.0), checkpoint="", checkpoint_sha256="", defense="remote",
        url="http://127.0.0.1:9/v2/models/m", assume="rnd:nu=0.02", key_env="RND_KEY",
    )  # fmt: skip
    rows = [ImageRow(i, 10 + i, i, True, 40 + i, None, i == 0) for i in range(3)]
    res = CellResult(remote.key, remote, rows, summarize_rows(rows, 90.0, math.nan), {}, "0.5.0", 1.0)
    with ResultsStore(db) as store:
        store.register_sweep("remote", "text2", [remote], quick=False)
        assert store.record(res)
        got = next(r for r in store.records() if r.cell.defense == "remote")
        assert got.cell.url == remote.url and got.cell.assume == "rnd:nu=0.02"
        assert math.isnan(got.summary.failure_rate_clean) and math.isnan(got.summary.model_accuracy)
        assert got.summary.failure_rate_vote == pytest.approx(200 / 3)
        assert [r.success_clean for r in store.image_rows(remote.key)] == [None, None, None]
    assert remote.key != replace(remote, assume=None).key and "key_env" not in remote.identity()


def test_schema_5_is_migrated_keeping_every_row_and_gains_the_calibrations(tmp_path):
    """Schema 5 -> 6 adds the calibrations table (empty); every row of every old table survives
    unchanged; a read-only open migrates a copy in memory and leaves the file at schema 5."""
    db = v4_database(tmp_path / "v5.sqlite", version=5)
    old = sqlite3.connect(db)
    tables = ("sweeps", "cells", "sweep_cells", "image_results", "cell_summaries")
    before = {t: sorted(old.execute(f"SELECT * FROM {t}").fetchall()) for t in tables}
    old.close()
    with ResultsStore(db, readonly=True) as store:
        assert store.calibration("k") is None and len(store.records()) == 1
    assert sqlite3.connect(db).execute("SELECT value FROM schema_info").fetchone() == ("5",)
    with ResultsStore(db) as store:
        assert store.status_counts() == {"done": 1, "pending": 1}
        assert store.record(result(cell(0.02))) is False
    con = sqlite3.connect(db)
    after = {t: sorted(con.execute(f"SELECT * FROM {t}").fetchall()) for t in tables}
    assert {t: [row[: len(before[t][0])] for row in rows] for t, rows in after.items()} == before
    assert con.execute("SELECT COUNT(*) FROM calibrations").fetchone() == (0,)
    con.close()
    assert history(db)[-2:] == ["migrated from schema 5", "migrated from schema 6"]


def test_schema_6_is_migrated_keeping_every_row_and_its_rechecks_are_not_measured(tmp_path):
    """Schema 6 -> 7 adds the resubmission counts and the PNG / JPEG re-checks to image_results:
    every old row and value survives, the new values are NULL (read back as None: not measured),
    and a cell finished after the migration stores and reads back all four."""
    db = v4_database(tmp_path / "v6.sqlite", version=6)
    old = sqlite3.connect(db)
    tables = ("sweeps", "cells", "sweep_cells", "image_results", "cell_summaries", "calibrations")
    before = {t: sorted(old.execute(f"SELECT * FROM {t}").fetchall()) for t in tables}
    old.close()
    with ResultsStore(db, readonly=True) as store:
        (r,) = store.records(rows=True)
        assert {(x.wrong_answers, x.answer_draws, x.success_png, x.success_jpeg) for x in r.rows} == {
            (None, None, None, None)
        }
    assert sqlite3.connect(db).execute("SELECT value FROM schema_info").fetchone() == ("6",)
    with ResultsStore(db) as store:
        assert store.status_counts() == {"done": 1, "pending": 1}
    con = sqlite3.connect(db)
    after = {t: sorted(con.execute(f"SELECT * FROM {t}").fetchall()) for t in tables}
    assert {
        t: [row[:11] if t == "image_results" else row for row in rows] for t, rows in after.items()
    } == before
    assert {row[11:] for row in after["image_results"]} == {(None, None, None, None)}
    con.close()
    assert history(db)[-1] == "migrated from schema 6"
    fresh = cell(0.05, seed=3)
    rows = [
        ImageRow(i, 20 + i, i, True, 30 + i, True, True, wrong_answers=7 * i, answer_draws=100,
                 success_png=i != 1, success_jpeg=False)
        for i in range(3)
    ]  # fmt: skip
    res = CellResult(fresh.key, fresh, rows, summarize_rows(rows, 90.0, 91.0), {}, "0.6.0", 1.0)
    with ResultsStore(db) as store:
        assert store.record(res)
        assert store.image_rows(fresh.key) == rows


def test_a_calibration_is_kept_once_and_read_back(tmp_path):
    db = tmp_path / "s.sqlite"
    asked, measured = {"model": "abc", "images": 100}, {"value": 0.05, "tried": [{"value": 0.1, "drop": 2.0}]}
    with ResultsStore(db) as store:
        assert store.calibration("k1") is None
        assert store.record_calibration("k1", asked, measured) is True
        assert store.record_calibration("k1", asked, {"value": 9.0}) is False  # the first stays
    with ResultsStore(db, readonly=True) as store:
        assert store.calibration("k1") == measured and store.calibration("k2") is None
    row = sqlite3.connect(db).execute("SELECT request, rnd_version FROM calibrations").fetchone()
    assert json.loads(row[0]) == asked and row[1]


def test_a_resumed_store_hands_out_unfinished_cells_only(tmp_path):
    """After a restart (a new process owner, the store reopened), claims go to the cells not yet
    done, in the caller's order, each once; a finished cell is never handed out again, and a claim
    left by a dead process is taken over."""
    db = tmp_path / "r.sqlite"
    cells = [cell(seed=s) for s in range(5)]
    keys = [c.key for c in cells]
    with ResultsStore(db, owner="first-run") as store:
        store.register_sweep("s", "text", cells, quick=False)
        for c in (cells[0], cells[3]):
            assert store.record(result(c))
        stale = store.claim_next(keys)  # claimed, then the process "dies" before finishing it
        assert stale == keys[1]
    dead = f"{socket.gethostname()}:999999:0"  # a process that no longer exists on this host
    with sqlite3.connect(db) as con:
        con.execute("UPDATE cells SET claimed_by = ? WHERE key = ?", (dead, stale))
    with ResultsStore(db, owner=f"{socket.gethostname()}:{os.getpid()}:resumed") as store:
        handed = []
        while (key := store.claim_next(keys)) is not None:
            handed.append(key)
        assert handed == [keys[1], keys[2], keys[4]]  # unfinished only, in order, each once
        assert set(handed).isdisjoint(store.done_keys())
        store.release_claims()
