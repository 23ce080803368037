"""Counters to Blacklight on the default model: the plain attack, blinded, and OARS.

    RND_HOME=bench/audit-full python bench/oars_blacklight.py [--images 20] [--json OUT]

Square (l_inf eps 0.1, scores) and HopSkipJump (l_2 eps 1.5, labels) against `blacklight` at the
authors' threshold (25 of 50 kept hashes, `rnd.defenses.stateful`) and at 45, each three ways:
naive (the plain attack), blinded (`make_attack(..., blind=0.05)`, fresh +-0.05 noise on each
query) and OARS (`square-oars`, `hsja-oars`: step tuning on the refusals and redrawn proposals);
and undefended, plain against OARS (the same attack when nothing is refused). One detector (salt 0)
per row, fresh, seeing the row's images in one batch; 10,000 queries per image, as the audit.

Per row: failure % as the attacker observed it and as the clean model judges its `x_adv` (a
label-only success needs the distance within eps too), with 95 % Wilson intervals; the detection
rate (refused queries / all queries, the oracle's count of NaN / `REFUSED` answers); mean queries
per image; seconds. One torch thread.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from provenance import provenance  # bench/provenance.py, beside this script

from rnd import Oracle
from rnd.attacks import make_attack
from rnd.attacks.decision import EPS_TOL
from rnd.data import load_dataset
from rnd.defenses.stateful import Blacklight
from rnd.models import model_sha256
from rnd.models.predict import correctly_classified, predict
from rnd.stats import wilson
from rnd.training import load_or_train_default

ATTACKS = {"square": ("linf", 0.1, "probs"), "hsja": ("l2", 1.5, "labels")}
VARIANTS = {"naive": ("{}", {}), "blinded": ("{}", {"blind": 0.05}), "oars": ("{}-oars", {})}


def rate(failed: torch.Tensor) -> dict[str, float]:
    n, k = failed.numel(), int(failed.sum())
    lo, hi = wilson(k, n)
    return {"failure": 100.0 * k / n, "low": lo, "high": hi}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--images", type=int, default=20)
    p.add_argument("--budget", type=int, default=10_000)
    p.add_argument("--thresholds", type=int, nargs="+", default=[25, 45])
    p.add_argument("--json", type=Path, default=None, help="write the record here")
    args = p.parse_args()
    torch.set_num_threads(1)
    model, path = load_or_train_default(progress=False)
    model.eval()
    test = load_dataset("fashion-mnist", "test")
    x, y = test.get(correctly_classified(model, test, args.images))
    cases = [(t, v) for t in args.thresholds for v in VARIANTS] + [(None, "naive"), (None, "oars")]
    rows = []
    for attack in ATTACKS:
        norm, eps, output = ATTACKS[attack]
        for threshold, variant in cases:
            name, extra = VARIANTS[variant]
            target = model if threshold is None else Blacklight(model, threshold=threshold, seed=0)
            oracle = Oracle(target, output=output, budget=args.budget)
            t0 = time.perf_counter()
            result = make_attack(name.format(attack), eps=eps, norm=norm, seed=0, **extra)(oracle, x, y)
            seconds = time.perf_counter() - t0
            fooled = predict(model, result.x_adv) != y
            if result.distance is not None:  # label-only: x_adv is the closest point, maybe outside eps
                fooled &= result.distance <= eps + EPS_TOL
            row = {
                "attack": attack,
                "norm": norm,
                "eps": eps,
                "defense": "none" if threshold is None else f"blacklight:threshold={threshold}",
                "variant": variant,
                "observed": rate(~result.success),
                "clean": rate(~fooled),
                "detection": float(oracle.refusals.sum()) / max(float(oracle.counts.sum()), 1.0),
                "mean_queries": float(oracle.counts.double().mean()),
                "seconds": seconds,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
    record = {
        **provenance(model_sha256(str(path), None), "python " + " ".join(sys.argv)),
        "images": f"the first {args.images} Fashion-MNIST test images the default model classifies correctly",
        "budget": args.budget,
        "threads": 1,
        "torch": torch.__version__,
        "rows": rows,
    }
    if args.json:
        args.json.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
