"""HopSkipJump with a transfer start: the boundary walk (Chen et al., IEEE S&P 2020) starts from
the first MI-FGSM example on the attacker's surrogate that the target labels adversarial, on balls
of 1, 2, 4 and 8 eps, instead of from random noise (which stays the fallback). See
`rnd.attacks.transfer_start`."""

from __future__ import annotations

import torch

from rnd.attacks.hsja import HopSkipJump, HopSkipJumpState
from rnd.attacks.transfer_start import TransferStart


class HopSkipJumpTS(TransferStart, HopSkipJump):
    """HopSkipJump from a transfer start. Args: `surrogate` and HopSkipJump's."""

    name = "hsja-ts"

    def start(self, state: HopSkipJumpState, rows: torch.Tensor) -> None:
        found = self.ladder_start(state, rows)
        if not bool(found.all()):
            super().start(state, rows[~found])
