"""The floor under every query attack's throughput ratio, and under the audit's time: what one query
step costs outside the model, where that time goes, and why, on one CPU thread.

    python bench/step_floor.py [--batch 100] [--steps 400] [--rounds 3] [--nu 0]
        [--audit bench/audit-full/audit.sqlite] [--json RECORD.json]

The trained default model (`RND_HOME` decides which), channels-last as every command loads it, on
the correctly classified test images with the largest clean margin (as bench/attack_throughput.py).
Each step forwards the whole batch once; inputs cycle through 16 precomputed candidates, so no loop
spends time drawing random numbers.

1. Steps. Medians over all steps of all rounds:
       raw     model(x) on a fresh input (the denominator of attack_throughput's ratio)
       bare    fresh input -> model -> softmax -> margin loss -> keep where lower, in plain torch:
               the least any score attack's step does, no bookkeeping
       oracle  the same through `Oracle.query` (pixel check, ids, budget, counts) and the score
               attacks' loss and accept (`ScoreAttack.evaluate`, `accept`)
   raw, bare and oracle run step-interleaved (one step of each in turn), so load changes hit all
   three alike. Plus `null`: a complete attack on the query-loop core (`QueryAttack.__call__`)
   whose step proposes the next candidate; its time outside the model is measured inside its own
   run (iteration time minus forward time, forward hooks). Ratio: the largest throughput ratio a
   one-forward-per-step attack reaches with that much machinery.
2. Where the null attack's iteration goes: the median time between consecutive marks at the entry
   and exit of the oracle's and the score base's methods (each mark adds about a microsecond).
3. Why it costs what it does: the same small pieces of a step timed hot (run again and again) and
   right after a model forward (whose activations push the interpreter's and torch's dispatch
   data out of the CPU caches), median of each.
4. With `--audit STORE`: the audit's forward-bound floor, the queries its cells spent (each
   image's count) divided by the raw forward rate behind RND at the store's calibrated nu, on one
   thread per cell, for 1 and 2 cells at once.
"""

from __future__ import annotations

import argparse
import collections
import itertools
import json
import sqlite3
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from rnd import Oracle, RandomNoiseDefense
from rnd.attacks.base import take
from rnd.attacks.score import ScoreAttack, ScoreState
from rnd.device import prefer_channels_last
from rnd.oracle.ledger import Ledger

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attack_throughput import hard_images, load_model  # bench/, beside this script
from provenance import provenance

DISTINCT = 16
clock = time.perf_counter


class NullSearch(ScoreAttack[ScoreState]):
    """A score attack whose step proposes the next precomputed candidate and keeps it where the
    loss drops: the query-loop core, the oracle and the score base with no search of its own."""

    name = "null-search"
    pool: list[torch.Tensor] = []

    def init(self, state: ScoreState) -> None:
        state.x = state.x0.clone()
        self.query_start(state)

    def step(self, state: ScoreState, rows: torch.Tensor) -> None:
        cand = take(self.pool[state.iteration % DISTINCT], rows)
        loss, adv = self.evaluate(state, cand, rows)
        self.accept(state, rows, cand, loss, adv, loss < take(state.loss, rows))


