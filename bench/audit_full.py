"""The full-size `rnd audit` of the default checkpoint (issue 17), carried across fresh machines.

    python bench/audit_full.py resume [--threads 2] [--until HH:MM]   # run / resume it (hours)
    python bench/audit_full.py snapshot               # copy its store into the tracked snapshot
    python bench/audit_full.py status                 # cells done, queries spent, wall time so far
    python bench/audit_full.py table                  # the report so far as Markdown (for README)

    # issue 32's re-time: the same audit from an empty store, two cells at once at one thread each,
    # on the code of a fixed revision (a worktree), carried across sessions in bench/audit-full/retime.sqlite
    python bench/audit_full.py --name retime resume --processes 2 --threads 1 --code /tmp/wt --until HH:MM
    python bench/audit_full.py --name retime compare  # its cells beside the original audit's

The audit (500 images, 10,000 queries; scores and labels, and since issue 30 the surrogate family)
plans at most 335 M model queries for scores and labels: on 2
idle CPU cores at the measured 7,700-7,900 queries/s through RND, about 12 h (an estimate). A
session's machine keeps only what is committed, and the default checkpoint is not bit-identical
when trained again elsewhere, so the store's cells would not match a retrained model.
`bench/audit-full/` therefore keeps both parts under version control:

- `checkpoints/fashion-mnist-small-cnn.{safetensors,json}`: the default checkpoint the audit is of,
  as `scripts/install.sh && rnd demo` trained it (`resume` runs with `RND_HOME=bench/audit-full`,
  so `rnd audit` without MODEL finds it);
- `audit.sqlite`: a consistent copy of the audit's results store (SQLite's online backup, then
  VACUUM), with every finished cell.

`resume` works on `results/audit-full/audit.sqlite` (git-ignored), starting it from the snapshot
when it is absent, and writes the report to `results/audit-full/`. `snapshot` refuses to replace a
snapshot that has more finished cells than the working store, so an older store never overwrites
newer results. The wall time of the audit is the sum of its cells' `wall_seconds` (each cell ran
uninterrupted; a cell killed at a session's end restarts from its beginning, and its lost time is
not counted) plus the calibration, which runs once and is kept in the store.

`resume --until HH:MM` (UTC, the next such time) is for a session that ends at a known time: the
audit is stopped as soon as a cell finishes and the next one would not fit before then (its
estimate: the longest cell finished in this run, else `FIRST_CELL_GUESS`), or at `--until` itself,
whichever is first; then the working store is snapshotted. A cell stopped half-way restarts from its
beginning, so stopping between cells loses nothing; the cores are free at once for other work.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOME = ROOT / "bench" / "audit-full"
SNAPSHOT = HOME / "audit.sqlite"
OUT = ROOT / "results" / "audit-full"
WORKING = OUT / "audit.sqlite"
#: Each run's segments (start, end, code revision, processes): the elapsed time of a run carried
#: across sessions.
SEGMENTS = HOME / "audit.segments.json"
#: CPU seconds per finished cell (`CellClock`), kept beside the snapshot.
CPU = HOME / "audit.cpu.json"
CHECKPOINT = HOME / "checkpoints" / "fashion-mnist-small-cnn"
#: Seconds a cell is assumed to take before one has finished in this run (a defended cell: about
#: 5 M queries at the 7,700-15,000 queries/s measured on 2 idle cores).
FIRST_CELL_GUESS = 700.0
POLL_SECONDS = 10.0


def copy_store(src: Path, dst: Path) -> None:
    """A consistent, compact copy of the SQLite store `src` at `dst` (online backup: a writer may be
    running; the copy holds whole transactions only)."""
    tmp = dst.with_name(dst.name + ".tmp")
    tmp.unlink(missing_ok=True)
    dst.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(f"{src.resolve().as_uri()}?mode=ro", uri=True) as s, sqlite3.connect(tmp) as d:
        s.backup(d)
    with sqlite3.connect(tmp, isolation_level=None) as d:
        d.execute("VACUUM")
    os.replace(tmp, dst)


def progress(store: Path) -> dict:
    """Cells done and pending, queries spent, summed cell wall time of the store at `store`."""
    with sqlite3.connect(f"{store.resolve().as_uri()}?mode=ro", uri=True) as con:
        status = dict(con.execute("SELECT status, count(*) FROM cells GROUP BY status").fetchall())
        wall, queries = con.execute(
            "SELECT coalesce(sum(s.wall_seconds), 0), "
            "(SELECT coalesce(sum(queries), 0) FROM image_results) FROM cell_summaries s"
        ).fetchone()
        models = [r[0] for r in con.execute("SELECT DISTINCT checkpoint_sha256 FROM cells")]
    return {
        "done": status.get("done", 0),
        "failed": status.get("failed", 0),
        "pending": status.get("pending", 0),
        "cell_wall_seconds": round(wall, 1),
        "queries": int(queries),
        "checkpoint_sha256": models,
    }


def checkpoint_sha() -> str:
    return json.loads(CHECKPOINT.with_suffix(".json").read_text())["sha256"]


def next_utc(hhmm: str, now: dt.datetime) -> dt.datetime:
    """The first moment at or after `now` (UTC) whose clock reads `hhmm` ("HH:MM")."""
    try:
        t = dt.datetime.strptime(hhmm, "%H:%M").time()
    except ValueError:
        sys.exit(f"--until takes a UTC time as HH:MM, got {hhmm!r}")
    at = dt.datetime.combine(now.date(), t, tzinfo=dt.UTC)
    return at if at >= now else at + dt.timedelta(days=1)


def should_stop(seconds_left: float, cell_finished: bool, longest_cell: float | None) -> bool:
    """Stop the audit now? At the deadline, or right after a cell when the next one (estimated as
    long as the longest cell of this run) would not finish before it."""
    if seconds_left <= 0:
        return True
    return cell_finished and seconds_left < (longest_cell or FIRST_CELL_GUESS)


def done_cells(store: Path) -> int:
    """Finished cells of `store` (0 before the audit has made it)."""
    return progress(store)["done"] if store.exists() else 0


def cell_walls_since(store: Path, since: str) -> list[float]:
    """Wall seconds of the cells of `store` finished at or after the ISO time `since`."""
    with sqlite3.connect(f"{store.resolve().as_uri()}?mode=ro", uri=True) as con:
        rows = con.execute("SELECT wall_seconds FROM cell_summaries WHERE finished_at >= ?", (since,))
        return [float(r[0]) for r in rows.fetchall() if r[0] is not None]


def use_name(name: str) -> None:
    """Work on the run `name`: its working store under results/audit-NAME/ and its snapshot
    bench/audit-full/NAME.sqlite (`audit`, the default, keeps the original paths)."""
    global SNAPSHOT, OUT, WORKING, SEGMENTS, CPU
    if name != "audit":
        SNAPSHOT = HOME / f"{name}.sqlite"
        OUT = ROOT / "results" / f"audit-{name}"
        WORKING = OUT / "audit.sqlite"
        SEGMENTS = HOME / f"{name}.segments.json"
        CPU = HOME / f"{name}.cpu.json"


def revision(code: Path) -> str:
    """The git revision checked out at `code` (with `+dirty` when its tracked files differ)."""
    rev = subprocess.run(["git", "-C", str(code), "rev-parse", "HEAD"], capture_output=True, text=True)
    dirty = subprocess.run(["git", "-C", str(code), "diff", "--quiet", "HEAD", "--", "rnd"]).returncode
    return rev.stdout.strip() + ("+dirty" if dirty else "")


def planned(store: Path) -> bool:
    """Has an audit planned its cells (and stored its calibration) in `store`?"""
    if not store.exists():
        return False
    try:
        with sqlite3.connect(f"{store.resolve().as_uri()}?mode=ro", uri=True) as con:
            return con.execute("SELECT count(*) FROM cells").fetchone()[0] > 0
    except sqlite3.Error:
        return False


def claims(store: Path) -> dict[str, str]:
    """The cell each live claim holds: owner pid -> cell key."""
    with sqlite3.connect(f"{store.resolve().as_uri()}?mode=ro", uri=True) as con:
        rows = con.execute("SELECT claimed_by, key FROM cells WHERE claimed_by IS NOT NULL").fetchall()
    return {owner.split(":")[1]: key for owner, key in rows}


def resume(threads: int, until: str | None = None, processes: int = 1, code: Path | None = None) -> int:
    """Run the audit (`processes` `rnd audit` processes sharing the store, `threads` torch threads
    each; the rnd package of the checkout `code` when given), stopping each process between its
    cells before `until`; then snapshot the store and log the segment."""
    if not CHECKPOINT.with_suffix(".safetensors").exists():
        sys.exit(f"no checkpoint at {CHECKPOINT}.safetensors: the audit is of that model")
    started = dt.datetime.now(dt.UTC)
    deadline = next_utc(until, started) if until else None
    if not WORKING.exists() and SNAPSHOT.exists():
        copy_store(SNAPSHOT, WORKING)
        print(f"working store started from the snapshot: {progress(WORKING)['done']} cells done")
    env = {**os.environ, "RND_HOME": str(HOME)}
    if code is not None:
        env["PYTHONPATH"] = str(code.resolve())
    rnd = shutil.which("rnd") or str(Path(sys.executable).with_name("rnd"))
    cmd = [rnd, "--threads", str(threads), "audit", "--out", str(OUT), "--db", str(WORKING)]
    cmd.append("--progress" if processes == 1 else "--no-progress")
    print(" ".join(cmd), f"x {processes} (RND_HOME={HOME}, code {revision(code or ROOT)})", flush=True)
    if deadline is None and processes == 1:
        return subprocess.call(cmd, env=env)
    if deadline is not None:
        print(
            f"stops by {deadline:%Y-%m-%d %H:%M} UTC, between cells where the next would not fit", flush=True
        )
    procs = [subprocess.Popen(cmd, env=env, start_new_session=True)]
    while len(procs) < processes and procs[0].poll() is None:  # the first calibrates and plans
        if planned(WORKING):
            procs.append(subprocess.Popen(cmd, env=env, start_new_session=True))
        else:
            time.sleep(1.0)
    since = started.isoformat(timespec="milliseconds")
    holding: dict[str, str] = {}
    clock = CellClock()
    while any(p.poll() is None for p in procs):
        time.sleep(POLL_SECONDS)
        if not WORKING.exists():
            continue
        now_claims = claims(WORKING)
        clock.poll([p.pid for p in procs], now_claims)
        if deadline is None:
            continue
        longest = max(cell_walls_since(WORKING, since), default=None)
        left = (deadline - dt.datetime.now(dt.UTC)).total_seconds()
        for p in procs:
            if p.poll() is not None:
                continue
            cell = now_claims.get(str(p.pid))
            began = cell is not None and holding.get(str(p.pid)) not in (None, cell)
            if should_stop(left, began, longest):
                need = longest or FIRST_CELL_GUESS
                why = "the deadline" if left <= 0 else f"{left:.0f} s left, the next cell needs ~{need:.0f} s"
                print(f"\nstopping audit process {p.pid} ({why})", flush=True)
                stop(p)
            elif cell is not None:
                holding[str(p.pid)] = cell
    ended = dt.datetime.now(dt.UTC)
    clock.save(CPU, finished_keys(WORKING))
    log_segment(started, ended, processes, threads, revision(code or ROOT))
    snapshot()
    ok = (0, -signal.SIGTERM, -signal.SIGKILL)
    return next((p.returncode for p in procs if p.returncode not in ok), 0)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU seconds of process `pid` so far (None once it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


BEFORE_CELLS = "(before the first cell: calibration, planning)"


class CellClock:
    """CPU seconds per cell, from polls of each audit process's CPU time and the cell it claims: a
    cell's CPU time is what its process spent from the first poll that saw the claim to the first
    that saw the next (each boundary within one poll). The sum of a cell's wall time and its CPU time
    tells how much of the wall the process was kept from its core by other work on the machine."""

    def __init__(self) -> None:
        self.held: dict[int, tuple[str | None, float, float]] = {}  # cell, CPU when claimed, at last poll
        self.spent: dict[str, float] = {}

    def poll(self, pids: list[int], claimed: dict[str, str]) -> None:
        for pid in pids:
            cpu = cpu_seconds(pid)
            was, since, last = self.held.get(pid, (BEFORE_CELLS, 0.0, 0.0))
            if cpu is None:  # gone: what it spent up to the last poll goes to what it held
                cell, cpu = None, last
            else:
                cell = claimed.get(str(pid))
            if cell != was and was is not None:
                self.spent[was] = self.spent.get(was, 0.0) + cpu - since
            self.held[pid] = (cell, cpu if cell != was else since, cpu)

    def save(self, path: Path, finished: set[str]) -> None:
        """Add the CPU seconds of the cells finished (a cell stopped half-way restarts: not kept)."""
        kept = json.loads(path.read_text()) if path.exists() else {}
        for cell, sec in self.spent.items():
            if cell in finished or cell == BEFORE_CELLS:
                kept[cell] = round(kept.get(cell, 0.0) + sec, 1)
        path.write_text(json.dumps(kept, indent=1, sort_keys=True) + "\n")


def finished_keys(store: Path) -> set[str]:
    with sqlite3.connect(f"{store.resolve().as_uri()}?mode=ro", uri=True) as con:
        return {r[0] for r in con.execute("SELECT cell_key FROM cell_summaries")}


def log_segment(started: dt.datetime, ended: dt.datetime, processes: int, threads: int, code: str) -> None:
    """Append this run's segment to the run's segment log (kept beside its snapshot)."""
    log = json.loads(SEGMENTS.read_text()) if SEGMENTS.exists() else []
    log.append(
        {
            "start": started.isoformat(timespec="seconds"),
            "end": ended.isoformat(timespec="seconds"),
            "elapsed_s": round((ended - started).total_seconds(), 1),
            "processes": processes,
            "threads": threads,
            "code": code,
            **{k: v for k, v in progress(WORKING).items() if k != "checkpoint_sha256"},
        }
    )
    SEGMENTS.write_text(json.dumps(log, indent=1) + "\n")


def stop(proc: subprocess.Popen) -> None:
    """End the audit's process group: SIGTERM, then SIGKILL after a minute (the store is safe
    either way: an unfinished cell restarts from its beginning)."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def snapshot() -> int:
    if not WORKING.exists():
        sys.exit(f"no working store at {WORKING}")
    now = progress(WORKING)
    if SNAPSHOT.exists() and progress(SNAPSHOT)["done"] > now["done"]:
        sys.exit(f"the snapshot has more finished cells than {WORKING}: not replaced")
    if now["checkpoint_sha256"] and now["checkpoint_sha256"] != [checkpoint_sha()]:
        sys.exit(f"{WORKING} holds cells of another model than {CHECKPOINT}: not copied")
    copy_store(WORKING, SNAPSHOT)
    print(json.dumps({"snapshot": str(SNAPSHOT.relative_to(ROOT)), **progress(SNAPSHOT)}))
    return 0


