"""`rnd sweep` and `rnd report` end to end, failed starts that change nothing, and the kill test:
a sweep process killed with SIGKILL at several points and restarted ends with the same database
as an uninterrupted run."""

from __future__ import annotations

import hashlib
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from rnd.cli import main
from rnd.evaluation.config import load_config
from rnd.evaluation.runner import InProcessRunner, plan_sweep, run_sweep
from rnd.evaluation.store import ResultsStore
from rnd.models import save_checkpoint

CONFIG = """
name = "cli-test"
budget = {budget}
[data]
images = {images}
accuracy_images = 200
[defense]
nu = [0.0, 0.02, 0.05]
[[models]]
label = "tiny"
checkpoint = "tiny"
[[attacks]]
name = "nes"
norm = "linf"
eps = 0.1
mu = [0.005, 0.02]
[attacks.params]
q = 5
[quick]
images = 2
budget = 60
max_grid = 2
"""


@pytest.fixture(scope="module")
def folder(tiny_model, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("sweepcli")
    save_checkpoint(tiny_model, d / "tiny", dataset="fashion-mnist")
    (d / "sweep.toml").write_text(CONFIG.format(budget=110, images=3))
    (d / "slow.toml").write_text(CONFIG.format(budget=800, images=4))
    return d


def invoke(*args: str):
    return CliRunner().invoke(main, ["--threads", "1", *args])


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(db: Path) -> dict:
    """Everything a sweep stores that must not depend on interruptions (not timings)."""
    con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    try:
        return {
            "cells": con.execute("SELECT key, spec, status FROM cells ORDER BY key").fetchall(),
            "rows": con.execute("SELECT * FROM image_results ORDER BY cell_key, position").fetchall(),
            "summaries": con.execute(
                "SELECT cell_key, images, failure_rate, failure_rate_clean, failure_rate_vote, mean_queries,"
                " median_queries, clean_accuracy, model_accuracy, indices, attack_params FROM cell_summaries"
                " ORDER BY cell_key"
            ).fetchall(),
            "duplicates": con.execute(
                "SELECT COUNT(*) - COUNT(DISTINCT cell_key || ':' || position) FROM image_results"
            ).fetchone()[0],
        }
    finally:
        con.close()


def test_sweep_then_rerun_then_report(folder, tmp_path):
    db = tmp_path / "r.sqlite"
    first = invoke("sweep", str(folder / "sweep.toml"), "--db", str(db), "--no-progress")
    assert first.exit_code == 0, first.output
    assert "6 cells, 0 already done, 6 run now, 0 failed" in first.output
    before = snapshot(db)
    again = invoke("sweep", str(folder / "sweep.toml"), "--db", str(db), "--no-progress")
    assert again.exit_code == 0 and "6 cells, 6 already done, 0 run now" in again.output
    assert snapshot(db) == before

    out = tmp_path / "rep"
    rep = invoke("report", str(db), "--out", str(out))
    assert rep.exit_code == 0, rep.output
    text = (out / "report.md").read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert any(p.startswith("heatmap_nes") for p in pngs) and "clean_accuracy.png" in pngs
    from PIL import Image

    with Image.open(out / next(p for p in pngs if p.startswith("heatmap"))) as im:
        assert im.format == "PNG" and im.size[0] > 600
    # the heatmap table in the report holds the stored failure rates (rows mu, columns nu)
    with ResultsStore(db, readonly=True) as store:
        rates = {(r["mu"], r["nu"]): r["failure_rate"] for r in store.results()}
    line = next(ln for ln in text.splitlines() if ln.startswith("| 0.005 |"))
    assert line == "| 0.005 | " + " | ".join(f"{rates[(0.005, nu)]:.0f}" for nu in (0.0, 0.02, 0.05)) + " |"
    assert "## Main table" in text and "## All cells" in text


def test_quick_shrinks_the_sweep(folder, tmp_path):
    result = invoke("sweep", str(folder / "sweep.toml"), "--quick", "--dry-run")
    assert result.exit_code == 0 and result.output.strip().endswith("4 cells")  # 2 nu x 2 mu
    plan = plan_sweep(load_config(folder / "sweep.toml"), quick=True)
    assert {c.budget for c in plan.cells} == {60} and {c.images for c in plan.cells} == {2}
    assert {c.nu for c in plan.cells} == {0.0, 0.05}


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda t: t.replace("[data]", "[data]\ncolour = 2"), "data.colour: unknown key"),
        (lambda t: t.replace('checkpoint = "tiny"', 'checkpoint = "missing"'), "does not exist"),
        (lambda t: t.replace("mu = [0.005, 0.02]", "mu = []"), "empty grid"),
        (lambda t: t.replace("budget = 110", "budget = 5"), "more than the budget"),
    ],
)
def test_failed_start_changes_nothing(folder, tmp_path, edit, message):
    bad = folder / f"bad{abs(hash(message))}.toml"
    bad.write_text(edit((folder / "sweep.toml").read_text()))
    fresh = tmp_path / "fresh.sqlite"
    result = invoke("sweep", str(bad), "--db", str(fresh), "--no-progress")
    assert result.exit_code == 2 and message in result.output, result.output
    assert not fresh.exists()


