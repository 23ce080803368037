"""The closed-form bounds of the seed's analysis of RND (Qin et al., NeurIPS 2021, Section 4).

Every function evaluates one right-hand side exactly as the seed writes it, with its inputs checked
(`mu > 0`, `nu >= 0`, `M >= 1`, constants positive, `d` a positive integer); anything else raises
`InputError`. Notation: `L0` and `L1` are the Lipschitz constants of f and of its gradient
(Assumptions 1 and 2), `d` the input dimension, `R` the radius of the threat ball N_R(x0), `Q` the
number of iterations (t = 0..Q), `eta` the step size, `alpha = nu / mu`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from rnd._checks import check_int, check_positive
from rnd.errors import InputError

SQRT2 = math.sqrt(2.0)


def check_mu_nu(mu: float, nu: float) -> tuple[float, float]:
    """Validate the attacker's probe size `mu > 0` and the defense's noise level `nu >= 0`."""
    mu = check_positive(mu, "mu (the attacker's probe size)")
    nu = check_positive(nu, "nu (the RND noise level)", allow_zero=True)
    return mu, nu


def check_m(m: float, *, allow_inf: bool = False) -> float:
    """Validate the number of EOT samples M: an integer >= 1 (or infinity where the limit is meant)."""
    if allow_inf and isinstance(m, float) and m == math.inf:
        return m
    if isinstance(m, float) and m.is_integer():
        m = int(m)
    return float(check_int(m, "M (EOT samples per query)", minimum=1))  # type: ignore[arg-type]


def _check_dim(d: int) -> int:
    return check_int(d, "d (the input dimension)", minimum=1)


def _steps(eta: float | Sequence[float], q: int) -> list[float]:
    """Step sizes eta_0..eta_Q: a constant, or one positive value per iteration."""
    if isinstance(eta, int | float):
        return [check_positive(eta, "eta (step size)")] * (q + 1)
    steps = [check_positive(e, "eta (step size)") for e in eta]
    if len(steps) != q + 1:
        raise InputError(f"eta has {len(steps)} step sizes but Q={q} needs Q+1 = {q + 1} (t = 0..Q)")
    return steps


def alpha_factor(alpha: float) -> float:
    """(alpha + sqrt(2)/2)^2 = alpha^2 + sqrt(2) alpha + 1/2: Theorem 1's dependence on nu/mu."""
    a = check_positive(alpha, "alpha (= nu / mu)", allow_zero=True)
    return (a + SQRT2 / 2) ** 2


def theorem1_bound(
    l0: float,
    d: int,
    mu: float,
    nu: float,
    eta: float | Sequence[float],
    q: int,
    f_gap: float,
) -> float:
    """Right-hand side of Theorem 1 (ZO attack, eq. 10-11, under RND; Assumption 1 only).

        (1/S_Q) sum_t eta_t E||grad f_{mu,nu}(x_t)||^2 <= f_gap / S_Q
            + (1/S_Q) sum_{t=0}^{Q} eta_t^2 L0^3 d^{5/2} (1/(2 mu) + sqrt(2) nu/mu^2 + nu^2/mu^3)

    with S_Q = sum_t eta_t and `f_gap` = f_{mu,nu}(x0) - f*_nu (at most L0 R on the ball N_R).
    The bracket equals (alpha + sqrt(2)/2)^2 / mu, so the bound grows with alpha = nu/mu.
    """
    l0 = check_positive(l0, "L0")
    d = _check_dim(d)
    mu, nu = check_mu_nu(mu, nu)
    q = check_int(q, "Q (iterations)", minimum=0)
    f_gap = check_positive(f_gap, "f_gap (= f(x0) - f*)", allow_zero=True)
    steps = _steps(eta, q)
    s_q = sum(steps)
    bracket = 1 / (2 * mu) + SQRT2 * nu / mu**2 + nu**2 / mu**3
    return f_gap / s_q + sum(e * e for e in steps) * l0**3 * d**2.5 * bracket / s_q


def mu_for_accuracy(eps: float, d: int, l0: float) -> float:
    """Largest probe size with ``|f_{mu,nu} - f_nu| <= eps`` (Remark 1, Nesterov's Thm 1):
    eps / (sqrt(d) L0)."""
    return check_positive(eps, "eps") / (math.sqrt(_check_dim(d)) * check_positive(l0, "L0"))


def theorem1_step_size(r: float, eps: float, alpha: float, d: int, l0: float, q: int) -> float:
    """Theorem 1's constant step: eta = [R eps / ((alpha + sqrt(2)/2)^2 d^3 L0^3 (Q+1))]^{1/2}."""
    r = check_positive(r, "R (threat radius)")
    eps = check_positive(eps, "eps")
    d = _check_dim(d)
    l0 = check_positive(l0, "L0")
    q = check_int(q, "Q (iterations)", minimum=0)
    return math.sqrt(r * eps / (alpha_factor(alpha) * d**3 * l0**3 * (q + 1)))


