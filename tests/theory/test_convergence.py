import pytest
import torch

from rnd.errors import InputError
from rnd.theory.convergence import (
    convergence_experiment,
    diminishing_returns,
    eot_gradient_estimate,
    is_increasing,
    zo_attack_curve,
)
from rnd.theory.functions import make_function


def test_eot_estimator_is_unbiased_on_a_quadratic():
    # E[(f(x + mu u + nu v1) - f(x + nu v2)) / mu u] = grad f(x) exactly for a quadratic (eq. 13)
    fn = make_function("quadratic", 6, seed=1)
    x = fn.x0.double().expand(40000, -1)
    g = eot_gradient_estimate(fn, x, 0.1, 0.1, 2, generator=torch.Generator().manual_seed(0))
    mean, se = g.mean(0), g.std(0) / 200
    assert torch.all((mean - fn.grad(fn.x0[None].double())[0]).abs() < 4 * se)


def test_nu_zero_makes_eot_irrelevant():
    fn = make_function("quadratic", 5)
    x = fn.x0[None].double().repeat(3, 1)
    g1 = eot_gradient_estimate(fn, x, 0.05, 0.0, 1, generator=torch.Generator().manual_seed(3))
    g8 = eot_gradient_estimate(fn, x, 0.05, 0.0, 8, generator=torch.Generator().manual_seed(3))
    assert torch.allclose(g1, g8)


def test_theorem1_and_2_qualitatively_on_a_quadratic():
    fn = make_function("quadratic", 10, seed=0)
    res = convergence_experiment(fn, [0, 1, 2, 4], [1, 2, 4, 8], mu=0.05, iters=150, runs=32, seed=0)
    avg = res.average
    assert res.curves.shape == (4, 4, 151)
    # the attack converges: the squared gradient norm falls from its start
    assert float(res.final[0, 0]) < 0.2 * float(res.curves[0, 0, 0])
    # Theorem 1: larger nu/mu, slower convergence (M = 1)
    assert is_increasing(avg[:, 0].tolist())
    # Theorem 2: at nu/mu = 4 more EOT samples help, with diminishing returns ...
    assert diminishing_returns(avg[3].tolist())
    # ... and never beyond the noise-free attack
    assert float(avg[3, -1]) > float(avg[0, 0])


def test_theorem1_and_2_qualitatively_on_logistic_loss():
    fn = make_function("logistic", 8, seed=0)
    res = convergence_experiment(fn, [0, 2, 4], [1, 2, 4, 8], mu=0.05, iters=120, runs=32, seed=0)
    avg = res.average
    assert is_increasing(avg[:, 0].tolist())
    assert diminishing_returns(avg[2].tolist())  # falls with M at nu/mu = 4, gains shrinking
    assert float(avg[2, -1]) > float(avg[0, 0])


def test_fixed_seed_is_reproducible_and_leaves_global_rng_alone():
    fn = make_function("logistic", 5)
    state = torch.get_rng_state()
    a = zo_attack_curve(fn, 0.05, 0.1, 2, eta=0.1, iters=20, runs=4, radius=1.0, seed=7)
    b = zo_attack_curve(fn, 0.05, 0.1, 2, eta=0.1, iters=20, runs=4, radius=1.0, seed=7)
    assert torch.equal(a, b)
    assert torch.equal(state, torch.get_rng_state())


def test_iterates_stay_in_the_threat_ball():
    fn = make_function("quadratic", 4)
    # a huge step would leave the ball without the projection of eq. (11); grad norm is bounded on it
    curve = zo_attack_curve(fn, 0.05, 0.5, 1, eta=50.0, iters=30, runs=8, radius=0.5, seed=0)
    assert float(curve.max()) <= (fn.l1 * (1 + 0.5)) ** 2 + 1e-6


def test_bad_input():
    fn = make_function("quadratic", 4)
    g = torch.Generator()
    with pytest.raises(InputError, match="dimension mismatch"):
        eot_gradient_estimate(fn, torch.zeros(2, 5), 0.1, 0.1, 1, generator=g)
    with pytest.raises(InputError, match="mu"):
        eot_gradient_estimate(fn, torch.zeros(2, 4), 0.0, 0.1, 1, generator=g)
    with pytest.raises(InputError, match="nu"):
        eot_gradient_estimate(fn, torch.zeros(2, 4), 0.1, -0.1, 1, generator=g)
    with pytest.raises(InputError, match="M"):
        convergence_experiment(fn, [1.0], [0], iters=2, runs=1)
    with pytest.raises(InputError, match="alpha"):
        convergence_experiment(fn, [-1.0], [1], iters=2, runs=1)