def test_existing_databases_are_never_touched_by_a_failed_start(folder, tmp_path):
    db = tmp_path / "r.sqlite"
    run_sweep(
        plan_sweep(load_config(folder / "sweep.toml"), quick=True),
        db,
        runner=InProcessRunner(threads=1),
        progress=False,
    )
    before = digest(db)
    (folder / "broken.toml").write_text("name = 3\n")
    assert invoke("sweep", str(folder / "broken.toml"), "--db", str(db)).exit_code == 2
    con = sqlite3.connect(db)
    con.execute("UPDATE schema_info SET value = '0' WHERE name = 'schema_version'")
    con.commit()
    con.close()
    before = digest(db)
    result = invoke("sweep", str(folder / "sweep.toml"), "--db", str(db), "--no-progress")
    assert result.exit_code == 2 and "schema version 0" in result.output
    assert digest(db) == before
    report = invoke("report", str(db), "--out", str(tmp_path / "rep"))
    assert report.exit_code == 2 and digest(db) == before


def done_cells(db: Path) -> int:
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True, timeout=0.1)
        try:
            return con.execute("SELECT COUNT(*) FROM cells WHERE status = 'done'").fetchone()[0]
        finally:
            con.close()
    except sqlite3.Error:  # being created or locked by the writer: look again
        return -1


def sweep_process(config: Path, db: Path) -> subprocess.Popen:
    code = "from rnd.cli import main; main()"
    args = ["--threads", "1", "sweep", str(config), "--db", str(db), "--no-progress"]
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )


def test_kill_and_restart_equals_uninterrupted(folder, tmp_path):
    config = folder / "slow.toml"
    reference = tmp_path / "reference.sqlite"
    run_sweep(plan_sweep(load_config(config)), reference, runner=InProcessRunner(threads=1), progress=False)
    ref = snapshot(reference)
    assert len(ref["cells"]) == 6 and len(ref["rows"]) == 24 and ref["duplicates"] == 0

    db = tmp_path / "killed.sqlite"
    kills = 0
    for target in (1, 3, 4):  # SIGKILL once at least `target` cells are in the database
        proc = sweep_process(config, db)
        deadline = time.monotonic() + 120
        while proc.poll() is None and done_cells(db) < target and time.monotonic() < deadline:
            time.sleep(0.01)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait(timeout=60)
        assert proc.returncode in (0, -signal.SIGKILL), proc.stderr.read().decode()
        proc.stderr.close()
        mid = snapshot(db)
        assert mid["duplicates"] == 0
        done = {k for k, _, s in mid["cells"] if s == "done"}
        # every finished cell is complete: all its rows and its summary, nothing of unfinished ones
        assert {r[0] for r in mid["rows"]} == done == {s[0] for s in mid["summaries"]}
        assert len(mid["rows"]) == 4 * len(done)
    assert kills >= 2
    final = sweep_process(config, db)
    assert final.wait(timeout=300) == 0, final.stderr.read().decode()
    final.stderr.close()
    assert snapshot(db) == ref
