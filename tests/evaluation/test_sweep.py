"""Grid expansion, stable cell keys, and `execute_cell`: deterministic, picklable, the same numbers
as `evaluate_attack`, and a sweep that resumes and reruns as a no-op."""

from __future__ import annotations

import json
import pickle
from dataclasses import astuple, replace

import pytest
import torch

from rnd import Oracle, RandomNoiseDefense
from rnd.attacks import make_attack
from rnd.evaluation.cells import Cell, derive_seed
from rnd.evaluation.config import parse_config
from rnd.evaluation.drive import plan_sweep, run_sweep
from rnd.evaluation.execute import execute_cell
from rnd.evaluation.grid import expand
from rnd.evaluation.runners import InProcessRunner, make_runner, torch_threads
from rnd.evaluation.store import ResultsStore
from rnd.evaluation.targets import WORKSPACE
from rnd.models import save_checkpoint
from rnd.models.checkpoint import sha256_file

CONFIG = """
name = "t"
budget = 150
[data]
images = 4
accuracy_images = 200
[defense]
nu = [0.0, 0.05]
[[models]]
label = "tiny"
checkpoint = "{ckpt}"
[[attacks]]
name = "square"
norm = "linf"
eps = 0.1
mu = [0.05, 0.2]
"""


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as the sweep workers use (and the same numbers in every process)."""
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def ckpt(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("sweep") / "tiny"
    save_checkpoint(tiny_model, path, dataset="fashion-mnist")
    return path


@pytest.fixture(scope="module")
def plan(ckpt):
    return plan_sweep(parse_config(CONFIG.format(ckpt=ckpt)))


def test_expand_grid(plan, ckpt):
    cells = plan.cells
    assert len(cells) == 4  # 2 nu x 2 mu
    assert {(c.nu, c.mu) for c in cells} == {(0.0, 0.05), (0.0, 0.2), (0.05, 0.05), (0.05, 0.2)}
    assert all(c.checkpoint_sha256 == sha256_file(f"{ckpt}.safetensors") for c in cells)
    assert [c.key for c in expand(plan.config)] == [c.key for c in cells]  # stable order and keys


def test_cell_key_is_stable_and_local_paths_do_not_count(plan):
    c = plan.cells[0]
    assert len(c.key) == 64 and c.key == Cell.from_dict(json.loads(json.dumps(c.to_dict()))).key
    assert replace(c, checkpoint="/elsewhere/tiny").key == c.key
    assert replace(c, defense="rnd:nu=0.01").key != c.key and replace(c, seed=1).key != c.key
    assert pickle.loads(pickle.dumps(c)) == c


def test_derived_seeds_differ():
    assert derive_seed(0, "defense") != derive_seed(0, "accuracy") != 0
    assert derive_seed(0, "defense") == derive_seed(0, "defense") < 2**63


def test_execute_cell_is_deterministic_and_its_rows_are_recomputed_by_hand(plan, tiny_model, fmnist_test):
    """The rows against an independent re-run: the attack through a defense seeded as documented,
    then the two re-checks computed here (clean model; majority of 11 answers replayed from the same
    defense), not by the shared `attack_and_recheck`."""
    cell = next(c for c in plan.cells if c.nu > 0 and c.mu == 0.2)
    a, b = execute_cell(cell), execute_cell(cell)
    assert a.rows == b.rows and a.summary == b.summary and a.key == cell.key
    idx = WORKSPACE.select_images(cell)
    assert [r.index for r in a.rows] == idx.tolist()
    x, y = fmnist_test.get(idx)
    assert bool((tiny_model(x).argmax(1) == y).all())  # only correctly classified images are attacked
    defense = RandomNoiseDefense(tiny_model, nu=cell.nu, seed=derive_seed(cell.seed, "defense"))
    attack = make_attack("square", eps=0.1, norm="linf", mu=cell.mu, seed=cell.seed)
    res = attack(Oracle(defense, budget=cell.budget), x, y)
    with torch.no_grad():
        clean = tiny_model(res.x_adv).argmax(1) != y
        fooled = torch.stack([tiny_model(defense.perturb(res.x_adv)).argmax(1) != y for _ in range(11)])
    vote = fooled.sum(0) > 5
    assert [r.success for r in a.rows] == res.success.tolist()
    assert [r.queries for r in a.rows] == res.queries.tolist()
    assert [r.success_clean for r in a.rows] == (res.success & clean).tolist()
    assert [r.success_vote for r in a.rows] == (res.success & vote).tolist()
    s = a.summary
    fail = lambda ok: 100.0 * float((~ok).sum()) / len(y)  # noqa: E731
    assert (s.failure_rate, s.failure_rate_clean, s.failure_rate_vote) == (
        fail(res.success),
        fail(res.success & clean),
        fail(res.success & vote),
    )
    assert all(r.queries <= cell.budget for r in a.rows)
    # informative: some x_adv sits where the fresh noisy answers disagree with each other
    assert bool(((fooled.sum(0) > 0) & (fooled.sum(0) < 11)).any())
    # the resubmission counts: the vote's 11 answers, then 89 more from the same defense, then the
    # PNG and JPEG votes (every point of Square lies in the ball, so every count stands)
    with torch.no_grad():
        more = torch.stack([tiny_model(defense.perturb(res.x_adv)).argmax(1) != y for _ in range(89)])
    assert [r.wrong_answers for r in a.rows] == (fooled.sum(0) + more.sum(0)).tolist()
    assert {r.answer_draws for r in a.rows} == {100}
    assert all(r.success_png is not None and r.success_jpeg is not None for r in a.rows)


def test_a_final_point_outside_the_ball_is_never_counted_as_resubmitted(plan):
    """HopSkipJump with a budget too small to get within a tight eps returns boundary points
    outside the ball: their wrong answers do not count (an attacker may not submit them), while the
    points inside keep theirs."""
    cell = next(c for c in plan.cells if c.nu > 0 and c.mu == 0.2)
    label = replace(cell, attack="hsja", norm="l2", eps=0.5, mu=None, budget=60)
    rows = execute_cell(label).rows
    outside = [r for r in rows if r.distance is not None and r.distance > 0.5 * (1 + 1e-5)]
    assert outside and all(r.wrong_answers == 0 for r in outside)
    assert all(r.wrong_answers is not None and r.answer_draws == 100 for r in rows)


def test_undefended_cell_three_ways_agree(plan):
    cell = next(c for c in plan.cells if c.nu == 0)
    s = execute_cell(cell).summary
    assert s.failure_rate == s.failure_rate_clean == s.failure_rate_vote
    assert s.clean_accuracy == s.model_accuracy > 50


def dump(db):
    with ResultsStore(db, readonly=True) as store:
        summaries = sorted(
            (
                r.key,
                r.summary.failure_rate,
                r.summary.failure_rate_vote,
                r.summary.failure_rate_clean,
                r.summary.mean_queries,
                r.summary.clean_accuracy,
                r.indices,
            )
            for r in store.records()
        )
        rows = sorted((r.key, *astuple(row)) for r in store.records(rows=True) for row in r.rows or ())
        return summaries, rows, store.status_counts()


def test_resume_and_rerun(plan, tmp_path):
    runner = InProcessRunner(threads=1)
    full = tmp_path / "full.sqlite"
    first = run_sweep(plan, full, runner=runner, progress=False)
    assert (first.cells, first.skipped, first.ran, first.failed) == (4, 0, 4, [])
    again = run_sweep(plan, full, runner=runner, progress=False)
    assert (again.skipped, again.ran) == (4, 0)  # a finished sweep is a no-op
    part = tmp_path / "part.sqlite"
    run_sweep(replace(plan, cells=plan.cells[:2]), part, runner=runner, progress=False)
    resumed = run_sweep(plan, part, runner=runner, progress=False)
    assert (resumed.skipped, resumed.ran) == (2, 2)
    assert dump(part) == dump(full)
    assert dump(full)[2] == {"done": 4}
    assert len(dump(full)[1]) == 16  # 4 cells x 4 images, no duplicates


def test_failing_cell_is_recorded_and_retried(plan, tmp_path):
    bad = replace(plan.cells[0], start=9995, images=50)  # more correctly classified images than exist
    db = tmp_path / "f.sqlite"
    out = run_sweep(replace(plan, cells=[bad, plan.cells[1]]), db, progress=False)
    assert out.ran == 1 and len(out.failed) == 1 and "lower data.images" in out.failed[0][1]
    with ResultsStore(db, readonly=True) as store:
        assert store.status_counts() == {"done": 1, "failed": 1}
    # a rerun skips the finished cell and runs the failed one again (it fails again, recorded once)
    again = run_sweep(replace(plan, cells=[bad, plan.cells[1]]), db, progress=False)
    assert (again.skipped, again.ran) == (1, 0)
    assert len(again.failed) == 1 and again.failed[0][1] == out.failed[0][1]
    with ResultsStore(db, readonly=True) as store:
        assert store.status_counts() == {"done": 1, "failed": 1}


def test_unknown_runner_and_missing_ray():
    from rnd.errors import InputError, UnknownNameError

    with pytest.raises(UnknownNameError, match="runner"):
        make_runner("dask")
    try:
        import rnd.evaluation.runners.ray  # noqa: F401
    except ModuleNotFoundError:
        with pytest.raises(InputError, match="the ray extra"):
            make_runner("ray")


def test_the_attacker_is_told_the_cells_defense(plan):
    """execute_cell passes the defense's public parameters to the attack (assume=): an adaptive
    attacker scales its probe with the cell's nu; told nothing about an undefended cell."""
    rnd_cell = next(c for c in plan.cells if c.nu > 0 and c.mu == 0.05)
    adaptive = replace(rnd_cell, params='{"mu_nu_ratio":2.0}', images=1, budget=5)
    got = execute_cell(adaptive).attack_params
    assert got["assume"] == {"nu": 0.05, "clip": [0.0, 1.0]}
    assert got["mu_used"] == pytest.approx(max(0.05, 2.0 * 0.05))
    plain = replace(adaptive, defense="none")
    assert (
        execute_cell(plain).attack_params["assume"] == {}
        and execute_cell(plain).attack_params["mu_used"] == 0.05
    )