def pct(r: dict | None) -> str:
    """A failure rate with its 95 % interval, or n/a."""
    return "n/a" if r is None else f"{r['failure']:.1f} [{r['low']:.1f}, {r['high']:.1f}]"


def markdown(report: dict, wall_seconds: float) -> str:
    """The verdict and every finished cell of an audit's `report.json`, as Markdown tables."""
    prog = report["progress"]
    grid = f" + {prog['grid_done']} of {prog['grid_cells']} grid cells" if prog["grid_cells"] else ""
    state = "complete" if prog["complete"] else "partial"
    out = [
        f"{prog['done']} of {prog['cells']} cells{grid} done ({state}); "
        f"cell wall time summed: {wall_seconds / 3600:.2f} h",
        "",
        "| threat model | worst case, by vote [95 %] | by | worst observed | worst clean | undefended |",
        "|---|---|---|---|---|---|",
    ]
    for threat, v in report["verdict"].items():
        worst, und = v["worst"], v["undefended_worst"]
        out.append(
            f"| {threat} ({v['attacks']} attacks, {v['attacks_pending']} pending) | {pct(worst)} | "
            f"{worst['attack'] if worst else 'n/a'} | {pct(v['worst_observed'])} | {pct(v['worst_clean'])} | "
            f"{pct(und)}{' (' + und['attack'] + ')' if und else ''} |"
        )
    for defense, threats in report["cells"].items():
        out += [
            "",
            f"| attack against {defense} | observed | vote [95 %] | clean | mean queries |",
            "|---|---|---|---|---|",
        ]
        for attacks in threats.values():
            for a in sorted(attacks["attacks"], key=lambda a: a["vote"]["failure"]):
                q = "n/a" if a["mean_queries"] is None else f"{a['mean_queries']:,.0f}"
                clean = "n/a" if a["clean"] is None else f"{a['clean']['failure']:.1f}"
                out.append(
                    f"| {a['attack']} | {a['observed']['failure']:.1f} | {pct(a['vote'])} | {clean} | {q} |"
                )
    return "\n".join(out)


