import math

import pytest
import torch
from torch import nn

from rnd.errors import InputError, UnknownNameError
from rnd.theory.objective import MarginObjective
from rnd.theory.signflip import estimate_l0, linear_flip_probability, sign_flip_probability, wilson_interval


class LinearMargin(nn.Module):
    """Two classes with logits (w^T x, 0): the CW margin of class 0 is exactly w^T x (L0 = ||w||)."""

    input_shape = (1, 4, 4)
    num_classes = 2

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.linspace(-1, 1, 16) + 0.3, requires_grad=False)

    def forward(self, x):
        z = x.flatten(1) @ self.w
        return torch.stack([z, torch.zeros_like(z)], 1)


@pytest.fixture(scope="module")
def linear():
    x = torch.rand(6, 1, 4, 4, generator=torch.Generator().manual_seed(0))
    return LinearMargin().eval(), x, torch.zeros(6, dtype=torch.long)


def test_linear_margin_matches_the_closed_form(linear):
    # For f(x) = w^T x and u, v ~ N(0, I): h_mu = mu w^T u, h_nu = h_mu + nu w^T (v1 - v2), so
    # P(flip) = P(sign(Z1 + sqrt(2) alpha Z2) != sign(Z1)) = arctan(sqrt(2) alpha) / pi.
    model, x, y = linear
    mus, nus = [0.05, 0.1], [0.0, 0.025, 0.1, 0.4]
    res = sign_flip_probability(model, x, y, mus, nus, draws=500, clip=False, seed=0)
    for i, mu in enumerate(mus):
        for j, nu in enumerate(nus):
            exact = math.atan(math.sqrt(2) * nu / mu) / math.pi
            assert linear_flip_probability(nu / mu) == pytest.approx(exact)
            assert float(res.ci_low[i, j]) - 0.01 <= exact <= float(res.ci_high[i, j]) + 0.01
    assert torch.all(res.p_flip[:, 0] == 0)  # no noise, no flip
    # the local L0 estimate is exact for a linear function: the gradient norm is ||w|| everywhere
    assert torch.allclose(res.l0, torch.full_like(res.l0, float(model.w.norm())), rtol=1e-5)
    assert res.violations == [] and int(res.image_violations.sum()) == 0


@pytest.mark.parametrize("direction", ["sphere", "sign"])
def test_linear_margin_other_directions(linear, direction):
    model, x, y = linear
    mus, nus = [0.2], [0.01, 0.05]
    res = sign_flip_probability(model, x, y, mus, nus, draws=400, clip=False, seed=2, direction=direction)
    for j, nu in enumerate(nus):
        exact = linear_flip_probability(nu / mus[0], direction, 16)
        assert float(res.ci_low[0, j]) - 0.015 <= exact <= float(res.ci_high[0, j]) + 0.015


def test_secant_estimate_is_below_the_gradient_estimate(linear):
    model, x, y = linear
    obj = MarginObjective(model, y, clip=False)
    g = torch.Generator().manual_seed(0)
    sec = estimate_l0(obj, x, [0.1], [0.05, 0.2], method="secant", points=64, generator=g)
    grad = estimate_l0(obj, x, [0.1], [0.05, 0.2], method="grad", points=8, generator=g)
    w = float(model.w.norm())
    # along random directions |w^T v| / ||v|| <= ||w||: the gradient estimate is exact, the secant not
    assert torch.allclose(grad, torch.full_like(grad, w), rtol=1e-5)
    assert torch.all(sec <= w + 1e-5) and torch.all(sec > 0.3 * w)


def test_tiny_cnn_flip_probability_rises_with_nu_over_mu_and_respects_theorem3(tiny_model, attack_batch):
    x, y = attack_batch[0][:6], attack_batch[1][:6]
    mus, nus = [0.003, 0.03], [0.001, 0.01, 0.1]
    state = torch.get_rng_state()
    res = sign_flip_probability(tiny_model, x, y, mus, nus, draws=80, seed=1, l0_points=8)
    assert torch.equal(state, torch.get_rng_state())  # only explicit generators
    p = res.p_flip
    assert torch.all(p[:, 1:] >= p[:, :-1] - 0.03)  # rises with nu
    assert torch.all(p[0] >= p[1] - 0.03)  # falls with mu
    assert float(p[0, -1]) > float(p[1, 0]) + 0.2  # nu/mu = 33 against 0.03
    assert res.violations == []
    again = sign_flip_probability(tiny_model, x, y, mus, nus, draws=80, seed=1, l0_points=8)
    assert torch.equal(res.p_flip, again.p_flip) and torch.equal(res.l0, again.l0)


def test_wilson_interval_known_values():
    """95 % Wilson intervals, by hand: centre (p + z^2/2n) / (1 + z^2/n), half-width
    z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n), z = 1.96. 0/10: [0, 0.2775]; 5/10: [0.2366, 0.7634];
    10/10: [0.7225, 1]; 81/100: [0.7222, 0.8749]; 5/10 at 99 % (z = 2.5758): [0.1842, 0.8158].
    A wrong z^2 term, a missing denominator or a normal-approximation interval all miss these."""
    lo, hi = wilson_interval(torch.tensor([0.0, 5.0, 10.0]), 10)
    assert lo.tolist() == pytest.approx([0.0, 0.23659, 0.72246], abs=1e-4)
    assert hi.tolist() == pytest.approx([0.27754, 0.76341, 1.0], abs=1e-4)
    lo, hi = wilson_interval(torch.tensor([81.0]), 100)
    assert (float(lo), float(hi)) == pytest.approx((0.72221, 0.87485), abs=1e-4)
    lo, hi = wilson_interval(torch.tensor([5.0]), 10, z=2.5758)  # 99 %
    assert (float(lo), float(hi)) == pytest.approx((0.18423, 0.81577), abs=1e-4)


def test_bad_input(linear):
    model, x, y = linear
    with pytest.raises(InputError, match="mu"):
        sign_flip_probability(model, x, y, [0.0], [0.1], draws=2)
    with pytest.raises(InputError, match="nu"):
        sign_flip_probability(model, x, y, [0.1], [-0.1], draws=2)
    with pytest.raises(InputError, match="draws"):
        sign_flip_probability(model, x, y, [0.1], [0.1], draws=0)
    with pytest.raises(InputError, match="expects"):  # d mismatch: 5x5 images for a 4x4 model
        sign_flip_probability(model, torch.rand(6, 1, 5, 5), y, [0.1], [0.1], draws=2)
    with pytest.raises(InputError, match="labels"):
        sign_flip_probability(model, x, y[:3], [0.1], [0.1], draws=2)
    with pytest.raises(InputError, match="l0 must have shape"):
        sign_flip_probability(model, x, y, [0.1], [0.1], draws=2, l0=torch.ones(3, 1))
    with pytest.raises(UnknownNameError, match="direction"):
        sign_flip_probability(model, x, y, [0.1], [0.1], draws=2, direction="cauchy")
