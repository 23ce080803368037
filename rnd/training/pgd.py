"""White-box l_inf PGD (Madry et al., ICLR 2018, section 2): the attack used in adversarial training
and for the white-box robustness check.

    x_0 = clip(x + U(-eps, eps))                        (random start)
    x_{t+1} = clip(Proj_{||. - x||_inf <= eps}(x_t + alpha * sign(grad_x CE(F(x_t), y))))

Pixels are in [0, 1]; every random number comes from an explicit `torch.Generator`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from rnd._checks import check_int, check_positive
from rnd.data.base import ImageDataset
from rnd.errors import InputError


@dataclass(frozen=True)
class PGDConfig:
    """l_inf PGD settings: radius `eps`, `steps` sign-gradient steps of size `step_size`.

    `step_size=None` uses Madry et al.'s rule of thumb, 2.5 * eps / steps.
    """

    eps: float = 0.1
    steps: int = 5
    step_size: float | None = None
    random_start: bool = True

    def __post_init__(self) -> None:
        check_positive(self.eps, "eps")
        check_int(self.steps, "PGD steps")
        if self.step_size is not None:
            check_positive(self.step_size, "PGD step size")

    @property
    def alpha(self) -> float:
        """The step size actually used."""
        return self.step_size if self.step_size is not None else 2.5 * self.eps / self.steps

    def as_dict(self) -> dict[str, float | int | bool]:
        return {
            "eps": self.eps,
            "steps": self.steps,
            "step_size": self.alpha,
            "random_start": self.random_start,
        }


def pgd_linf(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    config: PGDConfig,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Untargeted l_inf PGD on the cross-entropy loss; returns x_adv (detached, in [0, 1]).

    The model's parameters receive no gradient and its train/eval mode is left as it is. A random
    start needs `generator` (the caller's RNG; the global RNG is never used).
    """
    if config.random_start and generator is None:
        raise InputError("PGD with a random start needs an explicit torch.Generator")
    x = x.detach()
    if config.random_start:
        u = torch.rand(x.shape, generator=generator, dtype=x.dtype, device=generator.device)
        x_adv = (x + (2 * u.to(x.device) - 1) * config.eps).clamp(0, 1)
    else:
        x_adv = x.clone()
    alpha = config.alpha
    for _ in range(config.steps):
        x_adv.requires_grad_(True)
        with torch.enable_grad():
            loss = F.cross_entropy(model(x_adv), y)
            (grad,) = torch.autograd.grad(loss, x_adv)
        x_adv = x_adv.detach() + alpha * grad.sign()
        x_adv = torch.min(torch.max(x_adv, x - config.eps), x + config.eps).clamp(0, 1)
    return x_adv.detach()


def pgd_accuracy(
    model: nn.Module,
    data: ImageDataset,
    config: PGDConfig,
    *,
    indices: torch.Tensor | None = None,
    batch_size: int = 500,
    seed: int = 0,
) -> float:
    """White-box robust accuracy in [0, 1]: the share of images still classified correctly after PGD."""
    model.eval()
    g = torch.Generator().manual_seed(seed)
    correct = total = 0
    for x, y in data.batches(batch_size, indices):
        x_adv = pgd_linf(model, x, y, config, g)
        with torch.inference_mode():
            correct += int((model(x_adv).argmax(1) == y).sum())
        total += len(y)
    return correct / max(total, 1)