class RecordingBar:
    """Stands in for tqdm in the runner: records the total, every update and the descriptions."""

    made: list[RecordingBar] = []

    def __init__(self, total=None, initial=0, desc="", **_):
        self.total, self.n, self.updates, self.descs = total, initial, [], [desc]
        RecordingBar.made.append(self)

    def update(self, k=1):
        self.updates.append(k)
        self.n += k

    def set_description_str(self, s):
        self.descs.append(s)

    def set_postfix_str(self, s):
        pass

    def refresh(self):
        pass

    def close(self):
        pass


def test_progress_counts_queries_against_the_pending_cells_budgets(plan, tmp_path, monkeypatch):
    """The sweep bar's unit is queries: its total is images x budget over the cells not yet done,
    it moves while a cell runs (the attack reports each step), and it ends exactly at its total."""
    import rnd.evaluation.drive as runner_mod

    monkeypatch.setattr(runner_mod, "tqdm", RecordingBar)
    db = tmp_path / "p.sqlite"
    run_sweep(replace(plan, cells=plan.cells[:1]), db, runner=InProcessRunner(threads=1), progress=True)
    RecordingBar.made.clear()
    out = run_sweep(plan, db, runner=InProcessRunner(threads=1), progress=True)
    assert (out.skipped, out.ran) == (1, 3)
    (bar,) = RecordingBar.made
    assert bar.total == 3 * 4 * 150  # three pending cells of 4 images, 150 queries each
    assert bar.n == bar.total and all(k >= 0 for k in bar.updates)
    assert len(bar.updates) > 3 * 2  # live reports within cells, not one jump per cell
    assert bar.descs[0] == "cells 1/4" and bar.descs[-1] == "cells 4/4"


