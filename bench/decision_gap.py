"""What the Monte Carlo gradient estimate costs HopSkipJump: the same attack with the exact direction.

    python bench/decision_gap.py [--norm l2 --norm linf] [--images 100] [--budget 10000]
                                 [--only both|shipped|exact] [--threads 1]

On the first N correctly classified Fashion-MNIST test images of the default model (undefended;
l_2 eps 1.5, l_inf eps 0.1; label oracle; batches of 100 with seeds 0, 100, ...), per norm:
- shipped: `hsja` as the library runs it (`rnd attack --attack hsja --nu 0`);
- exact: the same attack whose `estimate_gradient` returns the exact gradient at x_b of the
  function whose sign the probes observe, the untargeted CW margin max_{j != y} z_j - z_y of the
  model's logits (phi = +1 adversarial is margin > 0), by autograd on the model: a white-box
  oracle for the direction only. Everything else (step size, step search, binary searches,
  probe schedule, random start) is the shipped code.
Charging: the exact variant still makes the shipped estimate's probes (the same draws from each
image's generator, the same k_t = min(100 sqrt(t), 1000) decisions through the oracle) and
discards their answers, so its query count, budget caps and random stream are the shipped
attack's; the two runs differ only in the direction v that the step search follows. The
difference of the failure rates is the estimator's noise; the exact run's failure rate is what
the algorithm itself (boundary walk, searches, schedule) leaves at that budget.

`cos` is the mean cosine, over images and iterations, between the Monte Carlo estimate and the
exact gradient at the points the run visited (both runs compute both; only `exact` follows the
exact one). Both runs return the Monte Carlo estimate's queries: neither row is cheaper.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Any

import torch
from torch import nn
from whitebox_floor import EPS, model_and_images  # bench/ is the script's directory

from rnd import Oracle
from rnd.attacks.hsja import HopSkipJump, HopSkipJumpState


def cw_margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """max_{j != y} z_j - z_y per row: positive exactly where the label is not y."""
    own = logits.gather(1, y[:, None]).squeeze(1)
    return logits.scatter(1, y[:, None], -math.inf).amax(1) - own


class MeasuredHopSkipJump(HopSkipJump):
    """HopSkipJump that computes the exact margin gradient next to every Monte Carlo estimate and
    records their cosine. With `exact=False` it returns the Monte Carlo estimate (the shipped
    attack, bit for bit: the extra autograd touches neither the oracle nor the generators); with
    `exact=True` it returns the exact gradient, after spending the same probes."""

    def __init__(self, *args: Any, model: nn.Module, exact: bool, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.model, self.exact = model, exact
        self.cosines: list[float] = []

    def estimate_gradient(
        self, state: HopSkipJumpState, rows: torch.Tensor, k: torch.Tensor, delta: torch.Tensor
    ) -> torch.Tensor:
        assert not self.targeted, "the margin here is the untargeted one"
        g_mc = super().estimate_gradient(state, rows, k, delta)  # the shipped probes and queries
        x = state.xb[rows].clone().requires_grad_(True)
        with torch.enable_grad():
            (g_exact,) = torch.autograd.grad(cw_margin(self.model(x), state.y[rows]).sum(), x)
        cos = torch.nn.functional.cosine_similarity(g_mc.flatten(1), g_exact.flatten(1), dim=1)
        self.cosines.extend(cos.tolist())
        return g_exact if self.exact else g_mc


def run(
    norm: str, model: nn.Module, x: torch.Tensor, y: torch.Tensor, budget: int, exact: bool
) -> dict[str, Any]:
    """Failure rate, mean / median queries of successes and mean cosine over batches of 100."""
    successes, queries, cosines = [], [], []
    start = time.perf_counter()
    for lo in range(0, len(y), 100):
        attack = MeasuredHopSkipJump(eps=EPS[norm], norm=norm, seed=lo, model=model, exact=exact)
        result = attack(Oracle(model, output="labels", budget=budget), x[lo : lo + 100], y[lo : lo + 100])
        successes.append(result.success)
        queries.append(result.queries.double())
        cosines.extend(attack.cosines)
    s, q = torch.cat(successes), torch.cat(queries)
    return {
        "failure": 100 * (1 - s.float().mean().item()),
        "mean": q[s].mean().item() if s.any() else float("nan"),
        "median": q[s].median().item() if s.any() else float("nan"),
        "cos": statistics.fmean(cosines) if cosines else float("nan"),
        "seconds": time.perf_counter() - start,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--norm", action="append", default=None, help="l2, linf (default: both)")
    p.add_argument("--images", type=int, default=100)
    p.add_argument("--budget", type=int, default=10000)
    p.add_argument("--only", choices=("both", "shipped", "exact"), default="both")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, x, y = model_and_images(args.images)
    kinds = ("shipped", "exact") if args.only == "both" else (args.only,)
    print(f"hsja, {len(y)} images, budget {args.budget}; failure % / mean / median queries of successes")
    for norm in args.norm or ["l2", "linf"]:
        for kind in kinds:
            r = run(norm, model, x, y, args.budget, exact=kind == "exact")
            print(
                f"hsja {norm:<5} {kind:<8} {r['failure']:5.1f} % {r['mean']:7.0f} {r['median']:7.0f}"
                f"   cos {r['cos']:.3f}   ({r['seconds']:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
