"""SignHunter with a transfer start: the sign search (Al-Dujaili and O'Reilly, ICLR 2020) begins
at the signs of an MI-FGSM example's perturbation, crafted on the attacker's surrogate, instead of
all ones (zeros count as +1). See `rnd.attacks.transfer_start`."""

from __future__ import annotations

import torch

from rnd.attacks.signhunter import SignHunter, SignHunterState
from rnd.attacks.transfer_start import TransferStart


class SignHunterTS(TransferStart, SignHunter):
    """SignHunter from a transfer example's signs. Args: `surrogate` and SignHunter's."""

    name = "signhunter-ts"

    def start_signs(self, state: SignHunterState, rows: torch.Tensor) -> torch.Tensor:
        target = None if state.target is None else state.target[rows]
        x0 = state.x0[rows]
        delta = (self.transfer_examples(x0, state.y[rows], target) - x0).flatten(1)
        return torch.where(delta < 0, -1.0, 1.0)
