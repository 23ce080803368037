"""The full-size audit's committed results store (`bench/audit-full`, issue 17) stays readable.

The audit takes longer than any one machine keeps its files, so its store is committed and resumed
(`bench/audit_full.py`). A change of the cell identity, the schema or the audit's request would
orphan those hours of cells without an error anywhere; these tests say so instead.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from rnd.evaluation.store import comparable_content
from tests.modules import load_file

ROOT = Path(__file__).resolve().parents[2]
HOME = ROOT / "bench" / "audit-full"
SNAPSHOT = HOME / "audit.sqlite"
CHECKPOINT = HOME / "checkpoints" / "fashion-mnist-small-cnn"
#: The committed report the docs' results pages are rendered from (docs/results/records/audit-full.json).
RECORD = ROOT / "docs" / "results" / "records" / "audit-full.report.json"


def done_cells(db: Path) -> dict[str, float]:
    """Finished cells of the store at `db`: key -> failure rate by vote."""
    with sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True) as con:
        rows = con.execute(
            "SELECT c.key, s.failure_rate_vote FROM cells c JOIN cell_summaries s ON s.cell_key = c.key "
            "WHERE c.status = 'done'"
        ).fetchall()
    return dict(rows)


def test_every_cell_of_the_snapshot_is_of_the_committed_checkpoint():
    sha = json.loads(CHECKPOINT.with_suffix(".json").read_text())["sha256"]
    with sqlite3.connect(f"{SNAPSHOT.resolve().as_uri()}?mode=ro", uri=True) as con:
        models = {r[0] for r in con.execute("SELECT DISTINCT checkpoint_sha256 FROM cells")}
        kept = con.execute("SELECT count(*) FROM calibrations").fetchone()[0]
    assert models == {sha} and kept == 1
    assert done_cells(SNAPSHOT)  # it holds finished work


def report_only(db: Path, out: Path, *threat: str) -> tuple[dict, str]:
    """`rnd audit --report-only` over `db` with the committed checkpoint and zoo (RND_HOME)."""
    cmd = [sys.executable, "-c", "from rnd.cli import main; main()", "--threads", "1", "audit", *threat]
    cmd += ["--out", str(out), "--db", str(db), "--report-only", "--no-progress"]
    res = subprocess.run(
        cmd, capture_output=True, text=True, timeout=600, env={**os.environ, "RND_HOME": str(HOME)}
    )
    assert res.returncode == 0, res.stderr
    assert "as calibrated before" in res.stderr + res.stdout and "calibrating" not in res.stderr
    return json.loads((out / "report.json").read_text()), res.stdout


@pytest.mark.slow  # reads the whole stored audit (about 14 s)
def test_report_only_over_the_snapshot_reports_every_finished_cell(tmp_path):
    """`rnd audit --report-only` with the committed checkpoint finds the kept calibration (nothing
    recalibrated) and every finished cell, with the numbers stored, and writes nothing. The three
    threat families (the default) cover every cell and give the committed record; scores and labels
    alone (`--threat both`, what the full audit was first run as) report those families' cells."""
    db = tmp_path / "audit.sqlite"
    shutil.copyfile(SNAPSHOT, db)
    before = comparable_content(db)
    report, _ = report_only(db, tmp_path / "out")
    stored = done_cells(db)
    progress = report["progress"]
    assert progress["done"] + (progress["grid_done"] or 0) == len(stored)
    reported = [a for by_threat in report["cells"].values() for e in by_threat.values() for a in e["attacks"]]
    assert len(reported) == progress["done"]
    for attack in reported:
        assert attack["vote"]["failure"] == stored[attack["cell_key"]]
    # the docs' results pages render the committed copy of the report
    record = json.loads(RECORD.read_text())
    assert record == {**report, "db": "bench/audit-full/audit.sqlite"}, "regenerate docs/results/records"
    both, _ = report_only(db, tmp_path / "both", "--threat", "both")
    assert comparable_content(db) == before
    assert set(both["verdict"]) == {"scores", "labels"}
    assert both["verdict"] == {k: v for k, v in report["verdict"].items() if k != "surrogate"}
    # bench/audit_full.py table prints the same report as Markdown: a row per finished cell
    text = load_script().markdown(report, wall_seconds=3600.0)
    assert f"{progress['done']} of {progress['cells']} cells" in text and "1.00 h" in text
    for attack in reported:
        v = attack["vote"]
        assert f"| {attack['attack']} | {attack['observed']['failure']:.1f} | {v['failure']:.1f} [" in text


