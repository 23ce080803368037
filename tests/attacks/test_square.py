import pytest
import torch

from rnd.attacks import Square
from rnd.attacks.square import square_fraction
from tests.attacks.helpers import check_early_stop, run_checked, true_margin


def test_schedule():
    assert square_fraction(0.05, 0, 10000) == 0.05
    assert square_fraction(0.05, 11, 10000) == 0.025
    assert square_fraction(0.05, 9000, 10000) == pytest.approx(0.05 / 512)
    assert square_fraction(0.05, 100, 1000) == square_fraction(0.05, 1000, 10000)


@pytest.mark.parametrize(("norm", "eps", "rate"), [("linf", 0.2, 0.95), ("l2", 3.0, 0.5)])
def test_succeeds_on_undefended_and_lowers_margin(tiny_model, attack_batch, norm, eps, rate):
    x, y = attack_batch
    result = run_checked(Square(eps=eps, norm=norm, seed=0), tiny_model, x, y, budget=2000)
    assert float(result.success.float().mean()) >= rate
    assert bool((true_margin(tiny_model, result.x_adv, y) < true_margin(tiny_model, x, y)).all())
    # observed success without noise = truly misclassified
    assert torch.equal(result.success, true_margin(tiny_model, result.x_adv, y) < 0)


def test_rnd_raises_failure_rate(tiny_model, attack_batch):
    x, y = attack_batch
    plain = run_checked(Square(eps=0.1, seed=0, mu=0.05), tiny_model, x, y, budget=300)
    noisy = run_checked(Square(eps=0.1, seed=0, mu=0.05), tiny_model, x, y, budget=300, nu=0.05)
    assert noisy.failure_rate > plain.failure_rate


def test_early_stop(tiny_model, attack_batch):
    x, y = attack_batch
    check_early_stop(lambda: Square(eps=0.1, seed=0), tiny_model, x, y, budget=100)


def test_targeted(tiny_model, attack_batch):
    x, y = attack_batch
    targets = (y + 1) % 10
    result = run_checked(
        Square(eps=0.2, targeted=True, seed=0), tiny_model, x[:8], y[:8], 3000, targets=targets[:8]
    )
    pred = tiny_model(result.x_adv).argmax(1)
    assert bool(result.success.any())
    assert torch.equal(result.success, pred == targets[:8])


def test_eot_costs_m_queries(tiny_model, attack_batch):
    x, y = attack_batch
    result = run_checked(Square(eps=0.1, seed=0, eot=3), tiny_model, x[:5], y[:5], budget=90, nu=0.02)
    assert bool((result.queries % 3 == 0).all())
