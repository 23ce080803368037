"""Hashes of every query attack's seeded results, to show that a speed-up changed no number.

    python bench/seeded_hashes.py --out before.json [--attack NAME ...]     # on the old code
    python bench/seeded_hashes.py --compare before.json                      # on the new code

For every registered query attack (transfer and hybrid attacks need surrogates and are left out),
in each norm it defines, undefended and behind RND nu 0.02: the sha256 of its x_adv, success and
query counts on the 30 correctly classified test images (of the first 300) with the largest clean
margin, 400 queries per image, seed 3, one torch thread, on the default checkpoint (`RND_HOME`
decides which; `bench/audit-full` for the audited one). `--compare` prints which differ from a
file written by `--out` and exits 1 if any does. To hash an older commit, run this script from a
worktree of it (`git worktree add /tmp/old REV`, then `PYTHONPATH=/tmp/old python
/tmp/old/bench/seeded_hashes.py --out before.json` once the script exists there, or this copy with
`PYTHONPATH` pointing at the old tree).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from attack_throughput import hard_images, load_model  # bench/attack_throughput.py, beside this script

from rnd import Oracle, RandomNoiseDefense
from rnd.attacks import ATTACKS, make_attack
from rnd.device import prefer_channels_last

#: Attacks that craft on surrogate models (they need --surrogate): not hashed here.
SURROGATE_ATTACKS = {"i-fgsm", "mi-fgsm", "ni-fgsm", "di-fgsm", "vmi-fgsm", "ti-fgsm"}
SURROGATE_ATTACKS |= {"gfcs", "p-rgf", "square-ts", "signhunter-ts", "hsja-ts", "psj-ts"}


def hashes(names: list[str]) -> dict[str, str]:
    base, _, _ = load_model()
    x, y = hard_images(base, 30, pool=300)
    prefer_channels_last(base, x.shape[1:])
    out = {}
    for name in names:
        for norm in ATTACKS[name].norms:
            for nu in (0.0, 0.02):
                model = RandomNoiseDefense(base, nu=nu, seed=0) if nu else base
                labels = ATTACKS[name].feedback == "labels"
                attack = make_attack(name, eps=0.1 if norm == "linf" else 1.5, norm=norm, seed=3)
                result = attack(Oracle(model, budget=400, output="labels" if labels else "probs"), x, y)
                h = hashlib.sha256()
                for t in (result.x_adv, result.success, result.queries):
                    h.update(t.contiguous().numpy().tobytes())
                key = f"{name}/{norm}/nu={nu:g}"
                out[key] = h.hexdigest()[:16]
                print(f"{key:<32} {out[key]}  success {float(result.success.float().mean()):.2f}", flush=True)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument(
        "--attack", action="append", default=None, help="attack name (default: every query attack)"
    )
    p.add_argument("--out", default=None, help="write the hashes to this JSON file")
    p.add_argument("--compare", default=None, help="compare with hashes written by --out")
    args = p.parse_args()
    torch.set_num_threads(1)
    names = args.attack or [n for n in sorted(ATTACKS) if n not in SURROGATE_ATTACKS]
    got = hashes(names)
    if args.out:
        Path(args.out).write_text(json.dumps(got, indent=1) + "\n")
    if args.compare:
        want = json.loads(Path(args.compare).read_text())
        changed = [k for k in got if k in want and want[k] != got[k]]
        print(f"{len(got)} hashed, {len(changed)} changed" + (": " + ", ".join(changed) if changed else ""))
        sys.exit(1 if changed else 0)


if __name__ == "__main__":
    main()
