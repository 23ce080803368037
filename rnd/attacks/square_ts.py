"""Square with a transfer start: Square's random search (Andriushchenko et al., ECCV 2020) from an
MI-FGSM example crafted on the attacker's surrogate, in place of its stripes (l_inf) or bumps
(l_2). See `rnd.attacks.transfer_start`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from rnd.attacks.square import Square, SquareState
from rnd.attacks.transfer_start import TransferStart
from rnd.oracle import QueryOracle


class SquareTS(TransferStart, Square):
    """Square from a transfer example. Args: `surrogate` (the attacker's model or models) and
    Square's."""

    name = "square-ts"

    def __init__(
        self,
        eps: float,
        norm: str = "linf",
        *,
        surrogate: nn.Module | Sequence[nn.Module] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(eps, norm, **kwargs)
        self.take_transfer_start(surrogate)

    def check_oracle(self, oracle: QueryOracle) -> None:
        super().check_oracle(oracle)
        self.surrogates.check(oracle)

    def start_points(self, state: SquareState, rows: torch.Tensor) -> torch.Tensor:
        target = None if state.target is None else state.target[rows]
        return self.transfer_examples(state.x0[rows], state.y[rows], target)
