"""Peak memory (RSS) of one audit cell, and where in the attack it was reached.

    python bench/memory_peak.py --attack hsja --norm l2 --eot 5 --nu 0.0525 [--images 500]
        [--budget 10000] [--threads 1] [--json OUT.json]

Runs the cell in this process through `rnd attack` (the same executor as `rnd audit`), on the
checkpoint the full audit uses (`RND_HOME=bench/audit-full`, set here unless already set), while a
thread samples the resident set size (`/proc/self/statm`) every 10 ms and, at every new maximum,
the main thread's innermost `rnd` frames. Prints the peak RSS, the kernel's own high-water mark
(`ru_maxrss`) and the frames at the peak. Issue 32's bar: the PSJ and HopSkipJump M=5 cells at
500 images under 4 GB.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("RND_HOME", str(ROOT / "bench" / "audit-full"))

PAGE = os.sysconf("SC_PAGE_SIZE")


def rss() -> int:
    """Resident set size of this process, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * PAGE


class Sampler(threading.Thread):
    """Samples RSS; remembers the maximum and the main thread's rnd frames at that moment."""

    def __init__(self, every: float = 0.01) -> None:
        super().__init__(daemon=True)
        self.every = every
        self.peak = 0
        self.where: list[str] = []
        self.stop = threading.Event()
        self.main = threading.main_thread().ident

    def run(self) -> None:
        while not self.stop.is_set():
            now = rss()
            if now > self.peak:
                self.peak = now
                frame = sys._current_frames().get(self.main)
                stack = traceback.extract_stack(frame) if frame is not None else []
                self.where = [
                    f"{Path(s.filename).name}:{s.lineno} {s.name}" for s in stack if "/rnd/" in s.filename
                ][-6:]
            time.sleep(self.every)


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--attack", required=True)
    p.add_argument("--norm", default="l2")
    p.add_argument("--eot", type=int, default=1)
    p.add_argument("--nu", type=float, default=0.0525, help="RND level (0 = undefended)")
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--budget", type=int, default=10000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None, help="append the row to this JSON list file")
    args = p.parse_args()

    from rnd.cli import main as rnd_main

    sampler = Sampler()
    sampler.start()
    cmd = [
        "--threads", str(args.threads), "attack", "--attack", args.attack, "--norm", args.norm,
        "--eot", str(args.eot), "--nu", str(args.nu), "--images", str(args.images),
        "--budget", str(args.budget), "--no-progress", "--json",
    ]  # fmt: skip
    t0 = time.perf_counter()
    try:
        with open(os.devnull, "w") as quiet, contextlib.redirect_stdout(quiet):
            rnd_main(cmd, standalone_mode=False)
    finally:
        wall = time.perf_counter() - t0
        sampler.stop.set()
        sampler.join()
    high = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    row = {
        "attack": args.attack,
        "norm": args.norm,
        "eot": args.eot,
        "nu": args.nu,
        "images": args.images,
        "budget": args.budget,
        "peak_rss_gb": round(sampler.peak / 2**30, 3),
        "ru_maxrss_gb": round(high / 2**30, 3),
        "wall_s": round(wall, 1),
        "at": sampler.where,
    }
    print(json.dumps(row, indent=1))
    if args.json:
        path = Path(args.json)
        rows = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps([*rows, row], indent=1) + "\n")


if __name__ == "__main__":
    main()
