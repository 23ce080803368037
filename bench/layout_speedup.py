"""Contiguous against channels-last weights for the model's CPU forward (`rnd.device.AUTO_CHANNELS_LAST`).

    python bench/layout_speedup.py [--model SPEC] [--batch 1 64 128 256] [--threads 1 2] [--rounds 2]

Images/s of the same model (two copies loaded from the same file: one left contiguous, one put in
channels-last layout by `rnd.device.use_channels_last`) at each batch and thread count, measured in
alternating rounds so that a change in the machine's load hits both alike, best of `--rounds`;
and the largest |difference| of their logits (the layouts sum in different orders). Default model:
the trained default checkpoint (`--model` takes any spec `rnd.models.load_model` takes).
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from rnd.device import use_channels_last
from rnd.models.source import load_model
from rnd.training import default_checkpoint_path


def rate(model: torch.nn.Module, x: torch.Tensor, seconds: float) -> float:
    """Images per second of model(x), run for about `seconds`."""
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or n < 3:
        model(x)
        n += 1
    return n * x.shape[0] / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default=str(default_checkpoint_path()))
    p.add_argument("--batch", type=int, nargs="+", default=[1, 64, 128, 256])
    p.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--seconds", type=float, default=1.5)
    args = p.parse_args()
    flat, info = load_model(args.model, device="cpu")
    flat.to(memory_format=torch.contiguous_format)  # load_model already prefers channels-last
    nhwc, _ = load_model(args.model, device="cpu")
    assert use_channels_last(nhwc, info.input_shape, torch.device("cpu")), "no channels-last layout"
    print(f"model {args.model} (sha256 {info.sha256[:12]}), load average {os.getloadavg()[0]:.2f}")
    print(f"{'threads':>7}{'batch':>7}{'contiguous':>12}{'channels-last':>15}{'ratio':>7}{'max |diff|':>12}")
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for threads in args.threads:
            torch.set_num_threads(threads)
            for b in args.batch:
                x = torch.rand(b, *info.input_shape, generator=gen)
                diff = float((flat(x) - nhwc(x)).abs().max())
                best = [0.0, 0.0]
                for _ in range(args.rounds):
                    best[0] = max(best[0], rate(flat, x, args.seconds))
                    best[1] = max(best[1], rate(nhwc, x, args.seconds))
                ratio = best[1] / best[0]
                print(f"{threads:>7}{b:>7}{best[0]:>12,.0f}{best[1]:>15,.0f}{ratio:>7.2f}{diff:>12.1e}")
    print(f"load average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
