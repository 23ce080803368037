"""PopSkipJump with a transfer start: the noise-aware boundary walk starts from the first MI-FGSM
example on the attacker's surrogate that the target labels adversarial, on balls of 1, 2, 4 and 8
eps, instead of from random noise (which stays the fallback). See `rnd.attacks.transfer_start`."""

from __future__ import annotations

import torch

from rnd.attacks.hsja import HopSkipJumpState
from rnd.attacks.psj import PopSkipJump
from rnd.attacks.transfer_start import TransferStart


class PopSkipJumpTS(TransferStart, PopSkipJump):
    """PopSkipJump from a transfer start. Args: `surrogate` and PopSkipJump's."""

    name = "psj-ts"

    def start(self, state: HopSkipJumpState, rows: torch.Tensor) -> None:
        found = self.ladder_start(state, rows)
        if not bool(found.all()):
            super().start(state, rows[~found])