class Setup:
    """The model, images, candidates and the score-base machinery the loops share."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
        g = torch.Generator().manual_seed(0)
        self.model, self.y, n = model, y, y.shape[0]
        self.pool = [(x + 1e-2 * torch.randn(x.shape, generator=g)).clamp(0, 1) for _ in range(DISTINCT)]
        self.oracle = Oracle(model, budget=2**40)
        self.attack = NullSearch(eps=1.0, seed=0)
        self.attack.oracle = self.oracle
        self.state = ScoreState(self.pool[0].clone(), y, None, self.oracle.new_ids(n))
        self.state.x = self.pool[0].clone()
        self.rows = torch.arange(n)
        self.bare_x, self.bare_best = self.pool[0].clone(), torch.full((n,), float("inf"))

    @torch.inference_mode()
    def raw(self, cand: torch.Tensor) -> None:
        self.model(cand)

    @torch.inference_mode()
    def bare(self, cand: torch.Tensor) -> None:
        col = self.y[:, None]
        logp = self.model(cand).softmax(1).clamp_min(1e-30).log()
        loss = logp.gather(1, col).squeeze(1) - logp.scatter(1, col, -torch.inf).amax(1)
        better = loss < self.bare_best
        self.bare_x = torch.where(better.view(-1, 1, 1, 1), cand, self.bare_x)
        self.bare_best = torch.where(better, loss, self.bare_best)

    def through_oracle(self, cand: torch.Tensor) -> None:
        a, s = self.attack, self.state
        loss, adv = a.evaluate(s, cand, self.rows)
        a.accept(s, self.rows, cand, loss, adv, loss < s.loss)


def interleaved(setup: Setup, steps: int) -> dict[str, list[float]]:
    loops = {"raw": setup.raw, "bare": setup.bare, "oracle": setup.through_oracle}
    times: dict[str, list[float]] = {k: [] for k in loops}
    for i in range(steps):
        for j, (name, f) in enumerate(loops.items()):
            cand = setup.pool[(i + 5 * j) % DISTINCT]
            start = clock()
            f(cand)
            times[name].append(clock() - start)
    return times


def null_run(setup: Setup, steps: int) -> tuple[list[float], list[float]]:
    """(iteration times, forward time within each iteration) of one null attack run."""
    attack = NullSearch(eps=1.0, seed=0)
    attack.pool = setup.pool
    starts: list[float] = []
    inside, t0 = [0.0], [0.0]
    per_iter: list[float] = []
    step = attack.step

    def timed_step(state: ScoreState, rows: torch.Tensor) -> None:
        starts.append(clock())
        per_iter.append(inside[0])
        inside[0] = 0.0
        step(state, rows)

    attack.step = timed_step  # type: ignore[method-assign]
    hooks = (
        setup.model.register_forward_pre_hook(lambda *_: t0.__setitem__(0, clock())),
        setup.model.register_forward_hook(lambda *_: inside.__setitem__(0, inside[0] + clock() - t0[0])),
    )
    try:
        result = attack(Oracle(setup.model, budget=steps + 1), setup.pool[0], setup.y)
    finally:
        for h in hooks:
            h.remove()
    if bool(result.success.any()):  # a fooled image would leave the batch
        raise SystemExit("a candidate fooled the model; the null loop needs a full batch throughout")
    iters = [b - a for a, b in itertools.pairwise(starts)]
    return iters[1:], per_iter[2:]  # the first iteration warms up


def timeline(setup: Setup, steps: int) -> list[tuple[str, float]]:
    """Median time between consecutive marks in the null attack's iterations, largest first."""
    marks: list[tuple[str, float]] = []
    undo: list[tuple[type, str, Callable]] = []

    def wrap(cls: type, name: str, tag: str) -> None:
        f = getattr(cls, name)

        def marked(*a: object, **k: object) -> object:
            marks.append((tag + " in", clock()))
            out = f(*a, **k)
            marks.append((tag + " out", clock()))
            return out

        undo.append((cls, name, f))
        setattr(cls, name, marked)

    for cls, name, tag in (
        (Oracle, "query", "query"),
        (Oracle, "_check_queries", "pixel check"),
        (Ledger, "_ids_range", "ids"),
        (Ledger, "_cost", "budget"),
        (Oracle, "_answer", "answer"),
        (Oracle, "_forward", "forward"),
        (ScoreAttack, "loss_from_scores", "loss"),
        (ScoreAttack, "accept", "accept"),
        (NullSearch, "step", "step"),
        (ScoreAttack, "active", "active"),
    ):
        wrap(cls, name, tag)
    hooks = (
        setup.model.register_forward_pre_hook(lambda *_: marks.append(("model in", clock()))),
        setup.model.register_forward_hook(lambda *_: marks.append(("model out", clock()))),
    )
    try:
        attack = NullSearch(eps=1.0, seed=0)
        attack.pool = setup.pool
        attack(Oracle(setup.model, budget=steps + 1), setup.pool[0], setup.y)
    finally:
        for h in hooks:
            h.remove()
        for cls, name, f in undo:
            setattr(cls, name, f)
    gaps: dict[str, list[float]] = collections.defaultdict(list)
    for (a, ta), (b, tb) in itertools.pairwise(marks):
        gaps[f"{a} -> {b}"].append(tb - ta)
    typical = {k: v for k, v in gaps.items() if len(v) >= steps // 2}
    return sorted(((k, statistics.median(v)) for k, v in typical.items()), key=lambda kv: -kv[1])


def hot_and_cold(setup: Setup, reps: int) -> list[tuple[str, float, float]]:
    """(piece, median hot, median right after a forward) for small pieces of a step."""
    o, a, s, rows = setup.oracle, setup.attack, setup.state, setup.rows
    with torch.inference_mode():
        logits = setup.model(setup.pool[0])
    scores = logits.softmax(1)

    def budget() -> None:
        ids, lo, hi = o._ids_range(s.ids)
        o._cost(ids, lo, hi, 1)

    pieces: dict[str, Callable[[], object]] = {
        "an empty Python call": lambda: None,
        "one op: logits.isnan().any()": lambda: bool(logits.isnan().any()),
        "pixel check": lambda: o._check_queries(setup.pool[1]),
        "ids and budget": budget,
        "softmax": lambda: logits.softmax(1),
        "margin loss (ScoreAttack)": lambda: a.loss_from_scores(scores, s, rows),
        "loop's active rows": lambda: (a.active(s) & (o.remaining(s.ids) >= 1)).nonzero(),
    }
    times: dict[str, tuple[list[float], list[float]]] = {k: ([], []) for k in pieces}
    for i in range(reps):
        for name, f in pieces.items():
            for cold in (False, True):
                if cold:
                    setup.raw(setup.pool[i % DISTINCT])
                else:
                    f()  # the same piece just before: hot
                start = clock()
                f()
                times[name][cold].append(clock() - start)
    return [(k, statistics.median(h), statistics.median(c)) for k, (h, c) in times.items()]


def audit_floor(store: Path, model: nn.Module, pool: list[torch.Tensor], steps: int) -> dict:
    """The audit's queries over the raw forward rate behind RND at its calibrated nu."""
    con = sqlite3.connect(f"file:{store}?mode=ro", uri=True)
    queries = int(con.execute("SELECT SUM(queries) FROM image_results").fetchone()[0])
    wall = float(con.execute("SELECT SUM(wall_seconds) FROM cell_summaries").fetchone()[0])
    # the audited level: the nu of most defended cells (a few grid cells sit at other levels)
    nu = float(
        con.execute("SELECT nu FROM cells WHERE nu > 0 GROUP BY nu ORDER BY COUNT(*) DESC").fetchone()[0]
    )
    cells = int(con.execute("SELECT COUNT(*) FROM cell_summaries").fetchone()[0])
    defended = RandomNoiseDefense(model, nu=nu, seed=0)
    times = []
    with torch.inference_mode():
        for i in range(steps):
            start = clock()
            defended(pool[i % DISTINCT])
            times.append(clock() - start)
    rate = pool[0].shape[0] / statistics.median(times)
    return {
        "store": str(store),
        "cells": cells,
        "queries": queries,
        "cell_wall_hours": wall / 3600,
        "nu": nu,
        "raw_images_per_s": rate,
        "forward_hours_1_cell_at_once": queries / rate / 3600,
        "forward_hours_2_cells_at_once": queries / rate / 3600 / 2,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--nu", type=float, default=0.0, help="RND level in front of the model (0: none)")
    p.add_argument(
        "--audit", type=Path, default=None, help="an audit's results store: its forward-bound floor"
    )
    p.add_argument(
        "--json", default=None, help="also write the figures as a results record (with provenance)"
    )
    args = p.parse_args()
    torch.set_num_threads(1)
    base, origin, sha = load_model()
    x, y = hard_images(base, args.batch)
    prefer_channels_last(base, x.shape[1:])  # the layout every command's loader picks on the CPU
    model = RandomNoiseDefense(base, nu=args.nu, seed=0) if args.nu > 0 else base
    setup = Setup(model, x, y)
    steps: dict[str, list[float]] = collections.defaultdict(list)
    null_model: list[float] = []
    for _ in range(args.rounds):
        for k, v in interleaved(setup, args.steps).items():
            steps[k] += v
        it, inside = null_run(setup, args.steps)
        steps["null"] += it
        null_model += inside
    med = {k: statistics.median(v) for k, v in steps.items()}
    outside = {k: med[k] - med["raw"] for k in ("raw", "bare", "oracle")}
    outside["null"] = statistics.median(i - m for i, m in zip(steps["null"], null_model, strict=True))
    print(f"model: {origin}, channels-last; {args.batch} images, nu {args.nu:g}, one thread\n")
    print("1. Steps (median of {} per loop)".format(len(steps["raw"])))
    print(f"{'loop':<8}{'ms/step':>9}{'outside model (ms)':>20}{'ratio':>8}")
    rows = []
    for k in ("raw", "bare", "oracle", "null"):
        ratio = med["raw"] / (med["raw"] + outside[k])
        print(f"{k:<8}{1e3 * med[k]:>9.3f}{1e3 * outside[k]:>20.3f}{ratio:>8.3f}")
        rows.append(
            {"loop": k, "ms_per_step": 1e3 * med[k], "outside_model_ms": 1e3 * outside[k], "ratio": ratio}
        )
    gaps = timeline(setup, args.steps)
    print("\n2. Where the null attack's iteration goes (median us between marks; the forward itself last)")
    for k, v in gaps[:16]:
        print(f"  {1e6 * v:9.1f}  {k}")
    pieces = hot_and_cold(setup, max(args.steps // 2, 50))
    print("\n3. Small pieces of a step, hot and right after a forward (median us)")
    print(f"  {'piece':<32}{'hot':>8}{'after fwd':>11}{'x':>6}")
    for k, h, c in pieces:
        print(f"  {k:<32}{1e6 * h:>8.1f}{1e6 * c:>11.1f}{c / max(h, 1e-9):>6.1f}")
    floor = None
    if args.audit is not None:
        floor = audit_floor(args.audit, base, setup.pool, args.steps)
        print(
            f"\n4. Audit floor: {floor['cells']} cells, {floor['queries']:,} queries; raw forward behind RND "
            f"nu {floor['nu']:.4g}: {floor['raw_images_per_s']:,.0f} images/s on one thread"
        )
        print(
            f"  forwards alone: {floor['forward_hours_1_cell_at_once']:.2f} h one cell at a time, "
            f"{floor['forward_hours_2_cells_at_once']:.2f} h two at once; the stored cells took "
            f"{floor['cell_wall_hours']:.2f} h of cell wall time"
        )
    if args.json:
        record = {
            "study": "step-floor",
            **provenance(sha, "python " + " ".join(sys.argv)),
            "images": f"the {args.batch} correctly classified fashion-mnist test images (of the first "
            "2,000) with the largest clean margin, plus Gaussian noise of sd 0.01 (16 candidates)",
            "model": origin,
            "settings": {k: getattr(args, k) for k in ("batch", "steps", "rounds", "nu")},
            "steps": rows,
            "timeline_us": [{"between": k, "us": 1e6 * v} for k, v in gaps],
            "pieces_us": [{"piece": k, "hot": 1e6 * h, "after_forward": 1e6 * c} for k, h, c in pieces],
            "audit_floor": floor,
        }
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
