"""The Ray runner: same database as the in-process runner for the same seeds, errors reported per
cell while the others finish, transient errors and crashed workers retried, rnd's errors not.

Runs on a real local Ray (2 logical CPUs), started once for the module; the runner starting and
stopping its own Ray (two more Ray starts) is under the slow mark.
"""

from __future__ import annotations

import math
import os
import socket
import sys
import uuid
from dataclasses import asdict, astuple, replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from rnd.cli import main
from rnd.errors import InputError
from rnd.evaluation.cells import Cell, CellResult
from rnd.evaluation.config import parse_config
from rnd.evaluation.drive import SweepPlan, plan_sweep, run_sweep
from rnd.evaluation.execute import execute_cell
from rnd.evaluation.runners import InProcessRunner, make_runner
from rnd.evaluation.store import ResultsStore
from rnd.models import save_checkpoint

try:
    import ray
except ModuleNotFoundError:
    # CI installs Ray (scripts/install.sh dev) and must test the runner: never skip there
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail("Ray is not installed, but CI must test the Ray runner: run scripts/install.sh dev")
    pytest.skip(
        "Ray is not installed (the ray extra, or scripts/install.sh dev): Ray runner not tested",
        allow_module_level=True,
    )

from rnd.evaluation.runners.ray import RayRunner

CONFIG = """name = "ray-test"
seeds = [3]
budget = 60
[data]
images = 3
accuracy_images = 100
[defense]
nu = [0.0, 0.02]
[[models]]
label = "tiny"
checkpoint = "{ckpt}"
[[attacks]]
name = "square"
norm = "linf"
eps = 0.1
[[attacks]]
name = "nes"
norm = "linf"
eps = 0.1
[attacks.params]
q = 5
"""


@pytest.fixture(scope="module")
def config_path(tiny_model, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ray")
    save_checkpoint(tiny_model, d / "tiny", dataset="fashion-mnist")
    path = d / "sweep.toml"
    path.write_text(CONFIG.format(ckpt=d / "tiny"))
    return path


@pytest.fixture(scope="module")
def plan(config_path) -> SweepPlan:
    p = plan_sweep(parse_config(config_path.read_text(), path=str(config_path)))
    assert len(p.cells) == 4
    return p


@pytest.fixture(scope="module")
def reference(plan, tmp_path_factory) -> dict[str, Any]:
    """The in-process runner's database (1 torch thread, as in a Ray worker)."""
    db = tmp_path_factory.mktemp("ref") / "inprocess.sqlite"
    outcome = run_sweep(plan, db, runner=InProcessRunner(threads=1), progress=False)
    assert outcome.ran == 4 and not outcome.failed
    return snapshot(db)


@pytest.fixture(scope="module")
def ray_session(reference):
    """One local Ray for the tests below (started after the CLI test's own Ray is gone)."""
    assert not ray.is_initialized()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=128 * 1024**2)
    yield
    ray.shutdown()


