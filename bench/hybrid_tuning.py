"""The hybrids' step defaults, chosen on the undefended model (never against a defense).

GFCS's step mu (l_2 and l_inf) and P-RGF's probe size mu, each over a small grid, on the audited
default Fashion-MNIST checkpoint (`RND_HOME=bench/audit-full`), its surrogate zoo as the attacker's
ensemble (`bench/audit-full/surrogates`), N correctly classified test images, eps_inf 0.1 and
eps_2 1.5. Prints failure % (with its 95 % Wilson interval) and mean queries per success; writes
`docs/results/records/hybrid-tuning.json`.

    RND_HOME=bench/audit-full python bench/hybrid_tuning.py --images 100 --budget 2000
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import torch

from rnd import Oracle
from rnd.attacks import make_attack
from rnd.data import load_dataset
from rnd.models import load_model
from rnd.models.predict import correctly_classified
from rnd.stats import wilson
from rnd.training import load_or_train_default
from rnd.training.surrogates import load_or_train_surrogates

ROOT = Path(__file__).resolve().parents[1]
GRID = {
    ("gfcs", "l2"): (0.1, 0.2, 0.5),
    ("gfcs", "linf"): (0.02, 0.05, 0.1),
    ("p-rgf", "linf"): (1e-4, 1e-3, 1e-2),
    ("p-rgf", "l2"): (1e-4, 1e-3, 1e-2),
}
EPS = {"linf": 0.1, "l2": 1.5}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--budget", type=int, default=2000)
    ap.add_argument("--out", type=Path, default=ROOT / "docs/results/records/hybrid-tuning.json")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model, path = load_or_train_default(progress=False)
    sha = load_model(str(path))[1].sha256
    surrogates = [m for m, _ in load_or_train_surrogates("fashion-mnist", progress=False)]
    data = load_dataset("fashion-mnist", "test")
    x, y = data.get(correctly_classified(model, data, args.images))
    rows = []
    for (name, norm), mus in GRID.items():
        for mu in mus:
            t0 = time.perf_counter()
            attack = make_attack(name, eps=EPS[norm], norm=norm, mu=mu, surrogate=surrogates, seed=0)
            r = attack(Oracle(model, output="probs", budget=args.budget), x, y)
            fails = int((~r.success).sum())
            lo, hi = wilson(fails, len(y))
            row = {
                "attack": name,
                "norm": norm,
                "mu": mu,
                "failure": 100.0 * fails / len(y),
                "low": lo,
                "high": hi,
                "mean_queries": r.mean_queries,
                "median_queries": r.median_queries,
                "seconds": round(time.perf_counter() - t0, 1),
            }
            rows.append(row)
            print(
                f"{name:6s} {norm:4s} mu={mu:<7g} fail {row['failure']:5.1f} "
                f"[{row['low']:4.1f}, {row['high']:4.1f}]  mean q {r.mean_queries:7.1f}  "
                f"median q {r.median_queries:6.0f}  {row['seconds']:6.1f} s",
                flush=True,
            )
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT)
    record = {
        "bench": "bench/hybrid_tuning.py",
        "commit": commit.stdout.strip(),
        "checkpoint_sha256": sha,
        "surrogates": "the fashion-mnist zoo in bench/audit-full/surrogates (logit ensemble)",
        "images": f"the first {len(y)} correctly classified Fashion-MNIST test images",
        "budget": args.budget,
        "defense": "none",
        "machine": f"{platform.processor() or platform.machine()}, 1 torch thread, torch {torch.__version__}",
        "rows": rows,
    }
    args.out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
