"""RND wrapper throughput as a ratio of the bare model's, measured in one run.

    python bench/defense_throughput.py [--batch 100] [--threads 1] [--seconds 3]

Prints images/s of the bare model and of RandomNoiseDefense(model, nu) at the same batch size,
and their ratio (expect > 0.95 on the default small CNN). Timings interleave the two to cancel
drift; only the ratio is meaningful across machines.
"""

from __future__ import annotations

import argparse
import time

import torch

from rnd import RandomNoiseDefense
from rnd.models import build_model


def images_per_second(model: torch.nn.Module, x: torch.Tensor, seconds: float) -> float:
    n = 0
    start = time.perf_counter()
    with torch.inference_mode():
        while time.perf_counter() - start < seconds:
            model(x)
            n += x.shape[0]
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="small-cnn")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--nu", type=float, default=0.02)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model = build_model(args.arch, (1, 28, 28), 10, dataset="fashion-mnist").eval()
    defended = RandomNoiseDefense(model, nu=args.nu, seed=0)
    x = torch.rand(args.batch, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    images_per_second(model, x, 0.5)  # warm-up
    bare, rnd = [], []
    for _ in range(args.rounds):
        bare.append(images_per_second(model, x, args.seconds))
        rnd.append(images_per_second(defended, x, args.seconds))
    b, r = max(bare), max(rnd)
    print(f"{args.arch}, batch {args.batch}, {args.threads} thread(s), nu={args.nu}")
    print(f"bare model      {b:10.0f} images/s")
    print(f"RND wrapper     {r:10.0f} images/s")
    print(f"ratio RND/bare  {r / b:10.3f}")


if __name__ == "__main__":
    main()
