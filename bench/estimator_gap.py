"""What the zeroth-order estimate costs NES and ZO-signSGD: the same attacks with exact gradients.

    python bench/estimator_gap.py [--attack nes --attack zo-signsgd] [--norm linf --norm l2]
                                  [--images 500] [--budget 10000] [--only both|shipped|exact]

For each attack and norm, on the first N correctly classified Fashion-MNIST test images of the
default model (undefended; eps 0.1 l_inf, 1.5 l_2; batches of 100 with seeds 0, 100, ...):
- shipped: the attack as the library runs it (`rnd attack --attack NAME --nu 0`);
- exact: the same object (same update rule, momentum, step schedule, projection and loss) whose
  `estimate_gradient` is replaced by autograd's gradient of that loss, i.e. a white-box attacker
  restricted to the attack's own update rule. It gets the same number of steps: a step of the
  shipped attack costs (2q + 1) or (q + 1) queries, so the exact run has 1 + (budget - 1) // cost
  one-query steps, and its queries are reported back on the shipped scale.
The difference of the two failure rates is the estimator's noise; the exact run's failure rate is
the update rule's own limit at that many steps (bench/whitebox_floor.py gives plain PGD's).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import torch
from torch import nn
from whitebox_floor import EPS, model_and_images  # bench/ is the script's directory

from rnd import Oracle
from rnd.attacks import make_attack
from rnd.attacks.base import AttackState
from rnd.attacks.score import ScoreAttack


def exact_class(cls: type[ScoreAttack], model: nn.Module) -> type[ScoreAttack]:
    """A subclass of `cls` whose gradient estimate is the exact gradient of its own loss; one query
    (the new point) per step. Only for attacks with an `estimate_gradient(state, rows)` method."""
    if not hasattr(cls, "estimate_gradient"):
        raise ValueError(f"{cls.name} has no gradient estimate to replace")

    def estimate_gradient(self: ScoreAttack, state: AttackState, rows: torch.Tensor) -> torch.Tensor:
        assert self.oracle is not None
        x = state.x[rows].clone().requires_grad_(True)
        with torch.enable_grad():
            scores = model(x)
            if self.oracle.output != "logits":
                scores = scores.softmax(1)
            loss, _ = self.loss_from_scores(scores, state, rows)
            (grad,) = torch.autograd.grad(loss.sum(), x)
        return grad

    return type(
        f"Exact{cls.__name__}",
        (cls,),
        {"estimate_gradient": estimate_gradient, "step_cost": property(lambda self: self.eot)},
    )


def run(
    name: str, norm: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, budget: int, exact: bool
) -> dict[str, Any]:
    """Failure rate and mean / median queries (shipped scale) over batches of 100."""
    shipped = make_attack(name, eps=EPS[norm], norm=norm)
    cost = shipped.step_cost  # queries of one shipped step; the exact variant's step costs 1
    cls = exact_class(type(shipped), model) if exact else type(shipped)
    b = 1 + (budget - 1) // cost if exact else budget
    successes, queries = [], []
    start = time.perf_counter()
    for lo in range(0, len(y), 100):
        attack = cls(eps=EPS[norm], norm=norm, seed=lo)
        result = attack(Oracle(model, budget=b), x[lo : lo + 100], y[lo : lo + 100])
        q = result.queries.double()
        successes.append(result.success)
        queries.append(1 + (q - 1) * cost if exact else q)
    s, q = torch.cat(successes), torch.cat(queries)
    return {
        "failure": 100 * (1 - s.float().mean().item()),
        "mean": q[s].mean().item() if s.any() else float("nan"),
        "median": q[s].median().item() if s.any() else float("nan"),
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--attack", action="append", default=None, help="nes, zo-signsgd (default: both)")
    p.add_argument("--norm", action="append", default=None, help="linf, l2 (default: both)")
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--budget", type=int, default=10000)
    p.add_argument("--only", choices=("both", "shipped", "exact"), default="both")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, x, y = model_and_images(args.images)
    kinds = ("shipped", "exact") if args.only == "both" else (args.only,)
    print(f"{len(y)} images, budget {args.budget}; failure % / mean / median queries of successes")
    for name in args.attack or ["nes", "zo-signsgd"]:
        for norm in args.norm or ["linf", "l2"]:
            for kind in kinds:
                r = run(name, norm, model, x, y, args.budget, exact=kind == "exact")
                print(
                    f"{name:<11} {norm:<5} {kind:<8} {r['failure']:5.1f} % {r['mean']:7.0f} "
                    f"{r['median']:7.0f}   ({r['seconds']:.0f} s)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
