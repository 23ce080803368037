"""The SQLite results store: schema checks that never modify a foreign file, atomic cell writes,
no duplicates, and recovery after a writer is killed in the middle of a transaction."""

from __future__ import annotations

import hashlib
import signal
import sqlite3
import subprocess
import sys
import textwrap

import pytest

from rnd.errors import InputError
from rnd.evaluation.store import SCHEMA_VERSION, ResultsStore, check_database
from rnd.evaluation.sweep import Cell, CellResult, ImageRow, summarize_rows


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
        nu=nu,
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
        (r,) = store.results()
        assert r["nu"] == 0.02 and r["attack"] == "nes" and r["checkpoint_sha256"] == "ab" * 32
        assert r["failure_rate"] == pytest.approx(100 / 3) and r["failure_rate_vote"] == pytest.approx(
            200 / 3
        )
        assert r["mean_queries"] == 41.0 and r["indices"] == [10, 11, 12] and r["rnd_version"] == "0.1.0"
        assert len(store.image_rows(c.key)) == 3


def test_record_twice_writes_nothing(tmp_path):
    c = cell()
    with ResultsStore(tmp_path / "r.sqlite") as store:
        store.register_sweep("s", "text", [c], quick=False)
        store.register_sweep("s", "text", [c], quick=False)  # idempotent
        assert store.record(result(c)) is True
        assert store.record(result(c)) is False
        assert len(store.image_rows()) == 3 and len(store.results()) == 1
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
        assert store.image_rows() == [] and store.results() == []
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


@pytest.mark.parametrize("content", [b"not a database at all", b""])
def test_foreign_files_are_refused_untouched(tmp_path, content):
    db = tmp_path / "x.sqlite"
    db.write_bytes(content)
    with pytest.raises(InputError):
        ResultsStore(db)
    assert db.read_bytes() == content


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
        con.execute("INSERT INTO image_results VALUES ({c.key!r}, 0, 1, 2, 1, 5, 1, 1)")
        con.execute("UPDATE cells SET status = 'done'")
        os.kill(os.getpid(), signal.SIGKILL)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL
    assert (tmp_path / "r.sqlite-journal").exists()  # a hot journal: the case being tested
    assert check_database(db)
    with ResultsStore(db, readonly=True) as store:
        assert store.image_rows() == [] and store.status_counts() == {"pending": 1}
    with ResultsStore(db) as store:
        assert store.record(result(c))
        assert len(store.image_rows()) == 3
