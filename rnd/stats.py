"""Statistics every layer shares: Wilson intervals of rates, medians that tolerate inf, mean and
standard deviation, Student's t quantiles, and the failure-rate / query statistics of the paper's
protocol (DESIGN section 1.7). Imports nothing of rnd but its errors and checks."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from rnd._checks import check_int
from rnd.errors import InputError


def wilson_interval(
    successes: torch.Tensor, trials: int | torch.Tensor, z: float = 1.96
) -> tuple[torch.Tensor, torch.Tensor]:
    """Wilson score interval for binomial proportions (elementwise); z = 1.96 gives 95 %."""
    n = torch.as_tensor(trials, dtype=torch.float64)
    k = successes.to(torch.float64)
    if bool((n <= 0).any()):
        raise InputError("the Wilson interval needs at least one trial")
    p = k / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * torch.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (centre - half).clamp(0, 1), (centre + half).clamp(0, 1)


def wilson(failures: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson interval of a failure rate, in % (NaN, NaN for no images)."""
    if n <= 0:
        return math.nan, math.nan
    lo, hi = wilson_interval(torch.tensor(float(failures)), n, z)
    return 100.0 * float(lo), 100.0 * float(hi)


def rate_interval(rate: float | None, n: int) -> tuple[float, float]:
    """The Wilson interval of a failure rate given in % of `n` images (NaN for NaN)."""
    if rate is None or math.isnan(rate):
        return math.nan, math.nan
    return wilson(round(rate * n / 100.0), n)


def median(values: torch.Tensor) -> float:
    """Median of a 1-D tensor that may hold inf (the mean of the two middle values; NaN if empty)."""
    if not values.numel():
        return math.nan
    v = values.double().sort().values
    n = v.numel()
    return float((v[(n - 1) // 2] + v[n // 2]) / 2)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    mean = sum(values) / len(values)
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / max(len(values) - 1, 1))


def failure_rate(success: torch.Tensor) -> float:
    """Attack failure rate in % over attacked images: failures / attacked."""
    return 100.0 * float((~success.bool()).sum()) / max(success.numel(), 1)


def query_stats(queries: torch.Tensor, success: torch.Tensor) -> tuple[float, float]:
    """Mean and median queries over successful attacks only (NaN when none succeeded)."""
    q = queries[success.bool()].double()
    if q.numel() == 0:
        return float("nan"), float("nan")
    return float(q.mean()), float(q.quantile(0.5))


def t_quantile(p: float, df: int) -> float:
    """Quantile of Student's t distribution with `df` degrees of freedom (bisection on its CDF)."""
    if not 0.5 <= p < 1:
        raise InputError(f"confidence must lie in [0.5, 1), got {p}")
    check_int(df, "degrees of freedom")
    log_c = math.lgamma((df + 1) / 2) - math.lgamma(df / 2) - 0.5 * math.log(df * math.pi)

    def pdf(t: float) -> float:
        return math.exp(log_c - (df + 1) / 2 * math.log1p(t * t / df))

    def cdf(t: float, n: int = 2000) -> float:  # Simpson's rule on [0, t], t >= 0
        h = t / n
        s = pdf(0) + pdf(t) + sum((4 if k % 2 else 2) * pdf(k * h) for k in range(1, n))
        return 0.5 + s * h / 3

    lo, hi = 0.0, 1.0
    while cdf(hi) < p:
        lo, hi = hi, 2 * hi
    for _ in range(60):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if cdf(mid) < p else (lo, mid)
    return (lo + hi) / 2
