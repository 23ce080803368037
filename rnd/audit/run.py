"""Running an audit: the planned cells through the pipeline (`run_sweep`: resumable, a killed
audit resumes), then the mu x strength grid of the strongest score attack, then the report.

May import: rnd.audit.plan, verdict; rnd.evaluation.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rnd.audit.plan import MU_FACTORS, NU_FACTORS, AuditPlan, grid_config, grid_strength
from rnd.audit.suite import AuditSize, families
from rnd.audit.verdict import build_report, strongest_score_attack
from rnd.defenses import build_defense
from rnd.errors import InputError
from rnd.evaluation.cells import CellRecord, cell_work
from rnd.evaluation.drive import plan_sweep, run_sweep
from rnd.evaluation.grid import expand
from rnd.evaluation.store import ResultsStore, check_database
from rnd.evaluation.targets import WORKSPACE
from rnd.oracle import Oracle


def run_audit(plan: AuditPlan, db: str | Path, progress: bool = True, runner: Any = None) -> dict[str, Any]:
    """Run (or resume) the audit's cells in `db`, then the mu x strength grid of the strongest
    score attack (defenses with a strength: RND, feature noise, low-confidence); returns the
    report (see `write_json`; schema in docs/reference/audit-report.md). `runner`: where
    cells run (`rnd.evaluation.runners`; default in-process)."""
    if plan.calibration is not None and plan.calibration_request is not None:
        measured = {k: v for k, v in plan.calibration.items() if k != "key"}
        with ResultsStore(db) as store:  # kept first: a resumed audit reuses it (`plan_audit`)
            store.record_calibration(plan.calibration["key"], plan.calibration_request, measured)
    if plan.preflight_request is not None and plan.preflight is not None:
        found = {k: v for k, v in plan.preflight.items() if k not in ("key", "traits")}
        with ResultsStore(db) as store:  # an endpoint's fingerprint: a resumed audit plans the same cells
            store.record_calibration(plan.preflight["key"], plan.preflight_request, found)
    outcomes = [run_sweep(plan.sweep, db, runner=runner, progress=progress)]
    grid, strongest = _grid_plan(plan, db)
    if grid is not None:
        outcomes.append(run_sweep(grid, db, runner=runner, progress=progress))
    failed = [f for o in outcomes for f in o.failed]
    if failed:
        raise InputError(
            f"{len(failed)} audit cell(s) failed, e.g. {failed[0][0]}: {failed[0][1]}; "
            "rerun the same command to retry them (finished cells are kept)"
        )
    return build_report(plan, db, grid, strongest)


def current_report(plan: AuditPlan, db: str | Path) -> dict[str, Any]:
    """The report of what the store holds now, running nothing and writing nothing: for an audit
    still running or stopped, the cells done so far (`progress` says how many; `complete` is
    false until every cell and the grid are done). A worst case over the attacks run so far can
    only fall as more attacks finish, so a partial headline is an upper bound of the final one.
    The grid is that of the strongest score attack so far (it may change until the suite is done).
    Of a finished audit it is the report the run wrote."""
    if not check_database(db):
        raise InputError(f"{db} holds no audit results yet; run the audit first (drop --report-only)")
    return build_report(plan, db, *_grid_plan(plan, db))


def _grid_plan(plan: AuditPlan, db: str | Path) -> tuple[Any, dict[str, Any] | None]:
    """(the SweepPlan of the mu x strength grid, or None; the strongest plain score attack against
    the defense among the suite's cells done in `db`, or None)."""
    keys = {c.key for c in plan.sweep.cells}
    with ResultsStore(db, readonly=True) as store:
        results = store.records(keys=keys)
    strongest = strongest_score_attack(results, plan.defense)
    if strongest is None or grid_strength(plan.defense) is None:
        return None, strongest
    size = AuditSize(**plan.request["size"])
    return plan_sweep(grid_config(plan.config, strongest, plan.defense, size, plan.config.source)), strongest


@dataclass(frozen=True)
class AuditEstimate:
    """How much an audit has left, at most: each pending cell's images x budget (attacks that fool
    an image stop early, so the work done is less), and this machine's query rate through the
    defense at the attacks' batch, measured (None behind an endpoint: measuring would spend its
    quota)."""

    cells: int
    done: int
    grid_cells: int
    queries: int
    batch: int
    queries_per_second: float | None

    @property
    def seconds(self) -> float | None:
        return None if not self.queries_per_second else self.queries / self.queries_per_second


def estimate_audit(plan: AuditPlan, db: str | Path, seconds: float = 2.0) -> AuditEstimate:
    """The audit's work left in `db` (read only; a missing file is an empty store), counting the
    mu x strength grid as pending, and the query rate of `seconds` of forwards through an `Oracle`
    over the defense at the batch the attacks use (all of a cell's images at once)."""
    cells = plan.sweep.cells
    keys = {c.key for c in cells}
    done_keys: set[str] = set()
    results: list[CellRecord] = []
    if Path(db).exists():
        with ResultsStore(db, readonly=True) as store:
            done_keys = store.done_keys()
            results = store.records(keys=keys)
    done = keys & done_keys
    size = AuditSize(**plan.request["size"])
    grid = 0
    grid_left = 0
    if grid_strength(plan.defense) is not None and "scores" in families(plan.request["threat"]):
        grid = len(MU_FACTORS) * len({"none" if f == 0 else f for f in NU_FACTORS})
        grid_left = grid * size.grid_images * size.budget  # its attack is chosen once the suite is done
        strongest = strongest_score_attack(results, plan.defense) if len(done) == len(cells) else None
        if strongest is not None:
            gcells = expand(grid_config(plan.config, strongest, plan.defense, size, plan.config.source))
            grid, grid_left = len(gcells), sum(cell_work(c) for c in gcells if c.key not in done_keys)
    queries = sum(cell_work(c) for c in cells if c.key not in done) + grid_left
    batch = size.images
    rate = None
    if plan.defense != "remote":
        model = WORKSPACE.model(cells[0])
        oracle = Oracle(build_defense(plan.defense, model, seed=0))
        device = next((t.device for t in model.parameters()), torch.device("cpu"))
        x = torch.rand(batch, *oracle.input_shape, device=device)
        ids = oracle.new_ids(batch)
        oracle.query(x, ids)  # warm-up
        n, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < seconds or n == 0:
            oracle.query(x, ids)
            n += batch
        rate = n / elapsed
    return AuditEstimate(len(cells), len(done), grid, queries, batch, rate)
