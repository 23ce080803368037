import pytest
import torch

from rnd import Oracle
from rnd.attacks import ATTACKS, Square, make_attack
from rnd.errors import InputError, UnknownNameError


def test_unknown_attack_name():
    with pytest.raises(UnknownNameError, match="square"):
        make_attack("sqaure", eps=0.1)


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_bad_hyper_parameters(name):
    with pytest.raises(InputError, match="eps"):
        make_attack(name, eps=0.0)
    with pytest.raises(InputError, match="eps"):
        make_attack(name, eps=-1)
    with pytest.raises(InputError, match="norm"):
        make_attack(name, eps=0.1, norm="l1")
    with pytest.raises(InputError, match="eot"):
        make_attack(name, eps=0.1, eot=0)
    with pytest.raises(InputError, match="mu"):
        make_attack(name, eps=0.1, mu=-0.1)


def test_bad_call_inputs(tiny_model, attack_batch):
    x, y = attack_batch
    oracle = Oracle(tiny_model, budget=50)
    attack = Square(eps=0.1, seed=0)
    with pytest.raises(InputError, match="labels"):
        attack(oracle, x, y[:-1])
    with pytest.raises(InputError, match=r"\[0, 10\)"):
        attack(oracle, x, y + 10)
    with pytest.raises(InputError, match="targets"):
        attack(oracle, x, y, targets=y)
    with pytest.raises(InputError, match="targets"):
        Square(eps=0.1, targeted=True)(oracle, x, y)
    with pytest.raises(InputError, match=r"\[0, 10\)"):
        Square(eps=0.1, targeted=True)(oracle, x, y, (y + 1) % 10 + 10)
    with pytest.raises(InputError, match="budget"):
        attack(Oracle(tiny_model), x, y)
    with pytest.raises(InputError, match="scores"):
        attack(Oracle(tiny_model, output="labels", budget=10), x, y)
    with pytest.raises(InputError, match="per image"):
        attack(oracle, x[:, :, :20], y)
    assert int(oracle.counts.sum()) == 0


def test_adaptive_mu_scales_with_nu():
    attack = make_attack("nes", eps=0.1, mu=0.01, mu_nu_ratio=2.0)
    assert attack.effective_mu(0.0) == 0.01
    assert attack.effective_mu(0.02) == pytest.approx(0.04)


def test_attack_does_not_touch_global_rng(tiny_model, attack_batch):
    x, y = attack_batch
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    Square(eps=0.1, seed=0)(Oracle(tiny_model, budget=20), x[:4], y[:4])
    assert torch.equal(torch.rand(3), expected)
