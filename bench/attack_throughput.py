"""Attack throughput as a ratio of the bare model's forward throughput, measured in one run.

    python bench/attack_throughput.py [--attack NAME ...] [--budget 300] [--batch 100] [--rounds 3]
        [--model SPEC --dataset NAME] [--json RECORD.json]

For every query attack (not the surrogate attacks or the OARS counters), score-based and
label-only (l_inf, eps 0.1 by default; label-only attacks get a labels oracle and run their whole
budget) on the default model architecture (the
trained default checkpoint when present, otherwise a freshly initialised small CNN, which the
output says), one thread: run the attack on a batch of 100 test images for a fixed per-image
budget and count the images it forwards (the oracle's counts, i.e. queries). The ratio printed
is (forwarded images / s of the attack) / (images / s of plain model forwards at batch 100),
both measured in the same run, interleaved, best of `--rounds`. Plain forwards get a new input
tensor each time (as the attack's queries do); the column `hot` is the ratio against
forwarding one and the same tensor again and again, whose activations stay in the CPU caches
(about 10 % faster per image on this machine, a speed no attack's fresh queries can have). The
raw throughput at the attack's own mean forward batch is reported too, with the ratio against
it. NES and ZO-signSGD query thousands of images at once (100 images x 30 or 60 probes); the
oracle forwards them in CPU chunks of at most 128 (`Oracle.cpu_chunk`), because on one CPU
thread batches of a few hundred images or more run up to 2x slower per image than batch 100.

The images are the correctly classified test images with the largest clean margin, so that the
batch stays full for most of the budget; the mean forward batch shows how full it stayed.
`--model` measures any model `rnd.models.load_model` takes (checkpoint, TorchScript, or
`package.module:factory`) on `--dataset`'s test images, e.g. EfficientNet-Lite0 on ImageNet:
`--model rnd.models.imagenet:efficientnet_lite0 --dataset imagenet-samples --batch 16` (17 of the
20 samples are classified correctly: a batch beyond that includes misclassified images).
With `--nu` > 0 the same is measured against the RND-defended model (raw = defended forwards).

The last column, `in model`, is the share of the attack's own time spent inside the model's
forward (median over rounds), measured within the attack run itself, so it is free of the
run-to-run noise of a shared machine (two 1.5 s raw measurements here can differ by 10 %): one
minus it is the attack's own overhead (masks, estimates, projections, the oracle's accounting).

`--json PATH` also writes the rows as a results record with its provenance (date, commit,
checkpoint sha256, machine, command: `bench/provenance.py`); the docs' throughput page is
rendered from the committed one, `docs/results/records/throughput.json`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from rnd import Oracle, RandomNoiseDefense
from rnd.attacks import ATTACKS, QUERY_ATTACKS, make_attack
from rnd.data import load_dataset
from rnd.device import prefer_channels_last
from rnd.models import build_model, checkpoint_paths, load_checkpoint
from rnd.models import load_model as load_model_spec
from rnd.training import default_checkpoint_path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from provenance import provenance  # bench/provenance.py, beside this script

#: CPU time of this process by default: on a shared machine it is far less disturbed by other
#: processes than wall time (with one thread the two agree on an idle machine). --clock wall.
clock = time.process_time


def load_model(spec: str | None = None) -> tuple[nn.Module, str, str | None]:
    """The model `spec` names (`rnd.models.load_model`); by default the trained default checkpoint
    if present, else a freshly initialised small CNN. Also its description and sha256 (None for
    a fresh one)."""
    if spec is not None:
        model, info = load_model_spec(spec, device="cpu")
        return model, f"{spec} ({info.kind}, sha256 {info.sha256[:12]})", info.sha256
    weights, meta = checkpoint_paths(default_checkpoint_path())
    if weights.exists() and meta.exists():
        model, cmeta = load_checkpoint(default_checkpoint_path())
        return model, f"trained default checkpoint {weights}", cmeta.sha256
    model = build_model("small-cnn", (1, 28, 28), 10, dataset="fashion-mnist")
    return model.eval(), "freshly initialised small-cnn (no trained checkpoint found)", None


@torch.inference_mode()
def hard_images(
    model: nn.Module, n: int, pool: int = 2000, dataset: str = "fashion-mnist"
) -> tuple[torch.Tensor, torch.Tensor]:
    """The `n` correctly classified test images (of the first `pool`) with the largest margin."""
    data = load_dataset(dataset, "test")
    x, y = data.get(torch.arange(min(pool, len(data))))
    logp = torch.cat([model(c) for c in x.split(500)]).log_softmax(1)
    own = logp.gather(1, y[:, None]).squeeze(1)
    margin = own - logp.scatter(1, y[:, None], -float("inf")).amax(1)
    keep = margin.argsort(descending=True)[:n]
    return x[keep], y[keep]


@torch.inference_mode()
def raw_rate(model: nn.Module, batch: int, seconds: float, x: torch.Tensor, distinct: int = 16) -> float:
    """Images / s of plain forwards of `batch` images (tiled from x).

    Each forward gets a fresh input tensor, cycling through `distinct` batches, as an attack's
    queries are: forwarding one tensor over and over keeps it and its activations hot in the CPU
    caches and runs about 10 % faster per image here than new inputs (`distinct=1` measures that).
    """
    reps = -(-batch // x.shape[0])
    xb = x.repeat(reps, 1, 1, 1)[:batch].contiguous()
    g = torch.Generator().manual_seed(0)
    pool = [xb] + [(xb + 1e-3 * torch.rand(xb.shape, generator=g)).clamp(0, 1) for _ in range(distinct - 1)]
    n, i, start = 0, 0, clock()
    while clock() - start < seconds:
        model(pool[i % distinct])
        n, i = n + batch, i + 1
    return n / (clock() - start)


@contextmanager
def forward_seconds(model: nn.Module) -> Iterator[list[float]]:
    """Adds up the clock time spent inside `model`'s forward into the yielded one-element list
    (forward hooks: the oracle still sees the model itself, RND wrapper included)."""
    total, start = [0.0], [0.0]

    def before(*_: object) -> None:
        start[0] = clock()

    def after(*_: object) -> None:
        total[0] += clock() - start[0]

    handles = (model.register_forward_pre_hook(before), model.register_forward_hook(after))
    try:
        yield total
    finally:
        for h in handles:
            h.remove()


class CallCountingOracle(Oracle):
    """An Oracle that also counts query calls (to report the attack's images per query)."""

    calls = 0

    def query(self, x: torch.Tensor, ids: torch.Tensor, eot: int | None = None) -> torch.Tensor:
        self.calls += 1
        return super().query(x, ids, eot)


def attack_rate(
    name: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, budget: int, seed: int
) -> tuple[float, float, float, float, float]:
    """(forwarded images / s, images per query call, images per model forward, success rate,
    share of the attack's time spent inside the model's forward)."""
    labels = ATTACKS[name].feedback == "labels"
    # label-only attacks run the whole budget (stop_at_eps=False), so their batch stays full too
    extra = {"stop_at_eps": False} if labels else {}
    attack = make_attack(name, eps=eps, norm="linf", seed=seed, **extra)
    oracle = CallCountingOracle(model, budget=budget, output="labels" if labels else "probs")
    with forward_seconds(model) as in_model:
        start = clock()
        result = attack(oracle, x, y)
        elapsed = clock() - start
    images = int(result.queries.sum())
    return (
        images / elapsed,
        images / max(oracle.calls, 1),
        images / max(oracle.forwards, 1),
        float(result.success.float().mean()),
        in_model[0] / elapsed,
    )


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument(
        "--attack", action="append", default=None, help="attack name (default: every query attack but OARS)"
    )
    p.add_argument("--budget", type=int, default=300, help="queries per image")
    p.add_argument("--batch", type=int, default=100)
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--nu", type=float, default=0.02, help="RND level of the defended run (0 = skip)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--seconds", type=float, default=1.5, help="duration of each raw measurement")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model", default=None, help="checkpoint, TorchScript file or package.module:factory")
    p.add_argument("--dataset", default="fashion-mnist", help="test images to attack (a data set name)")
    p.add_argument("--clock", choices=("cpu", "wall"), default="cpu", help="process CPU time or wall time")
    p.add_argument("--json", default=None, help="also write the rows as a results record (with provenance)")
    args = p.parse_args()
    global clock
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    torch.set_num_threads(args.threads)
    base, origin, sha = load_model(args.model)
    x, y = hard_images(base, args.batch, dataset=args.dataset)
    # the layout every oracle here puts the model in (rnd.device), before the raw forwards too
    layout = "channels-last" if prefer_channels_last(base, x.shape[1:]) else "contiguous"
    # by default the attacks that need nothing but the oracle (surrogate attacks need --surrogate
    # models; the OARS counters are for stateful detectors)
    names = args.attack or sorted(n for n in QUERY_ATTACKS if not n.endswith("-oars"))
    models = {"none": base}
    if args.nu > 0:
        models[f"rnd nu={args.nu:g}"] = RandomNoiseDefense(base, nu=args.nu, seed=0)
    print(f"model: {origin}, {layout} weights")
    print(
        f"l_inf eps={args.eps}, {args.batch} images (largest clean margin), budget {args.budget}, "
        f"{args.threads} thread(s), best of {args.rounds} interleaved rounds, {args.clock} time\n"
    )
    head = (
        f"{'attack':<13}{'defense':<13}{'attack img/s':>13}{'raw@batch':>11}{'ratio':>7}"
        f"{'query batch':>12}{'fwd batch':>10}{'raw@fwd':>9}{'ratio':>7}{'success':>9}{'hot':>8}"
        f"{'in model':>10}"
    )
    print(head)
    print("-" * len(head))
    rows = []
    for name in names:
        for label, model in models.items():
            best_attack = best_raw = best_raw_fwd = best_hot = 0.0
            qb = fwd = succ = 0.0
            shares = []
            for r in range(args.rounds):
                best_raw = max(best_raw, raw_rate(model, args.batch, args.seconds, x))
                best_hot = max(best_hot, raw_rate(model, args.batch, args.seconds, x, distinct=1))
                rate, qb, fwd, succ, share = attack_rate(name, model, x, y, args.eps, args.budget, seed=r)
                shares.append(share)
                best_attack = max(best_attack, rate)
                big = max(round(fwd), 1)
                best_raw_fwd = max(best_raw_fwd, raw_rate(model, big, args.seconds, x))
            print(
                f"{name:<13}{label:<13}{best_attack:>13.0f}{best_raw:>11.0f}{best_attack / best_raw:>7.3f}"
                f"{qb:>12.0f}{fwd:>10.0f}{best_raw_fwd:>9.0f}{best_attack / best_raw_fwd:>7.3f}{succ:>9.2f}"
                f"{best_attack / best_hot:>8.3f}{sorted(shares)[len(shares) // 2]:>10.3f}",
                flush=True,
            )
            rows.append(
                {
                    "attack": name,
                    "feedback": ATTACKS[name].feedback,
                    "defense": label,
                    "attack_images_per_s": best_attack,
                    "raw_images_per_s": best_raw,
                    "ratio": best_attack / best_raw,
                    "query_batch": qb,
                    "forward_batch": fwd,
                    "ratio_at_forward_batch": best_attack / best_raw_fwd,
                    "in_model": sorted(shares)[len(shares) // 2],
                }
            )
    if args.json:
        keys = ("budget", "batch", "eps", "nu", "rounds", "threads", "clock")
        settings = {k: getattr(args, k) for k in keys}
        record = {
            "study": "throughput",
            **provenance(sha, "python " + " ".join(sys.argv)),
            "images": f"the {args.batch} correctly classified {args.dataset} test images "
            "(of the first 2,000) with the largest clean margin",
            "model": origin,
            "layout": layout,
            "settings": settings,
            "rows": rows,
        }
        with open(args.json, "w") as f:
            json.dump(record, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
