"""The part OARS attacks share: a batched binary search of a step parameter on refusal rates.

OARS (Feng et al., "Stateful Defenses for Machine Learning Models Are Not Yet Secure Against
Black-box Attacks", CCS 2023, Sec. 4) adapts an attack to a stateful detector by tuning the
attack's own step parameter before going on: sample a few proposals at a candidate value, count
how many the detector refuses, and bisect the value until the refusal rate is at most a target
rate. Every sample is a real query and counts. The attacks: `rnd.attacks.square_oars` and
`rnd.attacks.hsja_oars`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from rnd._checks import check_fraction, check_int, check_positive
from rnd.errors import InputError


@dataclass(frozen=True)
class Search:
    """One OARS binary search: the value lies in [lower, upper]; `steps` bisections, each from
    `samples` sampled proposals; a value passes when at most `rate` of them are refused."""

    lower: float
    upper: float
    steps: int
    samples: int
    rate: float

    @classmethod
    def checked(
        cls, lower: float, upper: float, steps: int, samples: int, rate: float, names: tuple[str, ...]
    ) -> Search:
        """The search with every value checked; `names` are the five arguments' names, in order."""
        lower, upper = check_positive(lower, names[0]), check_positive(upper, names[1])
        if lower > upper:
            raise InputError(f"{names[0]} ({lower}) must be at most {names[1]} ({upper})")
        steps, samples = check_int(steps, names[2], minimum=0), check_int(samples, names[3])
        return cls(lower, upper, steps, samples, check_fraction(rate, names[4]))


def binary_search(
    search: Search,
    rows: torch.Tensor,
    refused_share: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    can_sample: Callable[[torch.Tensor], torch.Tensor],
) -> torch.Tensor:
    """The reference's search, for every row at once: start at `upper`; each step try the middle
    `mid` of [lo, hi]; if the share of refused samples is at most `rate`, take it (hi = mid,
    trying smaller values next), else lo = mid. `refused_share(idx, mid)` queries `samples`
    proposals of `rows[idx]` at the values `mid` and returns each one's refused share;
    `can_sample(idx)` says which of `rows[idx]` may still query (budget, not yet done). Returns
    the value per row (`upper` where no middle passed)."""
    n = rows.numel()
    lo = torch.full((n,), float(search.lower), dtype=torch.float64)
    hi = torch.full((n,), float(search.upper), dtype=torch.float64)
    best = hi.clone()
    for _ in range(search.steps):
        idx = torch.arange(n)
        idx = idx[can_sample(idx)]
        if not idx.numel():
            break
        mid = (lo[idx] + hi[idx]) / 2
        ok = refused_share(idx, mid).double() <= search.rate
        best[idx] = torch.where(ok, mid, best[idx])
        hi[idx] = torch.where(ok, mid, hi[idx])
        lo[idx] = torch.where(ok, lo[idx], mid)
    return best
