"""Eager against compiled forwards of the oracle's model on the CPU (issue 16): images/s at batch
1, 64 and 256 with 1 thread, and the largest |difference| of the logits.

    python bench/compile_speedup.py [--checkpoint PATH] [--seconds 2] [--json]

Compiled forms: `torch.compile(model, dynamic=True)` (what `Oracle(compile=True)` uses) and a frozen
TorchScript trace (`torch.jit.freeze(torch.jit.trace(model, x))`, for comparison: a trace is only
safe for deterministic, stateless models, so no oracle uses it). Ratios are within one run, in
alternating rounds, so a change in the machine's load hits both sides alike; the load average is
printed with the figures. Also the model `rnd.models.imagenet:efficientnet_lite0` when it exists.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from rnd.models import load_checkpoint
from rnd.oracle.local import compile_model

DEFAULT = Path.home() / ".cache" / "rnd" / "checkpoints" / "fashion-mnist-small-cnn"


def rate(f: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, seconds: float) -> float:
    """Images per second of f(x), run for about `seconds`."""
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds or n < 3:
        f(x)
        n += 1
    return n * x.shape[0] / elapsed


def measure(
    model: nn.Module, shape: tuple[int, ...], batches: list[int], seconds: float, rounds: int
) -> dict:
    gen = torch.Generator().manual_seed(0)
    out: dict = {"batches": {}}
    with torch.inference_mode():
        t = time.perf_counter()
        compiled = compile_model(model, True)
        compiled(torch.rand(2, *shape, generator=gen))
        compiled(torch.rand(3, *shape, generator=gen))  # the dynamic-shape graph
        out["compile_s"] = round(time.perf_counter() - t, 1)
        traced = torch.jit.freeze(torch.jit.trace(model, torch.rand(2, *shape, generator=gen)))
        for b in batches:
            x = torch.rand(b, *shape, generator=gen)
            ref = model(x)
            row = {
                "max_abs_diff_compile": float((compiled(x) - ref).abs().max()),
                "max_abs_diff_trace": float((traced(x) - ref).abs().max()),
            }
            eager_r, comp_r, trace_r = [], [], []
            for _ in range(rounds):  # alternate, so load changes hit all three
                eager_r.append(rate(model, x, seconds))
                comp_r.append(rate(compiled, x, seconds))
                trace_r.append(rate(traced, x, seconds))
            med = lambda v: sorted(v)[len(v) // 2]  # noqa: E731
            row.update(
                eager_img_s=round(med(eager_r)),
                compile_img_s=round(med(comp_r)),
                trace_img_s=round(med(trace_r)),
                compile_speedup=round(med([c / e for c, e in zip(comp_r, eager_r, strict=True)]), 3),
                trace_speedup=round(med([t / e for t, e in zip(trace_r, eager_r, strict=True)]), 3),
            )
            out["batches"][b] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=str(DEFAULT))
    ap.add_argument("--seconds", type=float, default=1.0, help="per measurement")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batches", default="1,64,256")
    ap.add_argument("--models", default="small-cnn,efficientnet_lite0", help="comma-separated")
    ap.add_argument("--lite-batches", default="1,64", help="EfficientNet-Lite0 (224x224) batches")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    batches = [int(b) for b in args.batches.split(",")]
    report = {"torch": torch.__version__, "threads": 1, "load_before": os.getloadavg()[0], "models": {}}
    wanted = args.models.split(",")
    if "small-cnn" in wanted:
        model, _ = load_checkpoint(args.checkpoint, device="cpu")
        report["models"]["small-cnn"] = measure(
            model.eval(), tuple(model.input_shape), batches, args.seconds, args.rounds
        )
        print(json.dumps(report["models"]["small-cnn"]), file=sys.stderr, flush=True)
    if "efficientnet_lite0" in wanted:
        try:
            factory = importlib.import_module("rnd.models.imagenet").efficientnet_lite0
        except (ImportError, AttributeError):
            report["models"]["efficientnet_lite0"] = (
                "not available (no rnd.models.imagenet:efficientnet_lite0)"
            )
        else:
            lite = factory(device="cpu").eval()
            lite_batches = [int(b) for b in args.lite_batches.split(",")]
            report["models"]["efficientnet_lite0"] = measure(
                lite, (3, 224, 224), lite_batches, args.seconds, args.rounds
            )
    report["load_after"] = os.getloadavg()[0]
    if args.json:
        print(json.dumps(report, indent=2))
        return
    print(
        f"torch {report['torch']}, 1 thread, load {report['load_before']:.2f} -> {report['load_after']:.2f}"
    )
    for name, res in report["models"].items():
        if isinstance(res, str):
            print(f"{name}: {res}")
            continue
        print(f"{name} (torch.compile took {res['compile_s']} s)")
        print("  batch   eager img/s   compile img/s (x)   trace img/s (x)   max|diff| compile / trace")
        for b, r in res["batches"].items():
            print(
                f"  {b:>5}   {r['eager_img_s']:>11}   {r['compile_img_s']:>9} ({r['compile_speedup']:.2f})"
                f"   {r['trace_img_s']:>9} ({r['trace_speedup']:.2f})"
                f"   {r['max_abs_diff_compile']:.1e} / {r['max_abs_diff_trace']:.1e}"
            )


if __name__ == "__main__":
    main()
