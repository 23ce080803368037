"""HopSkipJump side by side: rnd's, ART's and foolbox's, on one model, images, eps and budget.

    python bench/decision_peers.py [--images 50] [--budget 10000] [--norm l2 --norm linf] [--threads 1]
        [--part both|strength|throughput]

Needs the bench extra (`pip install -e '.[bench]'`: adversarial-robustness-toolbox, foolbox).

Strength: every implementation attacks each image alone through ONE counting wrapper around the
undefended default model. The wrapper counts every forwarded image and checks each one: is it
misclassified, and how far is it from the clean image. An image's outcome is read off what was
forwarded, not off what an implementation reports: success when some forwarded image within the
first `budget` was misclassified within eps, its queries = the position of the first such image,
and its distance = the smallest distance of a misclassified forwarded image within the budget.
That is generous to the references (a probe they did not notice still counts) and identical for
all three. The wrapper stops a run at the first success or when the budget is spent.

Throughput: each implementation attacks all images in its own batching (rnd and foolbox: one
lock-step batch; ART: one call per image, its probes batched by `batch_size`), `--throughput-budget`
queries per image; forwarded images / s, beside plain forwards of the model at batch 100 in the
same run.

Settings: rnd's defaults; ART: max_eval 10000, init_eval 100, init_size 100, max_iter unbounded
(the wrapper stops it); foolbox: initial_gradient_eval_steps 100, max_gradient_eval_steps 10000,
geometric step search, gamma 1, its default starting attack (blended uniform noise). All three are
HopSkipJump as published (Chen, Jordan, Wainwright 2020).
"""

from __future__ import annotations

import argparse
import contextlib
import math
import time
import warnings
from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from rnd import Oracle
from rnd.attacks import make_attack
from rnd.data import load_dataset
from rnd.models import load_checkpoint
from rnd.models.predict import correctly_classified
from rnd.training import default_checkpoint_path


class Stop(Exception):
    """Raised by the wrapper to end a run (success reached, or budget or throughput quota spent)."""


