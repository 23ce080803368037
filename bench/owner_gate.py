"""The audit as an owner's gate, end to end on the default model (issue 31's acceptance run).

    python bench/owner_gate.py [--threads 1] [--out results/owner-gate]

Two quick audits of the default checkpoint (`bench/audit-full/checkpoints`, with the committed
surrogate zoo; `RND_HOME=bench/audit-full`), one at RND nu = 0.02 and one calibrated to a 1-point
accuracy drop, each priced at an example key (10,000 queries, 1 query/s). Then `rnd audit diff`
between them, and `--fail-under` at two thresholds on the calibrated one (below and above its
interval). It prints one summary and writes `OUT/owner-gate.json`: the commands, their exit codes,
the verdicts, the preflight, the resubmission risk (k = 1, 10, 100) and the success before and after
PNG / JPEG encoding of each family's worst attack, and the diff's counts. The two audits keep
their stores under OUT, so a rerun only re-reads them.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HOME = ROOT / "bench" / "audit-full"
TERMS = ["--quota", "10000", "--rate", "1"]


def rnd(threads: int, *args: str) -> tuple[int, str, str, float]:
    """Run `rnd --threads T ARGS` with RND_HOME at the committed audit home: (exit, out, err, s)."""
    cmd = [sys.executable, "-c", "from rnd.cli import main; main()", "--threads", str(threads), *args]
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "RND_HOME": str(HOME)})
    return res.returncode, res.stdout, res.stderr, time.perf_counter() - t0


def deployment(report: dict) -> dict:
    """Per family: the worst case by vote, observed and clean, resubmitted k times, and encoded."""
    out = {}
    for fam, v in report["verdict"].items():
        out[fam] = {
            "worst": v["worst"],
            "worst_observed": v["worst_observed"],
            "worst_clean": v["worst_clean"],
            "resubmission": v["resubmission"],
            "encoded": v["encoded"],
            "rechecked_attacks": v["rechecked_attacks"],
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=ROOT / "results" / "owner-gate")
    args = ap.parse_args()
    runs: dict[str, dict] = {}
    for name, defense in (("nu002", "rnd:nu=0.02"), ("calibrated", "rnd")):
        out = args.out / name
        code, stdout, stderr, secs = rnd(
            args.threads, "audit", "--quick", "--defense", defense, "--out", str(out), *TERMS, "--no-progress"
        )
        if code != 0:
            sys.exit(f"the {name} audit failed ({code}): {stderr.strip().splitlines()[-1:]}")
        report = json.loads((out / "report.json").read_text())
        runs[name] = {
            "defense": report["defense"],
            "seconds": round(secs, 1),
            "stdout": stdout.splitlines(),
            "preflight": report["preflight"],
            "deployment": deployment(report),
            "cost": report["cost"],
            "findings": report["findings"],
        }
        print(f"{name}: {report['defense']} in {secs:.0f} s", flush=True)
        print("\n".join(f"  {line}" for line in stdout.splitlines()), flush=True)
    old, new = (args.out / n / "report.json" for n in ("nu002", "calibrated"))
    code, stdout, _, _ = rnd(args.threads, "audit", "diff", str(old), str(new))
    _, as_json, _, _ = rnd(args.threads, "audit", "diff", str(old), str(new), "--json")
    diff = json.loads(as_json)
    print(stdout.splitlines()[-1], f"(exit {code})")
    worst = min(
        (v["worst"] for v in runs["calibrated"]["deployment"].values() if v["worst"]),
        key=lambda w: w["failure"],
    )
    gates = []
    for threshold in (max(0.0, round(worst["low"] - 5, 1)), min(100.0, round(worst["high"] + 5, 1))):
        g_code, g_out, _, _ = rnd(
            args.threads, "audit", "--quick", "--defense", "rnd", "--out", str(args.out / "calibrated"),
            "--report-only", "--fail-under", f"{threshold}", *TERMS,
        )  # fmt: skip
        gates.append({"threshold": threshold, "exit": g_code, "line": g_out.strip().splitlines()[-1]})
        print(gates[-1]["line"])
    record = {
        "runs": runs,
        "diff": {"exit": code, "regressions": diff["regressions"], "text": stdout.splitlines()},
        "gates": gates,
        "terms": TERMS,
    }
    (args.out / "owner-gate.json").write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out / 'owner-gate.json'}")


if __name__ == "__main__":
    main()
