"""False positives of a stateful detector on clean traffic: every test image queried once, in order.

    python bench/detector_fp.py [--spec blacklight] [--salts 3] [--images 10000] [--threads 1]

Prints, per secret salt (the detector's seed), how many of the clean queries were flagged, per
10,000 queries, and which classes they were; then the mean. A clean query is flagged when it shares
more than `threshold` of its kept window hashes with an earlier clean image (on Fashion-MNIST the
black backgrounds of Sandals and Sneakers make many windows identical).
"""

from __future__ import annotations

import argparse
import os
import time
from collections import Counter

import torch

from rnd.data import load_dataset
from rnd.defenses import build_defense
from rnd.models import load_checkpoint

DEFAULT_CHECKPOINT = "~/.cache/rnd/checkpoints/fashion-mnist-small-cnn"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--spec", default="blacklight", help="detector spec (e.g. blacklight:threshold=40)")
    p.add_argument("--checkpoint", default=DEFAULT_CHECKPOINT)
    p.add_argument("--images", type=int, default=10000)
    p.add_argument("--salts", type=int, default=3, help="detectors with secret salts 0..N-1")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, _ = load_checkpoint(os.path.expanduser(args.checkpoint))
    data = load_dataset("fashion-mnist", "test")
    x, y = data.get(torch.arange(min(args.images, len(data))))
    rates = []
    print(f"{args.spec} on {len(y)} clean Fashion-MNIST test queries (one each, in order)")
    for salt in range(args.salts):
        det = build_defense(args.spec, model, seed=salt)
        if not det.stateful:
            raise SystemExit(f"{args.spec} is not a stateful defense")
        flagged = []
        t0 = time.perf_counter()
        with torch.inference_mode():
            for xb in x.split(args.batch):
                out = det(xb)
                flagged.append(out.isnan().all(1))
        f = torch.cat(flagged)
        per_10k = 10000.0 * float(f.float().mean())
        rates.append(per_10k)
        classes = Counter(data.classes[int(c)] if hasattr(data, "classes") else int(c) for c in y[f].tolist())
        print(
            f"salt {salt}: {int(f.sum())} flagged = {per_10k:.0f} per 10,000 queries "
            f"({time.perf_counter() - t0:.1f} s); by class: {dict(classes.most_common())}"
        )
    print(f"mean: {sum(rates) / len(rates):.0f} false positives per 10,000 clean queries")


if __name__ == "__main__":
    main()
