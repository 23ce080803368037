"""The surrogate family's record: what transfer and hybrid attacks do through RND (issue 30).

Reads two audits of the audited default checkpoint (`RND_HOME=bench/audit-full`, its surrogate zoo
in `bench/audit-full/surrogates`), both at the full size (500 images, 10,000 queries):

- the full audit's store (`bench/audit-full/audit.sqlite`): the calibrated `rnd:nu=0.0525` (its
  surrogate family runs first, then `none`'s);
- `rnd audit --defense rnd:nu=0.02 --threat surrogate` (`bench/audit-full/surrogate-nu002.sqlite`);
- `rnd audit --defense none --threat surrogate` (`bench/audit-full/surrogate-none.sqlite`): the
  undefended model, the same cells as the full audit's `none` ones (the same keys).

It runs `rnd audit --report-only` over a copy of each (nothing is recomputed or written to them)
and writes `docs/results/records/surrogate.json`: per defense, every finished surrogate-family
cell judged three ways with 95 % Wilson intervals, mean and median queries per success, and the
family's worst case by vote beside the scores and labels verdicts.

    python bench/surrogate_record.py
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
HOME = ROOT / "bench" / "audit-full"
STORES = {
    "full": (HOME / "audit.sqlite", []),
    "nu002": (HOME / "surrogate-nu002.sqlite", ["--defense", "rnd:nu=0.02", "--threat", "surrogate"]),
    "none": (HOME / "surrogate-none.sqlite", ["--defense", "none", "--threat", "surrogate"]),
}
OUT = ROOT / "docs" / "results" / "records" / "surrogate.json"


def report_only(db: Path, args: list[str], tmp: Path) -> dict:
    copy = tmp / db.name
    shutil.copyfile(db, copy)
    cmd = [sys.executable, "-c", "from rnd.cli import main; main()", "--threads", "1", "audit", *args]
    cmd += ["--out", str(tmp / db.stem), "--db", str(copy), "--report-only", "--no-progress"]
    env = {**os.environ, "RND_HOME": str(HOME)}
    subprocess.run(cmd, check=True, capture_output=True, text=True, env=env)
    return json.loads((tmp / db.stem / "report.json").read_text())


def medians(db: Path) -> dict[str, float | None]:
    with sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True) as con:
        return dict(con.execute("SELECT cell_key, median_queries FROM cell_summaries"))


def finished(db: Path, keys: set[str]) -> list[str]:
    """The finish dates of the cells `keys` in `db`."""
    with sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True) as con:
        rows = con.execute("SELECT cell_key, finished_at FROM cell_summaries").fetchall()
    return [at[:10] for k, at in rows if k in keys]


def main() -> None:
    defenses: dict[str, dict] = {}
    verdicts: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for db, args in STORES.values():
            report = report_only(db, args, Path(tmp))
            med = medians(db)
            for defense, by_family in report["cells"].items():
                rows = by_family.get("surrogate", {}).get("attacks", [])
                kept = defenses.setdefault(defense, {})
                for r in rows:
                    kept[r["cell_key"]] = {
                        "attack": r["attack"],
                        "images": r["images"],
                        "observed": r["observed"],
                        "vote": r["vote"],
                        "clean": r["clean"],
                        "mean_queries": r["mean_queries"],
                        "median_queries": med.get(r["cell_key"]),
                    }
            verdicts[report["defense"]] = {
                family: {
                    k: v.get(k)
                    for k in ("worst", "worst_observed", "worst_clean", "attacks", "attacks_pending")
                }
                for family, v in report["verdict"].items()
            }
            verdicts[report["defense"]]["surrogates"] = report["request"].get("surrogates")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    sha = json.loads((HOME / "checkpoints" / "fashion-mnist-small-cnn.json").read_text())["sha256"]
    keys = {k for rows in defenses.values() for k in rows}
    days = sorted(d for db, _ in STORES.values() for d in finished(db, keys))
    record = {
        "study": "surrogate",
        "title": "Transfer and hybrid attacks through RND (the audit's surrogate family)",
        "date": days[0] if days[0] == days[-1] else f"{days[0]} to {days[-1]}",
        "written": dt.date.today().isoformat(),
        "commit": commit.stdout.strip(),
        "checkpoint_sha256": sha,
        "images": "500 correctly classified Fashion-MNIST test images per cell; 10,000 queries per image",
        "machine": f"2-core AMD EPYC, 24 GiB, {platform.machine()}, 1 thread, torch {torch.__version__}",
        "command": "python bench/surrogate_record.py (report-only over the stores; see its docstring)",
        "stores": {k: str(v[0].relative_to(ROOT)) for k, v in STORES.items()},
        "verdicts": verdicts,
        "cells": {d: list(rows.values()) for d, rows in defenses.items()},
    }
    OUT.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {OUT}: " + ", ".join(f"{d} {len(r)} cells" for d, r in record["cells"].items()))


if __name__ == "__main__":
    main()