def test_progress_ends_at_its_total_with_a_failed_and_a_duplicated_cell(plan, tmp_path, monkeypatch):
    """A cell that fails and a cell another process recorded first both count as worked off: the
    bar still ends at its total; its cell count says what is done (the failed cell is not)."""
    import rnd.evaluation.drive as runner_mod
    from rnd.evaluation.cells import cell_work

    monkeypatch.setattr(runner_mod, "tqdm", RecordingBar)
    RecordingBar.made.clear()
    bad = replace(plan.cells[0], start=9995, images=50)  # fails: more images than exist
    raced = plan.cells[1]
    db = tmp_path / "d.sqlite"

    class Racing(InProcessRunner):
        def run(self, cells, on_result, on_error):
            def recorded_elsewhere_first(result):
                if result.key == raced.key:  # another process records the same cell just before
                    with ResultsStore(db) as other:
                        assert other.record(result)
                on_result(result)

            super().run(cells, recorded_elsewhere_first, on_error)

    cells = [bad, raced, plan.cells[2]]
    out = run_sweep(replace(plan, cells=cells), db, runner=Racing(threads=1), progress=True)
    assert (out.ran, len(out.failed), out.by_others) == (1, 1, 1)
    (bar,) = RecordingBar.made
    assert bar.total == sum(cell_work(c) for c in cells) == 50 * 150 + 2 * 4 * 150
    assert bar.n == bar.total and all(k >= 0 for k in bar.updates)
    assert bar.descs[-1] == "cells 2/3"
