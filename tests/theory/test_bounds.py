import itertools
import math

import pytest

from rnd.errors import InputError
from rnd.theory import bounds as b


def test_theorem1_bracket_is_alpha_factor_over_mu():
    # (1/(2mu) + sqrt(2) nu/mu^2 + nu^2/mu^3) = (alpha + sqrt(2)/2)^2 / mu: the form behind eq. (12)
    mu, nu, d, l0, eta, q = 0.02, 0.05, 9, 2.0, 1e-3, 4
    got = b.theorem1_bound(l0, d, mu, nu, eta, q, f_gap=0.0)
    s_q = (q + 1) * eta
    expected = (q + 1) * eta**2 * l0**3 * d**2.5 * b.alpha_factor(nu / mu) / mu / s_q
    assert got == pytest.approx(expected, rel=1e-12)


def test_theorem1_grows_with_nu_over_mu():
    vals = [b.theorem1_bound(1.0, 100, 0.01, a * 0.01, 1e-4, 99, 1.0) for a in (0, 0.5, 1, 2, 4)]
    assert all(x < y for x, y in itertools.pairwise(vals))


def test_theorem1_with_its_step_and_mu_equals_eq12():
    l0, r, d, q, eps, alpha = 1.5, 2.0, 50, 999, 0.1, 3.0
    mu = b.mu_for_accuracy(eps, d, l0)
    eta = b.theorem1_step_size(r, eps, alpha, d, l0, q)
    assert b.theorem1_bound(l0, d, mu, alpha * mu, eta, q, f_gap=l0 * r) == pytest.approx(
        b.theorem1_rate(l0, r, d, q, eps, alpha), rel=1e-9
    )


def test_constant_step_equals_step_sequence():
    one = b.theorem1_bound(1.0, 10, 0.1, 0.2, 0.01, 3, 1.0)
    seq = b.theorem1_bound(1.0, 10, 0.1, 0.2, [0.01] * 4, 3, 1.0)
    assert one == pytest.approx(seq)
    with pytest.raises(InputError, match="Q\\+1 = 4"):
        b.theorem1_bound(1.0, 10, 0.1, 0.2, [0.01] * 3, 3, 1.0)


def test_query_complexity_reaches_delta():
    alpha, d, l0, r, eps, delta = 2.0, 30, 1.2, 0.5, 0.05, 0.3
    q_plus_1 = b.query_complexity(alpha, d, l0, r, eps, delta)
    # eq. (12) at Q = q_plus_1 - 1 equals delta (Remark 1)
    rate = 2 * l0**2.5 * math.sqrt(r) * d**1.5 * (alpha + math.sqrt(2) / 2) / math.sqrt(q_plus_1 * eps)
    assert rate == pytest.approx(delta)
    assert b.query_complexity(4.0, d, l0, r, eps, delta) > q_plus_1


def test_theorem2_falls_with_m_with_diminishing_returns_and_a_floor():
    args = dict(l0=1.0, l1=1.0, d=100, r=1.0, q=99, mu=0.01, eta=1e-4)
    vals = [b.theorem2_bound(**args, nu=0.04, m=m) for m in (1, 2, 4, 8, 16)]
    gains = [x - y for x, y in itertools.pairwise(vals)]
    assert all(g > 0 for g in gains) and all(g1 > g2 for g1, g2 in itertools.pairwise(gains))
    limit = b.theorem2_terms(**args, nu=0.04, m=math.inf)
    assert limit.bound < vals[-1]
    # M -> infinity keeps nu^4 L1^3 d^3 / (2 mu^2): the curvature term does not vanish
    assert limit.curvature == pytest.approx(0.04**4 * 100**3 / (2 * 0.01**2))
    # and at nu = 0 EOT changes nothing
    assert b.theorem2_bound(**args, nu=0.0, m=1) == b.theorem2_bound(**args, nu=0.0, m=16)


def test_theorem3_and_smoothing_bounds():
    assert b.theorem3_bound(2.0, 0.01, 100, -0.5) == pytest.approx(2 * 2.0 * 0.01 * 10 / 0.5)
    assert b.theorem3_bound(2.0, 0.01, 100, 0.0) == math.inf
    assert b.smoothing_gap_bound(3.0, 0.1, 16) == pytest.approx(0.1 * 3.0 * 4)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: b.theorem1_bound(1.0, 10, 0.0, 0.1, 0.1, 5, 1.0), "mu"),
        (lambda: b.theorem1_bound(1.0, 10, -0.1, 0.1, 0.1, 5, 1.0), "mu"),
        (lambda: b.theorem1_bound(1.0, 10, 0.1, -0.1, 0.1, 5, 1.0), "nu"),
        (lambda: b.theorem2_bound(1.0, 1.0, 10, 1.0, 5, 0.1, 0.1, 0, 0.1), "M"),
        (lambda: b.theorem2_bound(1.0, 1.0, 10, 1.0, 5, 0.1, 0.1, 1.5, 0.1), "M"),
        (lambda: b.theorem1_bound(1.0, 0, 0.1, 0.1, 0.1, 5, 1.0), "d"),
        (lambda: b.theorem3_bound(1.0, -1.0, 10, 1.0), "nu"),
        (lambda: b.query_complexity(1.0, 10, 1.0, 1.0, 0.1, 0.0), "delta"),
    ],
)
def test_bad_input_is_a_clear_error(call, message):
    with pytest.raises(InputError, match=message):
        call()
