"""`rnd sweep` and `rnd report` end to end, failed starts that change nothing, and the kill test:
a sweep process killed with SIGKILL at several points and restarted ends with the same database
as an uninterrupted run."""

from __future__ import annotations

import contextlib
import hashlib
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from rnd.cli import main
from rnd.evaluation.config import load_config
from rnd.evaluation.drive import plan_sweep, run_sweep
from rnd.evaluation.runners import InProcessRunner
from rnd.evaluation.store import ResultsStore, check_database, comparable_content
from rnd.models import save_checkpoint
from tests.cli.helpers import unprivileged

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
        rates = {(r.cell.mu, r.cell.nu): r.summary.failure_rate for r in store.records()}
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
        (lambda t: t.replace("[data]", "[data]\nstart = 10000"), "data.start: 10000 is past the end"),
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
    broken = invoke("sweep", str(folder / "broken.toml"), "--db", str(db))
    assert broken.exit_code == 2 and "name" in broken.output, broken.output
    assert digest(db) == before
    con = sqlite3.connect(db)
    con.execute("UPDATE schema_info SET value = '0' WHERE name = 'schema_version'")
    con.commit()
    con.close()
    before = digest(db)
    result = invoke("sweep", str(folder / "sweep.toml"), "--db", str(db), "--no-progress")
    assert result.exit_code == 2 and "schema version 0" in result.output
    assert digest(db) == before
    report = invoke("report", str(db), "--out", str(tmp_path / "rep"))
    assert report.exit_code == 2 and "schema version 0" in report.output and digest(db) == before


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


@pytest.mark.slow  # the SIGKILL at random moments test below covers resuming in the default suite
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


# -- SIGKILL at random moments, concurrent sweeps, storage errors --------------------------------------

#: Runs `rnd` after a start time (so that several processes start together) and records each cell
#: attempt as a file under ATTEMPTS, to tell a cell computed twice from one computed once.
LAUNCH = """
import os, sys, time, uuid
from pathlib import Path
import rnd.evaluation.runners.inprocess as runner
start, attempts = float(sys.argv[1]), sys.argv[2]
original = runner.execute_cell
def counted(cell, progress=False):
    if attempts:
        Path(attempts, cell.key[:16] + "-" + uuid.uuid4().hex).touch()
    return original(cell, progress)
runner.execute_cell = counted
time.sleep(max(0.0, start - time.time()))
from rnd.cli import main
sys.argv = ["rnd", *sys.argv[3:]]
main()
"""


