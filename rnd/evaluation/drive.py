"""Driving a sweep: plan it (`plan_sweep`: expand the spec into cells and check everything before
any database is opened), then `run_sweep`: open the store, register the cells, hand the pending
ones to a runner (`rnd.evaluation.runners`) one claim at a time, and record each result as it
comes back, with a progress bar counted in queries.

May import: every other module of the pipeline.
"""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from rnd.evaluation.cells import Cell, CellResult, cell_work
from rnd.evaluation.checks import check_plan
from rnd.evaluation.grid import expand
from rnd.evaluation.runners import InProcessRunner, Runner
from rnd.evaluation.spec import SweepConfig, quick_config
from rnd.evaluation.store import ResultsStore, check_cells
from rnd.progress import listening

log = logging.getLogger(__name__)


@dataclass
class SweepOutcome:
    """What one `run_sweep` call did."""

    db: str
    sweep_id: int
    cells: int
    skipped: int  # already done before this call
    ran: int
    failed: list[tuple[str, str]] = field(default_factory=list)  # (cell label, error)
    by_others: int = 0  # finished meanwhile by other processes sharing the database


@dataclass
class SweepPlan:
    """A validated sweep: config (quick rule applied when asked) and its cells."""

    config: SweepConfig
    cells: list[Cell]
    quick: bool


def plan_sweep(cfg: SweepConfig, *, quick: bool = False) -> SweepPlan:
    """Apply --quick, expand the grid and check every model and the data set; writes nothing."""
    if quick:
        cfg = quick_config(cfg)
    cells = expand(cfg)
    check_plan(cfg, cells)  # checkpoints load and fit the data, enough images: before any database
    return SweepPlan(cfg, cells, quick)


def run_sweep(
    plan: SweepPlan,
    db: str | Path,
    *,
    runner: Runner | None = None,
    progress: bool = True,
    poll_s: float = 0.5,
) -> SweepOutcome:
    """Run every cell of `plan` not yet done in `db`, storing each result as it arrives; returns
    when every cell is done or has failed here.

    The database is checked before anything is written (a file of another schema is refused,
    untouched); finished cells are skipped, so rerunning a finished sweep does nothing. Several
    sweeps may run on one database at once: each cell is claimed before it is computed, so they
    share the work, and a process waits for cells claimed by another live process (taking them
    over if that process dies). A cell that failed here is not retried in the same call.
    """
    check_cells(plan.cells)  # before ResultsStore creates the file
    runner = runner or InProcessRunner()
    keys = [c.key for c in plan.cells]
    by_key = {c.key: c for c in plan.cells}
    with ResultsStore(db) as store:
        sweep_id = store.register_sweep(
            plan.config.name, plan.config.source, plan.cells, quick=plan.quick, config_path=plan.config.path
        )
        done = store.done_keys() & set(keys)
        done_before = len(done)
        outcome = SweepOutcome(str(db), sweep_id, len(keys), done_before, 0)
        if done_before == len(keys):
            return outcome
        # the bar counts work, each cell's at most images x budget queries, so its time left is
        # an estimate from queries spent, not from a count of cells that differ a hundredfold in cost
        work = {k: cell_work(by_key[k]) for k in keys if k not in done}
        bar = tqdm(
            total=sum(work.values()),
            desc=f"cells {done_before}/{len(keys)}",
            unit="q",
            unit_scale=True,
            disable=not progress,
            dynamic_ncols=True,
        )
        attempted: set[str] = set()
        live = [0]  # queries reported by the running cell's attack (in-process runners only)

        def on_queries(n: int) -> None:
            bar.update(n)
            live[0] += n

        def finish(key: str) -> None:
            bar.update(max(0, work[key] - live[0]))  # what the cell did not spend is done all the same
            live[0] = 0
            bar.set_description_str(f"cells {len(keys) - len(store.unfinished(keys))}/{len(keys)}")

        def claims() -> Iterator[Cell]:
            while (key := store.claim_next(keys, skip=attempted)) is not None:
                attempted.add(key)
                live[0] = 0
                yield by_key[key]

        def on_result(result: CellResult) -> None:
            recorded = store.record(result)
            finish(result.key)
            if recorded:
                outcome.ran += 1
                s = result.summary
                bar.set_postfix_str(f"{result.cell.attack} {result.cell.defense} fail={s.failure_rate:.0f}%")

        def on_error(cell: Cell, exc: BaseException) -> None:
            msg = f"{type(exc).__name__}: {exc}"
            log.error("cell %s failed: %s", cell.label(), msg)
            log.debug("".join(traceback.format_exception(exc)))
            store.mark_failed(cell.key, msg)
            outcome.failed.append((cell.label(), msg))
            finish(cell.key)

        try:
            while True:
                with listening(on_queries):
                    runner.run(claims(), on_result, on_error)
                unfinished = store.unfinished(keys)
                if unfinished.keys() <= attempted:
                    break
                # the rest is claimed by other live processes (or freed since): wait, then try again
                bar.n = sum(w for k, w in work.items() if k not in unfinished)
                bar.set_description_str(f"cells {len(keys) - len(unfinished)}/{len(keys)}")
                bar.refresh()
                time.sleep(poll_s)
        finally:
            store.release_claims()
            bar.close()
        outcome.by_others = len(keys) - done_before - outcome.ran - len(store.unfinished(keys))
    return outcome
