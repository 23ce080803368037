"""Sweep scaling: one small sweep run by 1 and 2 Ray workers, and in-process at 1 and 2 threads.

    python bench/sweep_scaling.py [--checkpoint PATH] [--images 20] [--budget 300] [--rounds 1]
                                  [--only all|ray|inprocess]

The sweep: the checkpoint (default: the trained Fashion-MNIST small CNN) under nu in
{0, 0.01, 0.02, 0.05}, attacked by Square and NES (l_inf, eps 0.1, default mu, M=1), `--images`
correctly classified test images per cell, `--budget` queries per image: 8 cells. Each
configuration starts from cold caches: Ray in a fresh local instance (`ray.init(num_cpus=workers)`,
its start-up time printed apart), in-process in a fresh child process. The time is that of
`run_sweep` (workers' first imports and data loading included; database writes included).
Prints the wall times, the speed-up of 2 Ray workers over 1, and whether every configuration
stored the same numbers. On a machine shared with other work the times are noisy: compare
ratios measured in one run, and check the load (`uptime`) printed at the top.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

DEFAULT_CHECKPOINT = "~/.cache/rnd/checkpoints/fashion-mnist-small-cnn"

CONFIG = """name = "sweep-scaling"
seeds = [0]
budget = {budget}
[data]
images = {images}
accuracy_images = 500
[defense]
nu = [0.0, 0.01, 0.02, 0.05]
[[models]]
label = "bench"
checkpoint = "{checkpoint}"
[[attacks]]
name = "square"
norm = "linf"
eps = 0.1
[[attacks]]
name = "nes"
norm = "linf"
eps = 0.1
"""


def _plan(text: str) -> Any:
    from rnd.evaluation.config import parse_config
    from rnd.evaluation.drive import plan_sweep

    return plan_sweep(parse_config(text))


def _snapshot(db: Path) -> dict[str, Any]:
    """What the sweep measured (summaries and per-image rows), without wall times."""
    from rnd.evaluation.store import comparable_content

    return comparable_content(db)


def _inprocess_child(text: str, threads: int, db: str) -> tuple[float, dict[str, Any]]:
    """Runs in a fresh process: the in-process runner with `threads` torch threads."""
    from rnd.evaluation.drive import run_sweep
    from rnd.evaluation.runners import InProcessRunner

    plan = _plan(text)
    t0 = time.perf_counter()
    run_sweep(plan, db, runner=InProcessRunner(threads=threads), progress=False)
    return time.perf_counter() - t0, _snapshot(Path(db))


def time_inprocess(text: str, threads: int, db: Path) -> tuple[float, dict[str, Any]]:
    with ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(_inprocess_child, text, threads, str(db)).result()


def time_ray(text: str, workers: int, db: Path) -> tuple[float, float, dict[str, Any]]:
    """(Ray start-up s, sweep s, results) with `workers` Ray workers of 1 torch thread each."""
    import logging

    import ray

    from rnd.evaluation.drive import run_sweep
    from rnd.evaluation.runners.ray import RayRunner

    plan = _plan(text)
    t0 = time.perf_counter()
    ray.init(
        num_cpus=workers,
        include_dashboard=False,
        log_to_driver=False,
        object_store_memory=128 * 1024**2,
        logging_level=logging.WARNING,
    )
    t1 = time.perf_counter()
    try:
        run_sweep(plan, db, runner=RayRunner(workers=workers, threads_per_worker=1), progress=False)
        t2 = time.perf_counter()
    finally:
        ray.shutdown()
    return t1 - t0, t2 - t1, _snapshot(db)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT)
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--budget", type=int, default=300)
    p.add_argument("--rounds", type=int, default=1, help="repeat every configuration; the best time counts")
    p.add_argument("--only", choices=("all", "ray", "inprocess"), default="all", help="which runners to time")
    args = p.parse_args()
    checkpoint = Path(os.path.expanduser(args.checkpoint))
    text = CONFIG.format(budget=args.budget, images=args.images, checkpoint=checkpoint)
    cells = len(_plan(text).cells)
    print(f"load average at start: {os.getloadavg()[0]:.1f} (1 min), {os.cpu_count()} CPUs")
    print(f"sweep: {cells} cells x {args.images} images x {args.budget} queries, checkpoint {checkpoint}")

    configs = [
        ("in-process, 1 thread", "in", 1),
        ("in-process, 2 threads", "in", 2),
        ("Ray, 1 worker", "ray", 1),
        ("Ray, 2 workers", "ray", 2),
    ]
    configs = [c for c in configs if args.only == "all" or (c[1] == "ray") == (args.only == "ray")]
    times: dict[str, list[float]] = {}
    startup: dict[str, list[float]] = {}
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            for name, kind, n in configs:
                db = Path(tmp) / f"{kind}{n}-{r}.sqlite"
                if kind == "in":
                    seconds, snap = time_inprocess(text, n, db)
                else:
                    start, seconds, snap = time_ray(text, n, db)
                    startup.setdefault(name, []).append(start)
                times.setdefault(name, []).append(seconds)
                results[name] = snap
                print(f"  round {r + 1}: {name:22s} {seconds:7.1f} s", flush=True)

    best = {k: min(v) for k, v in times.items()}
    print(f"\nbest of {args.rounds} round(s), sweep wall time (Ray start-up apart):")
    for name, seconds in best.items():
        extra = f"   (+ Ray start-up {min(startup[name]):.1f} s)" if name in startup else ""
        print(f"  {name:22s} {seconds:7.1f} s   {cells / seconds:6.2f} cells/s{extra}")
    for label, a, b in (
        ("Ray 2 workers over 1", "Ray, 1 worker", "Ray, 2 workers"),
        ("in-process 2 threads over 1", "in-process, 1 thread", "in-process, 2 threads"),
        ("Ray 2 workers over in-process 1", "in-process, 1 thread", "Ray, 2 workers"),
    ):
        if a in best and b in best:
            print(f"speed-up, {label + ':':33s} {best[a] / best[b]:.2f}x")
    ref = results[configs[0][0]]
    for name, snap in results.items():
        differ = sum(snap["cells"].get(k) != v for k, v in ref["cells"].items())
        same = "yes" if snap == ref else f"NO ({differ} of {len(ref['cells'])} cells differ)"
        print(f"  same results as {configs[0][0]}: {name:22s} {same}")
    if any(snap != ref for snap in results.values()):
        print("  (different results mean different code: was rnd edited while the benchmark ran?)")


if __name__ == "__main__":
    main()
