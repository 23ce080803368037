"""One device check, one table: attack throughput against raw forwards, read-backs per step, a quick
main table on VGG-16 and the quick audit, on a GPU when there is one (else on the CPU).

    bench/gpu.sh [--device cuda|cpu] [--batch 500] [--parts throughput,table,audit] [--json OUT.json]

Run from the repository root (`bench/gpu.sh` sets PYTHONPATH to it, so the machine needs torch and
rnd's runtime dependencies, not an installed rnd). Parts:

- **throughput**: for each model (the default Fashion-MNIST small CNN from `bench/audit-full`,
  VGG-16 in the CIFAR-10 shape, EfficientNet-Lite0 when the `imagenet` extra is installed) and each
  query attack (score-based and label-only; transfer and hybrid attacks need surrogates and are left
  out), the images/s the attack forwards against the images/s of plain forwards at the same batch,
  wall clock with the device synchronised, in one run. Label-only attacks run their whole budget.
  Also per model forward: the host conversions the attack makes (`Tensor.cpu` / `.item` /
  `.tolist`, counted on any device) and, on CUDA, the synchronising calls
  (`torch.cuda.set_sync_debug_mode("warn")`): the device read-backs.
- **table**: the main table's score-based rows (seven attacks, l_inf 0.1 and l_2 1.5) on VGG-16,
  undefended and behind RND nu 0.02, on 20 images at 200 queries each: the time of the whole table.
  VGG-16 is freshly initialised (no CIFAR-10 data or checkpoint travels with the repository) and
  its images are uniform noise labelled with its own predictions, so the failure rates say nothing
  about robustness; the time is the figure.
- **audit**: `rnd audit --quick` of the default checkpoint (`RND_HOME=bench/audit-full`, the
  committed surrogate zoo) on the device, timed; skipped with a note when Fashion-MNIST's files are
  not on the machine.

On a GPU the defaults (batch 500, all three models) are sized to finish in under 8 minutes; on
the CPU the same script measures the small CNN at batch 100, and the table on 4 images at 80
queries (VGG-16 forwards about 100 images/s on one CPU thread), unless told otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
HOME = ROOT / "bench" / "audit-full"
CHECKPOINT = HOME / "checkpoints" / "fashion-mnist-small-cnn"
#: Attacks that need surrogates or a stateful defense, not part of the throughput rows.
SKIP = {"i-fgsm", "mi-fgsm", "ni-fgsm", "di-fgsm", "vmi-fgsm", "ti-fgsm"}
SKIP |= {"gfcs", "p-rgf", "square-ts", "signhunter-ts", "hsja-ts", "psj-ts", "square-oars", "hsja-oars"}
TABLE_ATTACKS = (
    ("nes", "linf"), ("zo-signsgd", "linf"), ("bandits", "linf"), ("simba", "linf"),
    ("square", "linf"), ("signhunter", "linf"), ("parsimonious", "linf"),
    ("nes", "l2"), ("zo-signsgd", "l2"), ("bandits", "l2"), ("simba", "l2"), ("square", "l2"),
    ("signhunter", "l2"),
)  # fmt: skip


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def readbacks(device: torch.device):
    """Counts host conversions (Tensor.cpu/.item/.tolist) and, on CUDA, synchronising calls."""
    counts = {"host": 0, "sync": 0}
    originals = {name: getattr(torch.Tensor, name) for name in ("cpu", "item", "tolist")}

    def wrap(f):
        def g(self, *a, **k):
            counts["host"] += 1
            return f(self, *a, **k)

        return g

    for name, f in originals.items():
        setattr(torch.Tensor, name, wrap(f))
    caught: list[warnings.WarningMessage] = []
    try:
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode("warn")
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield counts
    finally:
        if device.type == "cuda":
            torch.cuda.set_sync_debug_mode(0)
        for name, f in originals.items():
            setattr(torch.Tensor, name, f)
        counts["sync"] = sum("synchroniz" in str(w.message) for w in caught)


def models(
    device: torch.device, batch: int, only: set[str]
) -> list[tuple[str, nn.Module, torch.Tensor, torch.Tensor, str]]:
    """(name, model, images, labels, where the images come from) for each model measured."""
    from rnd.data import load_dataset
    from rnd.device import prefer_channels_last
    from rnd.extras import find_spec
    from rnd.models import build_model, load_checkpoint

    out = []
    cnn, _ = load_checkpoint(CHECKPOINT)
    try:
        data = load_dataset("fashion-mnist", "test")
        x, y = data.get(torch.arange(min(len(data), 4 * batch)))
        origin = "Fashion-MNIST test images the model classifies correctly"
    except Exception as exc:  # the data set's files are not on this machine
        x, y = torch.rand(4 * batch, 1, 28, 28), torch.zeros(4 * batch, dtype=torch.long)
        origin = f"uniform noise (Fashion-MNIST unavailable: {str(exc).splitlines()[0][:60]})"
    out.append(("small-cnn", cnn, x, y, origin))
    torch.manual_seed(0)
    vgg = build_model("vgg16", (3, 32, 32), 10, dataset="cifar10")
    out.append(("vgg16", vgg, torch.rand(batch, 3, 32, 32), None, "uniform noise, own predictions"))
    if find_spec("efficientnet_lite_pytorch") is not None:
        from rnd.models.imagenet import efficientnet_lite0

        net = efficientnet_lite0()
        out.append(
            (
                "efficientnet-lite0",
                net,
                torch.rand(batch, 3, 224, 224),
                None,
                "uniform noise, own predictions",
            )
        )
    done = []
    for name, model, x, y, origin in out:
        if name not in only:
            continue
        model = model.to(device).eval()
        if device.type == "cpu":
            prefer_channels_last(model, x.shape[1:])
        x = x.to(device)
        with torch.inference_mode():
            pred = torch.cat([model(c) for c in x.split(100)]).argmax(1)
        if y is None:
            y = pred
        else:
            keep = (pred == y.to(device)).nonzero().flatten()[:batch]
            x, y = x[keep], y.to(device)[keep]
        if x.shape[0] < batch:  # tile to the batch (throughput only)
            reps = -(-batch // x.shape[0])
            x, y = x.repeat(reps, 1, 1, 1)[:batch], y.repeat(reps)[:batch]
        done.append((name, model, x[:batch].contiguous(), y[:batch].clone(), origin))
    return done


@torch.inference_mode()
def raw_rate(model: nn.Module, x: torch.Tensor, seconds: float, device: torch.device) -> float:
    """Images/s of plain forwards of the batch x (fresh inputs each time, 8 in rotation)."""
    g = torch.Generator(device="cpu").manual_seed(0)
    pool = [x] + [(x + 1e-3 * torch.rand(x.shape, generator=g).to(device)).clamp(0, 1) for _ in range(7)]
    model(pool[0])
    sync(device)
    n, i, start = 0, 0, time.perf_counter()
    while time.perf_counter() - start < seconds or i < 3:
        model(pool[i % len(pool)])
        n, i = n + x.shape[0], i + 1
        if i % 8 == 0:
            sync(device)
    sync(device)
    return n / (time.perf_counter() - start)


def attack_rate(
    name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, budget: int, device: torch.device
) -> dict[str, Any]:
    from rnd import Oracle
    from rnd.attacks import ATTACKS, make_attack

    labels = ATTACKS[name].feedback == "labels"
    extra = {"stop_at_eps": False} if labels else {}
    eps = 0.1 if "linf" in ATTACKS[name].norms else 1.5
    norm = "linf" if "linf" in ATTACKS[name].norms else "l2"
    attack = make_attack(name, eps=eps, norm=norm, seed=0, **extra)
    budget = max(budget, 2 * attack.min_budget)  # NES and ZO-signSGD spend tens of queries a step
    oracle = Oracle(model, budget=budget, output="labels" if labels else "probs", device=device)
    sync(device)
    with readbacks(device) as counts:
        start = time.perf_counter()
        result = attack(oracle, x, y)
        sync(device)
        elapsed = time.perf_counter() - start
    images = int(result.queries.sum())
    return {
        "attack": name,
        "feedback": ATTACKS[name].feedback,
        "attack_images_per_s": images / elapsed,
        "forwards": oracle.forwards,
        "host_per_forward": counts["host"] / max(oracle.forwards, 1),
        "sync_per_forward": counts["sync"] / max(oracle.forwards, 1),
        "seconds": elapsed,
    }


def throughput(
    device: torch.device, batch: int, budgets: dict[str, int], seconds: float, only: set[str]
) -> list[dict[str, Any]]:
    from rnd.attacks import ATTACKS

    rows = []
    names = [n for n in sorted(ATTACKS) if n not in SKIP]
    for model_name, model, x, y, origin in models(device, batch, only):
        raw = raw_rate(model, x, seconds, device)
        print(f"\n{model_name}: raw forward {raw:,.0f} images/s at batch {x.shape[0]} ({origin})", flush=True)
        for name in names:
            row = attack_rate(name, model, x, y, budgets.get(model_name, 20), device)
            raw_after = raw_rate(model, x, seconds / 2, device)  # the machine's state may drift
            best = max(raw, raw_after)
            row.update(
                model=model_name,
                batch=x.shape[0],
                raw_images_per_s=best,
                ratio=row["attack_images_per_s"] / best,
            )
            bar = 0.95 if row["feedback"] == "scores" else 0.90
            print(
                f"  {name:<16}{row['attack_images_per_s']:>12,.0f}{best:>12,.0f}{row['ratio']:>8.3f}"
                f"{'' if row['ratio'] >= bar else ' below bar':>11}"
                f"{row['host_per_forward']:>9.2f}{row['sync_per_forward']:>9.2f}",
                flush=True,
            )
            rows.append(row)
    return rows


def main_table(device: torch.device, images: int, budget: int) -> dict[str, Any]:
    from rnd import Oracle, RandomNoiseDefense
    from rnd.attacks import make_attack
    from rnd.models import build_model

    torch.manual_seed(0)
    model = build_model("vgg16", (3, 32, 32), 10, dataset="cifar10").to(device).eval()
    x = torch.rand(images, 3, 32, 32, device=device)
    with torch.inference_mode():
        y = model(x).argmax(1)
    cells = []
    start = time.perf_counter()
    for name, norm in TABLE_ATTACKS:
        for nu in (0.0, 0.02):
            net = RandomNoiseDefense(model, nu=nu, seed=0) if nu else model
            attack = make_attack(name, eps=0.1 if norm == "linf" else 1.5, norm=norm, seed=0)
            t0 = time.perf_counter()
            r = attack(Oracle(net, budget=budget, device=device), x, y)
            sync(device)
            cells.append(
                {
                    "attack": name,
                    "norm": norm,
                    "nu": nu,
                    "failure_rate": r.failure_rate,
                    "seconds": time.perf_counter() - t0,
                }
            )
    total = time.perf_counter() - start
    print(
        f"\nmain table on VGG-16 (freshly initialised), {len(cells)} cells, "
        f"{images} images x {budget} queries: {total:.1f} s",
        flush=True,
    )
    return {"cells": cells, "seconds": total, "images": images, "budget": budget}


def quick_audit(device: torch.device, threads: int) -> dict[str, Any]:
    from rnd.data import load_dataset

    try:
        load_dataset("fashion-mnist", "test")
    except Exception as exc:
        note = f"skipped: Fashion-MNIST is not on this machine ({str(exc).splitlines()[0][:80]})"
        print(f"\nquick audit {note}", flush=True)
        return {"skipped": note}
    out = Path(tempfile.mkdtemp(prefix="gpu-check-audit-"))
    cmd = [
        sys.executable, "-c", "from rnd.cli import main; main()", "--threads", str(threads),
        "--device", device.type, "audit", "--quick", "--out", str(out),
    ]  # fmt: skip
    env = {**os.environ, "RND_HOME": str(HOME), "PYTHONPATH": str(ROOT)}
    t0 = time.perf_counter()
    res = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    tail = (res.stdout + res.stderr).strip().splitlines()[-12:]
    print(f"\nquick audit on {device.type}: exit {res.returncode}, {seconds:.0f} s", flush=True)
    print("\n".join("  " + line for line in tail), flush=True)
    return {"exit": res.returncode, "seconds": seconds, "tail": tail}


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--batch", type=int, default=None, help="[default: 500 on a GPU, 100 on the CPU]")
    p.add_argument("--parts", default="throughput,table,audit")
    p.add_argument(
        "--models",
        default=None,
        help="throughput models, of small-cnn,vgg16,efficientnet-lite0 "
        "[default: all on a GPU, small-cnn on the CPU]",
    )
    p.add_argument(
        "--seconds", type=float, default=None, help="raw forward measurement [default: 1.0 GPU, 1.5 CPU]"
    )
    p.add_argument("--threads", type=int, default=1, help="CPU threads")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    device = torch.device(args.device)
    gpu = device.type == "cuda"
    torch.set_num_threads(args.threads)
    batch = args.batch or (500 if gpu else 100)
    seconds = args.seconds or (1.0 if gpu else 1.5)
    budgets = (
        {"small-cnn": 200, "vgg16": 40, "efficientnet-lite0": 10}
        if gpu
        else {"small-cnn": 100, "vgg16": 10, "efficientnet-lite0": 4}
    )
    parts = set(args.parts.split(","))
    name = torch.cuda.get_device_name(device) if gpu else f"CPU, {args.threads} thread(s)"
    print(f"device: {name}; torch {torch.__version__}; batch {batch}; budgets {budgets}", flush=True)
    print(
        f"{'':2}{'attack':<16}{'attack img/s':>12}{'raw img/s':>12}{'ratio':>8}{'':>11}"
        f"{'host/fwd':>9}{'sync/fwd':>9}"
    )
    record: dict[str, Any] = {"device": name, "torch": torch.__version__, "batch": batch, "budgets": budgets}
    t0 = time.perf_counter()
    only = set((args.models or ("small-cnn,vgg16,efficientnet-lite0" if gpu else "small-cnn")).split(","))
    if "throughput" in parts:
        record["throughput"] = throughput(device, batch, budgets, seconds, only)
    if "table" in parts:  # VGG-16 forwards ~100 images/s on one CPU thread: a smaller table there
        record["table"] = main_table(device, *((20, 200) if gpu else (4, 80)))
    if "audit" in parts:
        record["audit"] = quick_audit(device, args.threads)
    record["seconds"] = time.perf_counter() - t0
    print(f"\nwhole check: {record['seconds']:.0f} s", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