def load_script():
    """bench/audit_full.py as a module (it is a script, not part of the package)."""
    return load_file(ROOT / "bench" / "audit_full.py")


def test_resume_until_stops_between_cells_when_the_next_would_not_fit():
    import datetime as dt

    script = load_script()
    now = dt.datetime(2026, 12, 4, 23, 0, tzinfo=dt.UTC)
    assert script.next_utc("23:30", now) == now + dt.timedelta(minutes=30)
    assert script.next_utc("00:40", now) == now + dt.timedelta(minutes=100)  # the next day's
    assert script.next_utc("23:00", now) == now
    # mid-cell: go on until the deadline itself
    assert not script.should_stop(100.0, cell_finished=False, longest_cell=900.0)
    assert script.should_stop(0.0, cell_finished=False, longest_cell=None)
    # between cells: stop only when the longest cell of the run (or the first guess) would not fit
    assert script.should_stop(800.0, cell_finished=True, longest_cell=900.0)
    assert not script.should_stop(1000.0, cell_finished=True, longest_cell=900.0)
    assert script.should_stop(script.FIRST_CELL_GUESS - 1, cell_finished=True, longest_cell=None)
    assert not script.should_stop(script.FIRST_CELL_GUESS + 1, cell_finished=True, longest_cell=None)


def test_cell_walls_since_reads_the_cells_finished_in_this_run(tmp_path):
    script = load_script()
    db = tmp_path / "audit.sqlite"
    shutil.copyfile(SNAPSHOT, db)
    with sqlite3.connect(db) as con:
        rows = con.execute("SELECT finished_at, wall_seconds FROM cell_summaries ORDER BY finished_at")
        rows = rows.fetchall()
    assert script.cell_walls_since(db, rows[-1][0]) == [rows[-1][1]]
    assert sorted(script.cell_walls_since(db, "0")) == sorted(r[1] for r in rows)
    assert script.cell_walls_since(db, "9") == []
    assert script.done_cells(db) == len(done_cells(db))
    assert script.done_cells(tmp_path / "absent.sqlite") == 0


def test_the_full_audits_verdict_is_complete_and_the_worst_case_of_its_cells():
    """The committed full audit (held equal to what --report-only gives now, above): every cell
    done, each threat model's worst cases are the lowest failure rates of its defended cells by
    each judgement, and the undefended worst case the lowest of the undefended cells; the headline
    numbers are pinned."""
    report = json.loads(RECORD.read_text())
    progress = report["progress"]
    assert progress["complete"] and progress["done"] == progress["cells"] == 204
    assert progress["grid_done"] == progress["grid_cells"] == 12
    defense = report["defense"]
    assert defense == "rnd:nu=0.0525" and len(report["attacks_run"]) == 117
    for threat, verdict in report["verdict"].items():
        assert verdict["headline"] == "vote" and verdict["attacks_pending"] == 0
        defended = report["cells"][defense][threat]["attacks"]
        undefended = report["cells"]["none"][threat]["attacks"]
        assert verdict["attacks"] == len(defended)
        for key, judged in (("worst", "vote"), ("worst_observed", "observed"), ("worst_clean", "clean")):
            lowest = min(defended, key=lambda a, j=judged: a[j]["failure"])
            assert verdict[key]["failure"] == lowest[judged]["failure"], (threat, key)
            assert verdict[key]["attack"] in {a["attack"] for a in defended if a[judged] == lowest[judged]}
        lowest = min(a["vote"]["failure"] for a in undefended)
        assert verdict["undefended_worst"]["failure"] == lowest
    scores, labels = report["verdict"]["scores"], report["verdict"]["labels"]
    assert (scores["worst"]["attack"], scores["worst"]["failure"]) == ("nes linf eps=0.1 M=10", 67.4)
    assert (labels["worst"]["attack"], labels["worst"]["failure"]) == ("psj l2 eps=1.5", 49.8)
    assert scores["undefended_worst"]["failure"] == 6.4 and labels["undefended_worst"]["failure"] == 9.0
    surrogate = report["verdict"]["surrogate"]
    ensemble = "on=fashion-mnist-small-cnn-w16+fashion-mnist-resnet8+fashion-mnist-vgg-small"
    worst = (surrogate["worst"]["attack"], surrogate["worst"]["failure"])
    assert worst == (f"psj-ts l2 eps=1.5 {ensemble}", 32.2)
    assert surrogate["undefended_worst"]["failure"] == 5.8