def _clean(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def snapshot(db: Path) -> dict[str, Any]:
    """Everything a sweep measured: cells with their summaries and status, and per-image rows.
    Leaves out only wall times and timestamps."""
    with ResultsStore(db, readonly=True) as store:
        cells = {
            r.key: {k: _clean(v) for k, v in asdict(replace(r, seconds=0.0)).items()}
            | {"summary": {k: _clean(v) for k, v in asdict(r.summary).items()}}
            for r in store.records(rows=True)
        }
        records = sorted(store.records(rows=True), key=lambda r: r.key)
        rows = [(r.key, *astuple(row)) for r in records for row in r.rows or ()]
        return {"status": store.status_counts(), "cells": cells, "rows": rows}


def attempt_counter(root: Path, fail_first: dict[str, str] | None = None):
    """`execute_cell` that leaves a file per attempt under root/<cell key>/, and on a cell's first
    attempt raises OSError ("oserror") or kills its worker process ("crash") when asked."""
    fail_first = fail_first or {}

    def execute(cell: Cell) -> CellResult:
        d = root / cell.key
        d.mkdir(parents=True, exist_ok=True)
        first = not any(d.iterdir())
        (d / uuid.uuid4().hex).touch()
        how = fail_first.get(cell.key)
        if first and how == "oserror":
            raise OSError("transient: the shared file system hiccuped")
        if first and how == "crash":
            os._exit(3)
        return execute_cell(cell)

    return execute


def attempts(root: Path, cell: Cell) -> int:
    return len(list((root / cell.key).iterdir()))


@pytest.mark.slow
def test_runner_starts_and_stops_its_own_ray(config_path, plan, reference, tmp_path):
    """Ray not running: the runner starts a local Ray and shuts it down (two Ray starts: slow)."""
    assert not ray.is_initialized()
    outcome = run_sweep(plan, tmp_path / "run.sqlite", runner=RayRunner(workers=2), progress=False)
    assert (outcome.ran, outcome.failed) == (4, [])
    assert not ray.is_initialized()
    assert snapshot(tmp_path / "run.sqlite") == reference
    db = tmp_path / "cli.sqlite"  # the CLI runs the runner as a context manager
    args = ["sweep", str(config_path), "--db", str(db), "--runner", "ray", "--workers", "2", "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert not ray.is_initialized()
    assert snapshot(db) == reference
    runner = RayRunner(workers=2)
    with runner:  # a finished sweep: nothing to run, so Ray is not even started
        again = run_sweep(plan, db, runner=runner, progress=False)
        assert (again.skipped, again.ran) == (4, 0) and not ray.is_initialized()


def test_cli_rejects_ray_options_for_inprocess(config_path, tmp_path):
    result = CliRunner().invoke(
        main, ["sweep", str(config_path), "--db", str(tmp_path / "x.sqlite"), "--workers", "2"]
    )
    assert result.exit_code == 2 and "--runner ray" in result.output, result.output
    assert not (tmp_path / "x.sqlite").exists()


def test_unreachable_cluster_fails_fast_and_leaves_no_database(config_path, tmp_path):
    with socket.socket() as s:  # a local port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for address, message in (
        (f"127.0.0.1:{port}", "cannot reach the Ray cluster"),
        ("head", "expected HOST:PORT"),
    ):
        db = tmp_path / "never.sqlite"
        args = ["sweep", str(config_path), "--db", str(db), "--runner", "ray", "--ray-address", address]
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2 and message in result.output, result.output
        assert not db.exists() and not ray.is_initialized()


def test_cli_ray_runner_matches_inprocess(ray_session, config_path, reference, tmp_path):
    db = tmp_path / "ray.sqlite"
    args = ["sweep", str(config_path), "--db", str(db), "--runner", "ray", "--workers", "2", "--no-progress"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "4 cells, 0 already done, 4 run now, 0 failed" in result.output
    assert ray.is_initialized()  # Ray was already running: the runner leaves it running
    assert snapshot(db) == reference
    assert reference["status"] == {"done": 4} and len(reference["rows"]) == 4 * 3


def test_ray_runner_matches_inprocess(ray_session, plan, reference, tmp_path):
    runner = RayRunner(workers=2, execute=attempt_counter(tmp_path / "attempts"))
    outcome = run_sweep(plan, tmp_path / "ray.sqlite", runner=runner, progress=False)
    assert (outcome.ran, outcome.failed) == (4, [])
    assert ray.is_initialized()  # Ray was already running: the runner leaves it running
    assert snapshot(tmp_path / "ray.sqlite") == reference
    assert all(attempts(tmp_path / "attempts", c) == 1 for c in plan.cells)
    # a rerun of the finished sweep submits nothing
    again = run_sweep(plan, tmp_path / "ray.sqlite", runner=runner, progress=False)
    assert (again.skipped, again.ran) == (4, 0)
    assert all(attempts(tmp_path / "attempts", c) == 1 for c in plan.cells)


def test_failing_cell_is_reported_once_and_the_others_finish(ray_session, plan, reference, tmp_path):
    cells = list(plan.cells)
    bad = cells[1] = replace(cells[1], data_root=str(tmp_path / "no-such-data"))  # same key, no data
    root = tmp_path / "attempts"
    results: list[CellResult] = []
    errors: list[tuple[Cell, BaseException]] = []
    RayRunner(workers=2, retries=2, execute=attempt_counter(root)).run(
        cells, results.append, lambda cell, exc: errors.append((cell, exc))
    )
    assert [(c.key, type(e).__name__) for c, e in errors] == [(bad.key, "DataNotFoundError")]
    assert "not found under" in str(errors[0][1])
    assert attempts(root, bad) == 1  # rnd's own error: not retried, though it is an OSError
    assert sorted(r.key for r in results) == sorted(c.key for c in cells if c is not bad)

    # through the driver: the failure is recorded, the other cells stored exactly as in-process
    db = tmp_path / "partial.sqlite"
    outcome = run_sweep(replace(plan, cells=cells), db, runner=RayRunner(workers=2), progress=False)
    assert outcome.ran == 3 and len(outcome.failed) == 1 and "DataNotFoundError" in outcome.failed[0][1]
    got = snapshot(db)
    assert got["status"] == {"done": 3, "failed": 1}
    assert got["cells"] == {k: v for k, v in reference["cells"].items() if k != bad.key}
    assert got["rows"] == [r for r in reference["rows"] if r[0] != bad.key]


def test_transient_errors_and_crashed_workers_are_retried(ray_session, plan, reference, tmp_path):
    cells = plan.cells
    root = tmp_path / "attempts"
    execute = attempt_counter(root, {cells[0].key: "oserror", cells[2].key: "crash"})
    outcome = run_sweep(
        plan, tmp_path / "ray.sqlite", runner=RayRunner(workers=2, retries=1, execute=execute), progress=False
    )
    assert (outcome.ran, outcome.failed) == (4, [])
    assert snapshot(tmp_path / "ray.sqlite") == reference
    assert [attempts(root, c) for c in cells] == [2, 1, 2, 1]

    # without retries both are reported, with the cause
    root0 = tmp_path / "attempts0"
    execute = attempt_counter(root0, {cells[0].key: "oserror", cells[2].key: "crash"})
    errors: dict[str, BaseException] = {}
    RayRunner(workers=2, retries=0, execute=execute).run(
        cells, lambda r: None, lambda cell, exc: errors.__setitem__(cell.key, exc)
    )
    assert set(errors) == {cells[0].key, cells[2].key}
    assert isinstance(errors[cells[0].key], OSError) and "transient" in str(errors[cells[0].key])
    assert isinstance(errors[cells[2].key], ray.exceptions.RayError)  # the worker died


def test_bad_arguments_and_missing_ray(monkeypatch):
    for kwargs in ({"workers": 0}, {"threads_per_worker": 0}, {"retries": -1}):
        with pytest.raises(InputError):
            RayRunner(**kwargs)
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(InputError, match=r"pip install 'rnd-defense\[ray\]'"):
        make_runner("ray")


def test_an_audit_on_ray_writes_the_in_process_report(ray_session, config_path, tmp_path):
    """`run_audit(..., runner=RayRunner)`: the label-only suite's cells run on Ray, each once, and
    the report is the in-process run's (1 torch thread in both, as in a Ray worker)."""
    from rnd.audit.plan import AuditRequest, plan_audit
    from rnd.audit.run import run_audit
    from rnd.audit.suite import AuditSize
    from rnd.evaluation.runners import torch_threads

    req = AuditRequest(
        checkpoint=str(config_path.parent / "tiny"),
        url=None,
        defense="rnd:nu=0.02",
        threat="labels",
        size=AuditSize(images=2, budget=640, accuracy_images=200, grid_images=2),
    )
    with torch_threads(1):
        plan = plan_audit(req)
        local = run_audit(plan, tmp_path / "local.sqlite", progress=False, runner=InProcessRunner(threads=1))
    runner = RayRunner(workers=2, execute=attempt_counter(tmp_path / "attempts"))
    on_ray = run_audit(plan, tmp_path / "ray.sqlite", progress=False, runner=runner)
    assert all(attempts(tmp_path / "attempts", c) == 1 for c in plan.sweep.cells)
    assert {k: v for k, v in on_ray.items() if k != "db"} == {k: v for k, v in local.items() if k != "db"}
    assert on_ray["verdict"]["labels"]["attacks"] == 12


def test_rnd_audit_on_an_unreachable_cluster_fails_before_any_work(config_path, tmp_path):
    with socket.socket() as s:  # a local port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "never"
    args = [
        "audit",
        str(config_path.parent / "tiny"),
        "--runner",
        "ray",
        "--ray-address",
        f"127.0.0.1:{port}",
    ]
    result = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert result.exit_code == 2 and "cannot reach the Ray cluster" in result.output, result.output
    assert not out.exists()
