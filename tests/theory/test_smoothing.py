import pytest
import torch

from rnd.errors import InputError
from rnd.theory.functions import make_function
from rnd.theory.smoothing import gaussian_smoothing, smoothing_check


def test_quadratic_smoothing_matches_the_closed_form():
    # eq. (9) for f = x^T A x / 2: f_nu = f + nu^2/2 tr(A)
    fn = make_function("quadratic", 8, seed=0)
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(1))
    est, se = gaussian_smoothing(fn, x, 0.3, samples=4000, generator=torch.Generator().manual_seed(2))
    exact = fn.value(x) + fn.smoothing_shift(0.3)
    assert torch.all((est - exact).abs() < 4 * se + 1e-6)


def test_logistic_gap_stays_under_nu_l0_sqrt_d():
    fn = make_function("logistic", 10, seed=0)
    x = torch.randn(6, 10, generator=torch.Generator().manual_seed(1))
    check = smoothing_check(
        fn, x, [0.0, 0.05, 0.5, 2.0], fn.l0(0.0), samples=256, generator=torch.Generator().manual_seed(2)
    )
    assert bool(check.holds.all())
    assert torch.all(check.gap[0] == 0)  # nu = 0 is f itself
    assert torch.all(check.gap[1:] < check.bound[1:])
    # the bound is linear in nu, the gap grows with nu
    assert float(check.gap[3].mean()) > float(check.gap[1].mean())


def test_bad_input():
    fn = make_function("quadratic", 4)
    g = torch.Generator()
    with pytest.raises(InputError, match="nu"):
        gaussian_smoothing(fn, torch.zeros(2, 4), -0.1, generator=g)
    with pytest.raises(InputError, match="dimension mismatch"):
        gaussian_smoothing(fn, torch.zeros(2, 3), 0.1, samples=4, generator=g)
    with pytest.raises(InputError, match="one value per point"):
        smoothing_check(fn, torch.zeros(2, 4), [0.1], torch.ones(3), samples=4, generator=g)