def test_cell_clock_charges_each_cell_the_cpu_its_process_spent_on_it(tmp_path, monkeypatch):
    """A cell's CPU time runs from the poll that first sees its claim to the poll that sees the
    next; a process that exits is charged up to its last poll; a cell stopped half-way (not
    finished) is not kept, and seconds add up across runs of the same store."""
    script = load_script()
    polls = [  # (cpu of pid 1, claim of pid 1, cpu of pid 2, claim of pid 2)
        (5.0, None, 1.0, "b"),
        (12.0, "a", 9.0, "b"),
        (30.0, "c", 15.0, None),
        (41.0, "c", None, None),  # pid 2 has exited
        (None, None, None, None),  # pid 1 too, stopped during c
    ]
    clock, at = script.CellClock(), [0]
    monkeypatch.setattr(script, "cpu_seconds", lambda pid: polls[at[0]][0 if pid == 1 else 2])
    for i, (_, c1, _, c2) in enumerate(polls):
        at[0] = i
        clock.poll([1, 2], {k: v for k, v in (("1", c1), ("2", c2)) if v})
    assert clock.spent == {script.BEFORE_CELLS: 5.0 + 1.0, "a": 18.0, "b": 14.0, "c": 11.0}
    out = tmp_path / "run.cpu.json"
    clock.save(out, finished={"a", "b"})
    clock.save(out, finished={"a", "b"})
    import json

    assert json.loads(out.read_text()) == {script.BEFORE_CELLS: 12.0, "a": 36.0, "b": 28.0}


def test_compare_sets_a_run_beside_another(tmp_path, monkeypatch, capsys):
    """`compare` matches cells by key: the snapshot beside itself has every cell the same, and each
    (defense, family)'s worst case the same on both sides."""
    script = load_script()
    snapshot = ROOT / "bench" / "audit-full" / "audit.sqlite"
    monkeypatch.setattr(script, "WORKING", tmp_path / "absent.sqlite")
    monkeypatch.setattr(script, "SNAPSHOT", snapshot)
    monkeypatch.setattr(script, "CPU", tmp_path / "absent.cpu.json")
    assert script.compare(snapshot) == 0
    text = capsys.readouterr().out
    n = len(script.cells_of(snapshot))
    assert f"{n} cells finished in both ({n} here, {n} in audit.sqlite): {n} with the same" in text
    rows = [line for line in text.splitlines() if line.startswith("| rnd:") or line.startswith("| none")]
    assert rows and all(line.split(" | ")[2] == line.split(" | ")[3].rstrip(" |") for line in rows)


def test_prune_bound_stops_only_cells_that_cannot_be_the_worst_case():
    """bench/prune_bound.py's replay: a cell is stopped after a slice once its failures so far
    outnumber, by every judgement, a finished cell's of the same defense; the fewest failures
    stay a complete cell's; what a stopped cell did not run is not spent."""
    script = load_file(ROOT / "bench" / "prune_bound.py")
    fail, win = (0, 0, 0, 10), (1, 1, 1, 2)  # (observed, vote, clean success; queries)
    images = {
        "strong": [win] * 3 + [fail],  # 1 failure of 4: the worst case
        "weak": [fail] * 4,  # stopped after its first slice of 2 (2 > 1 failures)
        "other defense": [fail] * 4,  # nothing finished against its defense: runs complete
        "clean disagrees": [(0, 0, 1, 10)] * 4,  # the clean model is fooled: not stopped
        "tie": [fail, win, win, fail],  # 1 failure after its first slice: as many, not more
    }
    order = [(1, "strong", "a", "rnd"), (2, "weak", "a", "rnd"), (3, "other defense", "a", "none")]
    order += [(4, "clean disagrees", "a", "rnd"), (5, "tie", "a", "rnd")]
    spent, total, stopped = script.replay(order, images, 2)
    assert stopped == 1
    assert total == 16 + 40 + 40 + 40 + 24 and spent == total - 20  # the weak cell's second slice
    # no saving when every cell is run as one slice
    assert script.replay(order, images, 4) == (total, total, 0)
