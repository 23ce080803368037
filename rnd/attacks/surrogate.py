"""The attacker's own models: what every surrogate-using attack shares (transfer and hybrid).

`Surrogates` holds one model or a logit ensemble (the mean of the models' logits), checks it
against the target's oracle (input shape, classes), and gives the gradients the attacks steer by:

    loss_gradient:  d/dx L(mean_s f_s(x))   with L the CE or the CW margin of the true label (or
                    of the target, sign flipped) -- the transfer prior of P-RGF and GFCS;
    ods_gradient:   d/dx w^T f_s(x)         w ~ U(-1, 1)^C (Tashiro et al., NeurIPS 2020, ODS:
                    output-diversified directions), for one surrogate s per row.

No gradient ever touches the target: these cost no query. `SurrogateAttack` is the mixin an attack
takes them through (`surrogate=` in its constructor); `needs_surrogate` in `rnd.attacks` keys on it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from rnd.errors import InputError
from rnd.oracle import QueryOracle

SurrogateLoss = Literal["ce", "margin"]

#: What a surrogate attack is built around when only its parameters, steps and budget are checked
#: (a sweep's plan); the surrogates it crafts on are loaded when its cell runs.
STAND_IN = nn.Identity()


class Surrogates:
    """One surrogate model or a logit ensemble of several (pixel inputs in [0, 1])."""

    def __init__(self, surrogate: nn.Module | Sequence[nn.Module]) -> None:
        models = [surrogate] if isinstance(surrogate, nn.Module) else list(surrogate)
        if not models or not all(isinstance(m, nn.Module) for m in models):
            raise InputError("surrogate must be a model (nn.Module) or a non-empty sequence of models")
        self.models: list[nn.Module] = [m.eval() for m in models]

    def __len__(self) -> int:
        return len(self.models)

    def check(self, oracle: QueryOracle) -> None:
        """Refuse a surrogate that does not take the target's images or predict its classes."""
        for i, m in enumerate(self.models):
            shape = getattr(m, "input_shape", None)
            if shape is not None and tuple(shape) != tuple(oracle.input_shape):
                raise InputError(
                    f"surrogate {i} takes images of shape {tuple(shape)}, the target "
                    f"{tuple(oracle.input_shape)}; use a surrogate of the target's input shape"
                )
            classes = getattr(m, "num_classes", None)
            if classes is not None and int(classes) != oracle.num_classes:
                raise InputError(
                    f"surrogate {i} predicts {classes} classes, the target {oracle.num_classes}; "
                    "use a surrogate of the target's classes"
                )

    def logits(self, x: torch.Tensor, models: Sequence[nn.Module] | None = None) -> torch.Tensor:
        """The mean logits of `models` (default: all of them) at x."""
        ms = self.models if models is None else models
        return torch.stack([m(x) for m in ms]).mean(0)

    def loss_gradient(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None = None,
        *,
        loss: SurrogateLoss = "ce",
        models: Sequence[nn.Module] | None = None,
    ) -> torch.Tensor:
        """d/dx of the loss to raise on the mean logits: CE (or CW margin `max_{j != y} z_j - z_y`)
        of the true label; targeted, the negated CE (margin `z_t - max_{j != t} z_j`) of the target."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            z = self.logits(x, models)
            (grad,) = torch.autograd.grad(raise_loss(z, y, target, loss).sum(), x)
        return grad.detach()

    def ods_gradient(self, x: torch.Tensor, weights: torch.Tensor, model: int) -> torch.Tensor:
        """d/dx of w_i^T f_model(x_i) per row (ODS's output-diversified direction, not normalised)."""
        with torch.enable_grad():
            x = x.detach().requires_grad_(True)
            z = self.models[model](x)
            (grad,) = torch.autograd.grad((z * weights.to(z.dtype)).sum(), x)
        return grad.detach()


def raise_loss(
    z: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, loss: SurrogateLoss
) -> torch.Tensor:
    """Per-row loss whose increase moves the logits `z` towards the attacker's goal."""
    if loss == "ce":
        return (
            F.cross_entropy(z, y, reduction="none")
            if target is None
            else -F.cross_entropy(z, target, reduction="none")
        )
    label = y if target is None else target
    own = z.gather(1, label[:, None]).squeeze(1)
    other = z.scatter(1, label[:, None], -torch.inf).amax(1)
    return other - own if target is None else own - other


class SurrogateAttack:
    """Mixin of the attacks that use the attacker's own models (`surrogate=`, a model or a list):
    transfer attacks and hybrids. Put it before the attack's base class; it takes `surrogate` out
    of the constructor's arguments, checks the models against the oracle after the base's own
    check, and records how many there are (not the models) in `params`."""

    surrogates: Surrogates
    inference = False  # gradients of the surrogates need autograd (see QueryAttack.inference)

    def __init__(
        self, eps: float, *args: Any, surrogate: nn.Module | Sequence[nn.Module] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(eps, *args, **kwargs)  # type: ignore[call-arg]
        if surrogate is None:
            raise InputError(
                f"{getattr(self, 'name', 'this attack')} uses the attacker's own model: give "
                "surrogate= (a model or a list of models; --surrogate SPEC on the command line)"
            )
        self.surrogates = Surrogates(surrogate)

    def check_oracle(self, oracle: QueryOracle) -> None:
        super().check_oracle(oracle)  # type: ignore[misc]
        self.surrogates.check(oracle)

    def params(self) -> dict[str, Any]:
        out = {k: v for k, v in super().params().items() if k != "surrogates"}  # type: ignore[misc]
        return {**out, "surrogates": len(self.surrogates)}
