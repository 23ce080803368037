"""White-box floor of the query-attack table: what gradient access achieves at the same eps.

    python bench/whitebox_floor.py [--images 500] [--steps 100] [--restarts 5] [--threads 2]

PGD on the CW margin of the logits (Madry et al. 2018; Carlini & Wagner 2017), l_inf eps 0.1 and
l_2 eps 1.5 on the first N correctly classified Fashion-MNIST test images, with a cosine-decayed
step and random restarts; an image counts as fooled if any iterate is misclassified. A black-box
attack cannot be expected to fail on fewer images than this; the distance between an attack's
failure rate and this floor is what its missing gradient costs it.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn

from rnd.attacks import make_attack
from rnd.data import load_dataset
from rnd.models import load_checkpoint
from rnd.models.predict import correctly_classified
from rnd.training import default_checkpoint_path

#: The threat models of the attack-strength table (README): l_inf 0.1, l_2 1.5.
EPS = {"linf": 0.1, "l2": 1.5}


def model_and_images(n: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """The default checkpoint (eval, no parameter gradients) and its first `n` correctly
    classified Fashion-MNIST test images with their labels."""
    model, _ = load_checkpoint(default_checkpoint_path())
    model.eval().requires_grad_(False)
    test = load_dataset("fashion-mnist", "test")
    x, y = test.get(correctly_classified(model, test, n))
    return model, x, y


def margin(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    own = logits.gather(1, y[:, None]).squeeze(1)
    return own - logits.scatter(1, y[:, None], -math.inf).amax(1)


def pgd_fooled(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, norm: str, eps: float, steps: int, restarts: int
) -> torch.Tensor:
    """Images fooled by any iterate of `restarts` margin-PGD runs (the first from the clean image)."""
    project = make_attack("square", eps=eps, norm=norm).project  # the attacks' own projection
    g = torch.Generator().manual_seed(0)
    fooled = torch.zeros(len(y), dtype=torch.bool)
    d = x[0].numel()
    for r in range(restarts):
        noise = (2 * torch.rand(x.shape, generator=g) - 1) * (eps if norm == "linf" else eps / math.sqrt(d))
        xa = project(x + noise, x) if r else x.clone()
        for t in range(steps):
            alpha = 10 * eps / steps * 0.5 * (1 + math.cos(math.pi * t / steps)) + 1e-4 * eps
            xa.requires_grad_(True)
            with torch.enable_grad():
                (grad,) = torch.autograd.grad(margin(model(xa), y).sum(), xa)
            if norm == "linf":
                step = grad.sign()
            else:
                step = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1) * math.sqrt(d)
            xa = project(xa.detach() - alpha * step, x)
            with torch.no_grad():
                fooled |= model(xa).argmax(1) != y
    return fooled


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    p.add_argument("--images", type=int, default=500)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--restarts", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    model, x, y = model_and_images(args.images)
    for norm, eps in EPS.items():
        start = time.perf_counter()
        fooled = pgd_fooled(model, x, y, norm, eps, args.steps, args.restarts)
        print(
            f"{norm} eps {eps}: white-box failure {100 * (1 - fooled.float().mean()):.1f} % of "
            f"{len(y)} images ({args.steps} steps x {args.restarts} restarts, "
            f"{time.perf_counter() - start:.0f} s)",
            flush=True,
        )


if __name__ == "__main__":
    main()
