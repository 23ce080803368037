"""HopSkipJump with a transfer start: the boundary walk (Chen et al., IEEE S&P 2020) starts from
the first MI-FGSM example on the attacker's surrogate that the target labels adversarial, on balls
of 1, 2, 4 and 8 eps, instead of from random noise (which stays the fallback). See
`rnd.attacks.transfer_start`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from rnd.attacks.base import Norm
from rnd.attacks.hsja import HopSkipJump, HopSkipJumpState
from rnd.attacks.transfer_start import TransferStart
from rnd.oracle import QueryOracle


class HopSkipJumpTS(TransferStart, HopSkipJump):
    """HopSkipJump from a transfer start. Args: `surrogate` and HopSkipJump's."""

    name = "hsja-ts"

    def __init__(
        self,
        eps: float,
        norm: Norm = "l2",
        *,
        surrogate: nn.Module | Sequence[nn.Module] | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(eps, norm, **kwargs)
        self.take_transfer_start(surrogate)

    def check_oracle(self, oracle: QueryOracle) -> None:
        super().check_oracle(oracle)
        self.surrogates.check(oracle)

    def start(self, state: HopSkipJumpState, rows: torch.Tensor) -> None:
        found = self.ladder_start(state, rows)
        if not bool(found.all()):
            super().start(state, rows[~found])