def table() -> int:
    """`rnd audit --report-only` over the working store (the snapshot when absent), printed as
    Markdown: nothing is run and the store is not written."""
    store = WORKING if WORKING.exists() else SNAPSHOT
    env = {**os.environ, "RND_HOME": str(HOME)}
    rnd = shutil.which("rnd") or str(Path(sys.executable).with_name("rnd"))
    cmd = [rnd, "--threads", "1", "audit", "--out", str(OUT), "--db", str(store), "--report-only"]
    res = subprocess.run([*cmd, "--no-progress"], env=env, capture_output=True, text=True)
    if res.returncode:
        sys.exit(res.stderr.strip() or f"rnd audit --report-only failed ({res.returncode})")
    report = json.loads((OUT / "report.json").read_text())
    print(markdown(report, progress(store)["cell_wall_seconds"]))
    return 0


def cells_of(store: Path) -> dict[str, dict]:
    """Each finished cell of `store`: its attack, defense, images, failure by vote and wall time."""
    with sqlite3.connect(f"{store.resolve().as_uri()}?mode=ro", uri=True) as con:
        rows = con.execute(
            "SELECT c.key, c.attack, c.defense, s.images, s.failure_rate_vote, s.wall_seconds "
            "FROM cells c JOIN cell_summaries s ON s.cell_key = c.key"
        ).fetchall()
    keys = ("attack", "defense", "images", "vote", "wall")
    return {r[0]: dict(zip(keys, r[1:], strict=True)) for r in rows}


