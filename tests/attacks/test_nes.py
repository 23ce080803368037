import pytest
import torch

from rnd.attacks import NES
from rnd.attacks.score import PlateauState
from rnd.errors import InputError
from tests.attacks.helpers import check_early_stop, run_checked, true_margin

# Floors measured over 20 attack seeds x 2 tiny models (trained on 1 and 2 torch threads, as
# conftest does on 1- and 2-core machines), 20 images: the lowest success seen, minus 2 images.
# NES l_inf: lowest 0.75 (mean 0.75); l_2: lowest 0.80 (mean 0.84).


def test_lowers_margin_and_succeeds_linf(tiny_model, attack_batch):
    x, y = attack_batch
    result = run_checked(NES(eps=0.2, seed=0, lr=0.02), tiny_model, x, y, budget=3000)
    assert float(result.success.float().mean()) >= 0.65
    assert float((true_margin(tiny_model, result.x_adv, y) - true_margin(tiny_model, x, y)).mean()) < 0


def test_l2(tiny_model, attack_batch):
    x, y = attack_batch
    result = run_checked(NES(eps=3.0, norm="l2", seed=0), tiny_model, x, y, budget=3000)
    assert float(result.success.float().mean()) >= 0.7


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


def test_momentum_and_plateau_checked():
    for bad in (
        {"momentum": 1.0},
        {"momentum": -0.1},
        {"plateau_drop": 1.0},
        {"q": 0},
        {"lr": 0.0},
        {"min_lr": -1.0},
    ):
        with pytest.raises(InputError):
            NES(eps=0.1, **bad)
    nes = NES(eps=0.1)
    assert (nes.momentum, nes.plateau_length, nes.plateau_drop, nes.lr) == (0.9, 5, 2.0, 0.01)


def test_plateau_halves_the_step_when_loss_rises():
    nes = NES(eps=0.1, plateau_length=3)
    state = PlateauState(torch.zeros(2, 1, 4, 4), torch.tensor([0, 1]), None, torch.arange(2))
    state.lr = torch.full((2,), 0.01)
    state.history = torch.full((2, 3), float("nan"))
    rows = torch.arange(2)
    for loss in ([1.0, 1.0], [0.5, 1.1], [0.2, 1.2]):  # image 0 improves, image 1 gets worse
        nes._plateau(state, rows, torch.tensor(loss))
    assert state.lr.tolist() == pytest.approx([0.01, 0.005])
    assert bool(state.history[1].isnan().all())  # the window restarts after a drop