def theorem1_rate(l0: float, r: float, d: int, q: int, eps: float, alpha: float) -> float:
    """Eq. (12): (1/(Q+1)) sum_t E||grad f_{mu,nu}(x_t)||^2 <= 2 L0^{5/2} R^{1/2} d^{3/2} (alpha + sqrt(2)/2)
    / ((Q+1)^{1/2} eps^{1/2}), with mu = eps / (sqrt(d) L0) and Theorem 1's constant step."""
    l0 = check_positive(l0, "L0")
    r = check_positive(r, "R (threat radius)")
    d = _check_dim(d)
    q = check_int(q, "Q (iterations)", minimum=0)
    eps = check_positive(eps, "eps")
    a = math.sqrt(alpha_factor(alpha))
    return 2 * l0**2.5 * math.sqrt(r) * d**1.5 * a / (math.sqrt(q + 1) * math.sqrt(eps))


def query_complexity(alpha: float, d: int, l0: float, r: float, eps: float, delta: float) -> float:
    """Remark 1: iterations Q+1 for eq. (12)'s bound to reach `delta`.

    Setting eq. (12) equal to delta gives Q + 1 = 4 (alpha + sqrt(2)/2)^2 d^3 L0^5 R / (eps delta^2),
    i.e. the seed's O((alpha + sqrt(2)/2)^2 d^3 L0^5 R / (eps delta^2)) with its constant 4.
    """
    d = _check_dim(d)
    l0 = check_positive(l0, "L0")
    r = check_positive(r, "R (threat radius)")
    eps = check_positive(eps, "eps")
    delta = check_positive(delta, "delta")
    return 4 * alpha_factor(alpha) * d**3 * l0**5 * r / (eps * delta**2)


@dataclass(frozen=True)
class Theorem2Terms:
    """The pieces of eq. (14)'s bracket (per unit eta_t^2), and the whole right-hand side."""

    lipschitz: float  # L0^2 L1 d^2 (1/2 + 2 nu^2 / (mu^2 M))
    cross: float  # nu^2 L0 L1^2 d^{5/2} / mu
    curvature: float  # nu^4 L1^3 (M + 1) d^3 / (2 mu^2 M)
    bound: float


def theorem2_terms(
    l0: float,
    l1: float,
    d: int,
    r: float,
    q: int,
    mu: float,
    nu: float,
    m: float,
    eta: float | Sequence[float],
) -> Theorem2Terms:
    """Eq. (14), Theorem 2 (EOT with M samples, eq. 13; Assumptions 1 and 2):

        (1/S_Q) sum_t eta_t E||grad f_{mu,nu}(x_t)||^2 <= L0 R / S_Q + (1/S_Q) sum_t eta_t^2 (
            L0^2 L1 d^2 (1/2 + 2 nu^2/(mu^2 M)) + nu^2 L0 L1^2 d^{5/2} / mu
            + nu^4 L1^3 (M+1) d^3 / (2 mu^2 M))

    `m = math.inf` gives the seed's M -> infinity limit, where nu^4 L1^3 d^3 / (2 mu^2) remains.
    """
    l0 = check_positive(l0, "L0")
    l1 = check_positive(l1, "L1")
    d = _check_dim(d)
    r = check_positive(r, "R (threat radius)")
    q = check_int(q, "Q (iterations)", minimum=0)
    mu, nu = check_mu_nu(mu, nu)
    m = check_m(m, allow_inf=True)
    steps = _steps(eta, q)
    s_q = sum(steps)
    inv_m = 0.0 if m == math.inf else 1.0 / m
    lip = l0**2 * l1 * d**2 * (0.5 + 2 * nu**2 * inv_m / mu**2)
    cross = nu**2 * l0 * l1**2 * d**2.5 / mu
    curv = nu**4 * l1**3 * (1 + inv_m) * d**3 / (2 * mu**2)
    bound = l0 * r / s_q + sum(e * e for e in steps) * (lip + cross + curv) / s_q
    return Theorem2Terms(lipschitz=lip, cross=cross, curvature=curv, bound=bound)


def theorem2_bound(
    l0: float,
    l1: float,
    d: int,
    r: float,
    q: int,
    mu: float,
    nu: float,
    m: float,
    eta: float | Sequence[float],
) -> float:
    """Right-hand side of eq. (14) (Theorem 2); see `theorem2_terms` for its pieces."""
    return theorem2_terms(l0, l1, d, r, q, mu, nu, m, eta).bound


def theorem3_bound(l0: float, nu: float, d: int, h_mu: float) -> float:
    """Eq. (16), Theorem 3: ``P(sign h_mu(x) != sign h_nu(x)) <= 2 L0 nu sqrt(d) / |h_mu(x)|``.

    Returns the raw right-hand side (infinite when h_mu = 0); values >= 1 say nothing.
    For tensors of h_mu use `rnd.theory.signflip.theorem3_bound_tensor`.
    """
    l0 = check_positive(l0, "L0")
    nu = check_positive(nu, "nu (the RND noise level)", allow_zero=True)
    d = _check_dim(d)
    h = abs(float(h_mu))
    if h == 0:
        return math.inf if nu > 0 else 0.0
    return 2 * l0 * nu * math.sqrt(d) / h


def smoothing_gap_bound(l0: float, nu: float, d: int) -> float:
    """``|f_nu(x) - f(x)| <= nu L0 sqrt(d)`` for L0-Lipschitz f (Gaussian smoothing, eq. 9; Nesterov
    2017).

    The same expression with mu in place of nu bounds ``|f_{mu,nu} - f_nu|`` (Remark 1).
    """
    l0 = check_positive(l0, "L0")
    nu = check_positive(nu, "nu (the smoothing level)", allow_zero=True)
    return nu * l0 * math.sqrt(_check_dim(d))
