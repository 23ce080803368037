"""Square with a transfer start: Square's random search (Andriushchenko et al., ECCV 2020) from an
MI-FGSM example crafted on the attacker's surrogate, in place of its stripes (l_inf) or bumps
(l_2). See `rnd.attacks.transfer_start`."""

from __future__ import annotations

import torch

from rnd.attacks.square import Square, SquareState
from rnd.attacks.transfer_start import TransferStart


class SquareTS(TransferStart, Square):
    """Square from a transfer example. Args: `surrogate` (the attacker's model or models) and
    Square's."""

    name = "square-ts"

    def start_points(self, state: SquareState, rows: torch.Tensor) -> torch.Tensor:
        target = None if state.target is None else state.target[rows]
        return self.transfer_examples(state.x0[rows], state.y[rows], target)