class Counting(nn.Module):
    """The one counting wrapper: counts forwarded images and judges each against the current image."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.input_shape = model.input_shape
        self.num_classes = model.num_classes
        self.reset()

    def reset(self, x0=None, y=None, eps=math.inf, norm="l2", budget=None, stop_at_success=True):
        self.x0, self.y, self.eps, self.norm, self.budget = x0, y, eps, norm, budget
        self.stop_at_success = stop_at_success
        self.count = 0
        self.first = None  # queries at the first success
        self.best = math.inf

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.float()
        out = self.model(x)
        n = x.shape[0]
        if self.x0 is not None:
            keep = n if self.budget is None else max(0, min(n, self.budget - self.count))
            d = (x[:keep] - self.x0).flatten(1)
            d = d.abs().amax(1) if self.norm == "linf" else d.norm(dim=1)
            adv = out[:keep].argmax(1) != self.y
            if bool(adv.any()):
                self.best = min(self.best, float(d[adv].min()))
            hit = (adv & (d <= self.eps + 1e-6)).nonzero().flatten()
            if self.first is None and hit.numel():
                self.first = self.count + int(hit[0]) + 1
        self.count += n
        if (self.stop_at_success and self.first is not None) or (
            self.budget is not None and self.count >= self.budget
        ):
            raise Stop
        return out


def run_rnd(wrapper: Counting, x, y, eps, norm, budget, seed=0) -> None:
    attack = make_attack("hsja", eps=eps, norm=norm, seed=seed)
    attack(Oracle(wrapper, output="labels", budget=budget), x, y)


def run_art(wrapper: Counting, x, y, eps, norm, budget, seed=0) -> None:
    from art.attacks.evasion import HopSkipJump
    from art.estimators.classification import PyTorchClassifier

    np.random.seed(seed)  # ART draws from numpy's global generator
    clf = PyTorchClassifier(
        model=wrapper,
        loss=nn.CrossEntropyLoss(),
        input_shape=tuple(x.shape[1:]),
        nb_classes=wrapper.num_classes,
        clip_values=(0.0, 1.0),
        device_type="cpu",
    )
    attack = HopSkipJump(
        clf,
        norm=2 if norm == "l2" else np.inf,
        max_iter=10**6,
        max_eval=10000,
        init_eval=100,
        init_size=100,
        verbose=False,
    )
    attack.generate(x.numpy(), y=None)


def run_foolbox(wrapper: Counting, x, y, eps, norm, budget, seed=0) -> None:
    import foolbox as fb

    torch.manual_seed(seed)  # foolbox's starting attack draws from torch's global generator
    fmodel = fb.PyTorchModel(wrapper, bounds=(0.0, 1.0))
    attack = fb.attacks.HopSkipJumpAttack(
        steps=10**6,
        initial_gradient_eval_steps=100,
        max_gradient_eval_steps=10000,
        constraint=norm,  # type: ignore[arg-type]
    )
    attack.run(fmodel, x, fb.criteria.Misclassification(y))


PEERS: dict[str, Callable[..., None]] = {"rnd": run_rnd, "art": run_art, "foolbox": run_foolbox}


def strength(name, wrapper, x, y, eps, norm, budget):
    """Per image (success, queries at first success, best distance within budget), and seconds."""
    out = []
    start = time.perf_counter()
    for i in range(len(y)):
        wrapper.reset(x[i : i + 1], y[i : i + 1], eps, norm, budget)
        with contextlib.suppress(Stop):
            PEERS[name](wrapper, x[i : i + 1], y[i : i + 1], eps, norm, budget, seed=i)
        out.append((wrapper.first is not None, wrapper.first or 0, wrapper.best))
    return out, time.perf_counter() - start


def throughput(name, wrapper, x, y, eps, norm, per_image: int) -> float:
    """Forwarded images / s of `name` attacking all images in its own batching, `per_image`
    queries each: rnd and foolbox attack the whole batch in lock-step (foolbox stopped when the
    batch has spent per_image x images); ART loops over the images itself, so it gets one call per
    image, stopped at per_image (one call on all images would spend the whole quota on the first)."""
    total, start = 0, time.perf_counter()
    if name == "art":
        for i in range(len(y)):
            wrapper.reset(budget=per_image, stop_at_success=False)
            with contextlib.suppress(Stop):
                run_art(wrapper, x[i : i + 1], y[i : i + 1], eps, norm, None, seed=i)
            total += wrapper.count
        return total / (time.perf_counter() - start)
    wrapper.reset(budget=per_image * len(y), stop_at_success=False)
    with contextlib.suppress(Stop):
        if name == "rnd":
            attack = make_attack("hsja", eps=eps, norm=norm, seed=0, stop_at_eps=False)
            attack(Oracle(wrapper, output="labels", budget=per_image), x, y)
        else:
            PEERS[name](wrapper, x, y, eps, norm, None)
    return wrapper.count / (time.perf_counter() - start)


@torch.inference_mode()
def raw_rate(model: nn.Module, x: torch.Tensor, seconds: float = 2.0, batch: int = 100) -> float:
    xb = x.repeat(-(-batch // x.shape[0]), 1, 1, 1)[:batch]
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        model((xb + 1e-4 * n % 1e-3).clamp(0, 1))
        n += batch
    return n / (time.perf_counter() - start)


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--images", type=int, default=50)
    p.add_argument("--budget", type=int, default=10000)
    p.add_argument("--norm", action="append", choices=("l2", "linf"), default=None)
    p.add_argument("--eps-l2", type=float, default=1.5)
    p.add_argument("--eps-linf", type=float, default=0.1)
    p.add_argument("--peer", action="append", choices=tuple(PEERS), default=None)
    p.add_argument("--throughput-budget", type=int, default=500, help="queries per image, throughput run")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--part", choices=("both", "strength", "throughput"), default="both")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    model, _ = load_checkpoint(default_checkpoint_path())
    model.eval()
    data = load_dataset("fashion-mnist", "test")
    idx = correctly_classified(model, data, args.images)
    x, y = data.get(idx)
    wrapper = Counting(model)
    peers = args.peer or list(PEERS)
    print(
        f"default checkpoint, {len(y)} correctly classified test images, budget {args.budget}, "
        f"{args.threads} thread(s); raw forwards at batch 100: {raw_rate(model, x):.0f} img/s\n"
    )
    head = (
        f"{'norm':<6}{'eps':>5}  {'impl':<9}{'fail %':>7}{'mean q':>9}{'median q':>9}"
        f"{'median dist':>12}{'img/s':>8}{'strength s':>11}"
    )
    print(head)
    print("-" * len(head))
    for norm in args.norm or ["l2", "linf"]:
        eps = args.eps_l2 if norm == "l2" else args.eps_linf
        for name in peers:
            fail = mean_q = median_q = med_d = rate = secs = math.nan
            if args.part != "throughput":
                rows, secs = strength(name, wrapper, x, y, eps, norm, args.budget)
                ok = torch.tensor([r[0] for r in rows])
                q = torch.tensor([float(r[1]) for r in rows])[ok]
                dist = torch.tensor([r[2] for r in rows]).sort().values
                med_d = float(dist[(len(dist) - 1) // 2] + dist[len(dist) // 2]) / 2
                fail = 100 * float((~ok).float().mean())
                mean_q = float(q.mean()) if q.numel() else math.nan
                median_q = float(q.median()) if q.numel() else math.nan
            if args.part != "strength":
                rate = throughput(name, wrapper, x, y, eps, norm, args.throughput_budget)
            print(
                f"{norm:<6}{eps:>5g}  {name:<9}{fail:>7.1f}"
                f"{mean_q:>9.0f}{median_q:>9.0f}{med_d:>12.3f}{rate:>8.0f}{secs:>11.0f}",
                flush=True,
            )


if __name__ == "__main__":
    main()