def compare(other: Path) -> int:
    """This run's finished cells beside those of the store `other` (default: the original
    snapshot): cells in both with the same failure by vote, and with overlapping 95 % intervals;
    each (defense, threat family)'s worst case by vote over the cells both have; the cell wall
    (and CPU) time of each, over the same cells. Markdown."""
    from rnd.audit.suite import family
    from rnd.stats import rate_interval

    mine = cells_of(WORKING if WORKING.exists() else SNAPSHOT)
    theirs = cells_of(other)
    both = sorted(mine.keys() & theirs.keys())
    cpu = json.loads(CPU.read_text()) if CPU.exists() else {}

    def interval(c: dict) -> tuple[float, float]:
        return rate_interval(c["vote"], c["images"])

    same = sum(mine[k]["vote"] == theirs[k]["vote"] for k in both)
    overlap = 0
    for k in both:
        (a, b), (c, d) = interval(mine[k]), interval(theirs[k])
        overlap += a <= d and c <= b
    out = [
        f"{len(both)} cells finished in both ({len(mine)} here, {len(theirs)} in {other.name}): "
        f"{same} with the same failure by vote, {overlap} with overlapping 95 % intervals",
        "",
        "| defense | family | worst case here [95 %] | worst case there [95 %] |",
        "|---|---|---|---|",
    ]
    groups: dict[tuple[str, str], list[str]] = {}
    for k in both:
        groups.setdefault((mine[k]["defense"], family(mine[k]["attack"])), []).append(k)
    for (defense, fam), keys in sorted(groups.items()):
        cols = []
        for cells in (mine, theirs):
            w = min(keys, key=lambda k: cells[k]["vote"])
            lo, hi = interval(cells[w])
            cols.append(f"{cells[w]['attack']} {cells[w]['vote']:.1f} [{lo:.1f}, {hi:.1f}]")
        out.append(f"| {defense} | {fam} | {cols[0]} | {cols[1]} |")
    wall_here = sum(mine[k]["wall"] for k in both)
    wall_there = sum(theirs[k]["wall"] for k in both)
    cpu_here = sum(cpu.get(k, 0.0) for k in both)
    out += [
        "",
        f"cell wall time over these cells: {wall_here / 3600:.2f} h here "
        f"(CPU {cpu_here / 3600:.2f} h, {sum(k in cpu for k in both)} cells clocked), "
        f"{wall_there / 3600:.2f} h there",
    ]
    print("\n".join(out))
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--name", default="audit", help="which run: its store is bench/audit-full/NAME.sqlite")
    sub = ap.add_subparsers(dest="command", required=True)
    res = sub.add_parser("resume")
    res.add_argument("--threads", type=int, default=2)
    res.add_argument(
        "--until", default=None, help="UTC HH:MM to be stopped by (between cells), then snapshot"
    )
    res.add_argument("--processes", type=int, default=1, help="rnd audit processes sharing the store")
    res.add_argument("--code", type=Path, default=None, help="run the rnd package of this checkout")
    sub.add_parser("snapshot")
    sub.add_parser("status")
    sub.add_parser("table")
    cmp = sub.add_parser("compare")
    cmp.add_argument("other", nargs="?", type=Path, default=SNAPSHOT, help="the store to compare with")
    args = ap.parse_args()
    use_name(args.name)
    if args.command == "resume":
        return resume(args.threads, args.until, args.processes, args.code)
    if args.command == "snapshot":
        return snapshot()
    if args.command == "table":
        return table()
    if args.command == "compare":
        return compare(args.other)
    store = WORKING if WORKING.exists() else SNAPSHOT
    cpu = json.loads(CPU.read_text()) if CPU.exists() else {}
    done = finished_keys(store)
    extra = {"cell_cpu_seconds": round(sum(v for k, v in cpu.items() if k in done), 1)} if cpu else {}
    print(json.dumps({"store": str(store.relative_to(ROOT)), **progress(store), **extra}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