def launch(config: Path, db: Path, *, start: float = 0.0, attempts: Path | None = None) -> subprocess.Popen:
    args = ["--threads", "1", "sweep", str(config), "--db", str(db), "--no-progress"]
    return subprocess.Popen(
        [sys.executable, "-c", LAUNCH, str(start), str(attempts or ""), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def complete_cells_only(db: Path) -> None:
    """What a killed sweep leaves: every finished cell whole (rows + summary), nothing of others."""
    if not check_database(db):  # absent or empty; rolls back a hot journal like any rnd command
        return
    mid = snapshot(db)
    assert mid["duplicates"] == 0
    done = {k for k, _, s in mid["cells"] if s == "done"}
    assert {r[0] for r in mid["rows"]} == done == {s[0] for s in mid["summaries"]}


@pytest.fixture(scope="module")
def slow_reference(folder, tmp_path_factory) -> dict:
    """`slow.toml` run once, uninterrupted, by the CLI in its own process (and how long it took,
    under "_seconds", so that kills can be timed inside a run on any machine)."""
    db = tmp_path_factory.mktemp("ref") / "reference.sqlite"
    t0 = time.monotonic()
    proc = launch(folder / "slow.toml", db)
    _, err = proc.communicate(timeout=300)
    seconds = time.monotonic() - t0
    assert proc.returncode == 0, err
    content = comparable_content(db)
    assert len(content["cells"]) == 6 and len(content["image_results"]) == 24
    return {**content, "_seconds": seconds}


def same_results(db: Path, reference: dict) -> bool:
    return comparable_content(db) == {k: v for k, v in reference.items() if k != "_seconds"}


def wait_for_file(path: Path, proc: subprocess.Popen, timeout: float = 60) -> bool:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            return False
        time.sleep(0.0002)
    return True


def kill_and_resume(config: Path, db: Path, rng: random.Random, *, kills: int, span: float) -> int:
    """Start the sweep `kills` times and SIGKILL it: the first time within 0-30 ms of the database
    file appearing, later at a random moment within `span` seconds (a late one may find the run
    already finished: fewer cells are left each time); then run it to the end. Returns kills made."""
    made = 0
    for i in range(kills):
        proc = launch(config, db)
        if i == 0:
            if wait_for_file(db, proc):
                time.sleep(rng.uniform(0, 0.03))
        else:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=rng.uniform(0.5, span))
        if proc.poll() is None:
            proc.kill()
            made += 1
        _, err = proc.communicate(timeout=60)
        assert proc.returncode in (0, -signal.SIGKILL), err
        complete_cells_only(db)
    final = launch(config, db)
    _, err = final.communicate(timeout=300)
    assert final.returncode == 0, err
    return made


def test_sigkill_at_random_moments_resumes_to_the_same_database(folder, slow_reference, tmp_path):
    rng = random.Random(1234)
    made = 0
    # one trial in the default suite (the suite's time); test_kill_and_restart_equals_uninterrupted
    # kills at fixed points besides
    db = tmp_path / "killed.sqlite"
    made += kill_and_resume(folder / "slow.toml", db, rng, kills=3, span=slow_reference["_seconds"])
    assert same_results(db, slow_reference)
    assert made >= 1  # at least the kill during creation (the others are random)


@pytest.mark.slow
def test_sigkill_many_times(folder, slow_reference, tmp_path):
    rng = random.Random(99)
    for trial in range(12):
        db = tmp_path / f"killed{trial}.sqlite"
        kill_and_resume(
            folder / "slow.toml", db, rng, kills=rng.randint(1, 6), span=slow_reference["_seconds"]
        )
        assert same_results(db, slow_reference)


# slow (about 11 s for 2): tests/evaluation/test_store.py creates one database from 2 processes at once
@pytest.mark.slow
@pytest.mark.parametrize("processes", [2, 4])
def test_concurrent_sweeps_share_one_new_database(folder, slow_reference, tmp_path, processes):
    db = tmp_path / "shared.sqlite"
    attempts = tmp_path / "attempts"
    attempts.mkdir()
    start = time.time() + 4 + 2 * processes  # after every interpreter has imported rnd and torch
    procs = [launch(folder / "slow.toml", db, start=start, attempts=attempts) for _ in range(processes)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0] * processes, [e for _, e in outs]
    assert same_results(db, slow_reference)
    # each cell computed exactly once, by one of them; every process saw the whole sweep done
    assert sorted(f.name[:16] for f in attempts.iterdir()) == sorted(
        k[:16] for k, *_ in slow_reference["cells"]
    )
    ran = sum(int(out.split(" run now")[0].rsplit(" ", 1)[1]) for out, _ in outs)
    assert ran == 6, [o for o, _ in outs]


def one_line_error(result, *words: str) -> None:
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert text.startswith("error: ") and "\n" not in text and "Traceback" not in text, text
    for w in words:
        assert w in text, text


def tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): digest(p) if p.is_file() else "dir" for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize(
    ("damage", "problem"),
    [
        ("DROP TABLE image_results", "table image_results missing"),
        ("ALTER TABLE cell_summaries DROP COLUMN finished_at", "finished_at of cell_summaries missing"),
        ("corrupt", "damaged SQLite database"),
    ],
)
def test_damaged_database_is_refused_by_sweep_and_report(folder, tmp_path, damage, problem):
    db = tmp_path / "r.sqlite"
    run_sweep(
        plan_sweep(load_config(folder / "sweep.toml")), db, runner=InProcessRunner(threads=1), progress=False
    )
    if damage == "corrupt":
        data = bytearray(db.read_bytes())
        at = (len(data) // 4096 - 2) * 4096
        data[at + 8 : at + 4096] = b"\xa5" * (4096 - 8)
        db.write_bytes(bytes(data))
    else:
        con = sqlite3.connect(db)
        con.execute(damage)
        con.commit()
        con.close()
    before = tree(tmp_path)
    sweep = invoke("sweep", str(folder / "sweep.toml"), "--db", str(db), "--no-progress")
    one_line_error(sweep, problem, "restore a copy or use another --db")
    one_line_error(invoke("report", str(db), "--out", str(tmp_path / "rep")), problem)
    assert tree(tmp_path) == before


def test_db_below_a_regular_file(folder, tmp_path):
    (tmp_path / "results").write_text("a file, not a folder")
    before = tree(tmp_path)
    result = invoke("sweep", str(folder / "sweep.toml"), "--db", str(tmp_path / "results" / "r.sqlite"))
    one_line_error(result, "is a file, not a folder")
    assert tree(tmp_path) == before


@pytest.fixture
def public_dir(folder):
    """A world-readable copy of the config and checkpoint, for runs as an unprivileged user."""
    d = Path(tempfile.mkdtemp(prefix="rnd-ro-"))
    os.chmod(d, 0o755)
    for name in ("tiny.safetensors", "tiny.json", "sweep.toml"):
        shutil.copy(folder / name, d / name)
        os.chmod(d / name, 0o644)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("what", ["folder", "file"])
def test_read_only_results_are_refused_untouched(public_dir, what):
    config = public_dir / "sweep.toml"
    config.write_text(
        config.read_text().replace('checkpoint = "tiny"', f'checkpoint = "{public_dir / "tiny"}"')
    )
    db = public_dir / "r.sqlite"
    if what == "file":
        run_sweep(
            plan_sweep(load_config(config), quick=True), db, runner=InProcessRunner(threads=1), progress=False
        )
        os.chmod(db, 0o444)
    else:
        os.chmod(public_dir, 0o555)
    before = tree(public_dir)
    try:
        proc = unprivileged(["--threads", "1", "sweep", str(config), "--db", str(db), "--no-progress"])
    finally:
        os.chmod(public_dir, 0o755)
    text = proc.stderr.strip()
    assert proc.returncode == 2 and text.startswith("error: ") and "\n" not in text, proc.stderr
    assert ("not writable" if what == "folder" else "read-only") in text, text
    assert tree(public_dir) == before
