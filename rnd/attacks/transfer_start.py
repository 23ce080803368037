"""Transfer start: a query attack that starts from an example crafted on the attacker's surrogate.

The hybrid the issue names for any score or label attack (Square, SignHunter, HopSkipJump, PSJ):
craft MI-FGSM (Dong et al., CVPR 2018; decay 1.0, 10 iterations of eps / 10) on the surrogates,
with no query, and let the query attack start there instead of at its own start (Square's stripes,
SignHunter's all-ones signs, the label attacks' random noise). The query search then only has to
finish what transfer began; an image the transfer example already fools stops after one query.

Label-only attacks need an adversarial start at any distance (their search shrinks it), so
`TransferStart.ladder_start` tries the transfer example at eps, then crafts again on balls of 2,
4 and 8 eps (one decision each), and falls back to the attack's random start for the images none
of them fooled.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from rnd.attacks.mifgsm import MIFGSM
from rnd.attacks.surrogate import SurrogateAttack

#: The radii (in eps) a label-only attack's transfer start tries, in order.
LADDER = (1.0, 2.0, 4.0, 8.0)


class TransferStart(SurrogateAttack):
    """Mixin before a query attack's class: `transfer_examples` (and `ladder_start` for label-only
    attacks) craft its start on the surrogates (`surrogate=`)."""

    #: MI-FGSM iterations of the start.
    start_iterations = 10

    def __init__(
        self, eps: float, *args: Any, surrogate: nn.Module | Sequence[nn.Module] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(eps, *args, surrogate=surrogate, **kwargs)
        self._crafters: dict[float, MIFGSM] = {}

    def transfer_examples(
        self, x0: torch.Tensor, y: torch.Tensor, target: torch.Tensor | None, radius: float = 1.0
    ) -> torch.Tensor:
        """MI-FGSM examples on the surrogates inside the ball of `radius` x eps (no query)."""
        eps = float(self.eps) * radius  # type: ignore[attr-defined]
        if radius not in self._crafters:
            self._crafters[radius] = MIFGSM(
                eps,
                self.norm,  # type: ignore[attr-defined]
                surrogate=self.surrogates.models,
                iterations=self.start_iterations,
                mu=eps / self.start_iterations,
                seed=self.seed,  # type: ignore[attr-defined]
            )
        return self._crafters[radius].craft_batch(x0, y, target)

    def ladder_start(self, state: Any, rows: torch.Tensor) -> torch.Tensor:
        """A label-only attack's start for `rows`: the transfer example on balls of `LADDER` x eps
        in turn (one decision each, while affordable), accepted where observed adversarial.
        Returns the mask of `rows` that found one."""
        found = torch.zeros(rows.numel(), dtype=torch.bool, device=rows.device)
        for radius in LADDER:
            go = ~found & (self.affordable(state, rows) >= 1)  # type: ignore[attr-defined]
            if not bool(go.any()):
                break
            idx = go.nonzero().flatten()
            r = rows[idx]
            target = None if state.target is None else state.target[r]
            cand = self.transfer_examples(state.x0[r], state.y[r], target, radius)
            adv = self.decide(state, cand, r)  # type: ignore[attr-defined]
            self.accept(state, r[adv], cand[adv])  # type: ignore[attr-defined]
            found[idx[adv]] = True
        return found

    def params(self) -> dict[str, Any]:
        return {**super().params(), "start": "transfer"}
