import torch

from rnd.attacks import NES
from tests.attacks.helpers import check_early_stop, run_checked, true_margin


def test_lowers_margin_and_succeeds_linf(tiny_model, attack_batch):
    x, y = attack_batch
    result = run_checked(NES(eps=0.2, seed=0, lr=0.02), tiny_model, x, y, budget=3000)
    assert float(result.success.float().mean()) >= 0.7
    assert float((true_margin(tiny_model, result.x_adv, y) - true_margin(tiny_model, x, y)).mean()) < 0


def test_l2(tiny_model, attack_batch):
    x, y = attack_batch
    result = run_checked(NES(eps=3.0, norm="l2", seed=0), tiny_model, x, y, budget=3000)
    assert float(result.success.float().mean()) >= 0.5


def test_step_cost_and_budget(tiny_model, attack_batch):
    x, y = attack_batch
    result = run_checked(NES(eps=0.1, q=5, seed=0), tiny_model, x[:6], y[:6], budget=100)
    # 1 start query + k steps of 11 queries each
    assert bool(((result.queries - 1) % 11 == 0).all())


def test_early_stop(tiny_model, attack_batch):
    x, y = attack_batch
    check_early_stop(lambda: NES(eps=0.15, seed=0), tiny_model, x, y, budget=300)


def test_targeted(tiny_model, attack_batch):
    x, y = attack_batch
    targets = (y[:6] + 1) % 10
    attack = NES(eps=0.3, targeted=True, seed=0, lr=0.02)
    result = run_checked(attack, tiny_model, x[:6], y[:6], 2000, targets=targets)
    assert torch.equal(result.success, tiny_model(result.x_adv).argmax(1) == targets)
    # the targeted margin (best other class minus target) falls for every image
    before = -true_margin(tiny_model, x[:6], targets)
    after = -true_margin(tiny_model, result.x_adv, targets)
    assert bool((after < before - 1.0).all())
