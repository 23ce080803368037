import pytest
import torch

from rnd.attacks import SignHunter
from rnd.errors import InputError
from tests.attacks.helpers import check_early_stop, run_checked, true_margin


# Floors measured over 20 attack seeds x 2 tiny models (trained on 1 and 2 torch threads, as
# conftest does on 1- and 2-core machines), 20 images: the lowest success seen, minus 2 images.
# SignHunter is deterministic (its seed is unused): l_inf 0.90 and l_2 0.75 on both models.
@pytest.mark.parametrize(("norm", "eps", "rate"), [("linf", 0.2, 0.8), ("l2", 3.0, 0.65)])
def test_succeeds_on_undefended_and_lowers_margin(tiny_model, attack_batch, norm, eps, rate):
    x, y = attack_batch
    result = run_checked(SignHunter(eps=eps, norm=norm, seed=0), tiny_model, x, y, budget=1000)
    assert float(result.success.float().mean()) >= rate
    assert bool((true_margin(tiny_model, result.x_adv, y) < true_margin(tiny_model, x, y)).all())
    assert torch.equal(result.success, true_margin(tiny_model, result.x_adv, y) < 0)


def test_points_are_sign_vertices(tiny_model, attack_batch):
    """Every coordinate of an l_inf perturbation is +-eps (up to the [0, 1] box)."""
    x, y = attack_batch
    eps = 0.1
    result = run_checked(SignHunter(eps=eps, seed=0), tiny_model, x[:4], y[:4], budget=50)
    delta = result.x_adv - x[:4]
    inside = ((x[:4] + eps) <= 1) & ((x[:4] - eps) >= 0)
    assert torch.allclose(delta[inside].abs(), torch.full_like(delta[inside], eps), atol=1e-6)


def test_mu_defaults_to_eps_and_is_checked():
    assert SignHunter(eps=0.05).mu == 0.05
    assert SignHunter(eps=0.05, mu=0.02).mu == 0.02
    with pytest.raises(InputError):
        SignHunter(eps=0.05, mu=-1.0)
    with pytest.raises(InputError):
        SignHunter(eps=0.05, norm="l1")  # type: ignore[arg-type]


def test_rnd_raises_failure_rate(tiny_model, attack_batch):
    x, y = attack_batch
    plain = run_checked(SignHunter(eps=0.1, seed=0), tiny_model, x, y, budget=300)
    noisy = run_checked(SignHunter(eps=0.1, seed=0), tiny_model, x, y, budget=300, nu=0.05)
    # RND(0.05): 55 -> 75 % failure for every one of 20 defense seeds x 2 models: require a gain of
    # 15 points (one image of margin)
    assert noisy.failure_rate >= plain.failure_rate + 15


def test_early_stop(tiny_model, attack_batch):
    x, y = attack_batch
    check_early_stop(lambda: SignHunter(eps=0.15, seed=0), tiny_model, x, y, budget=100)


# slow: among the longest of the default suite (targeted SignHunter runs its whole budget)
@pytest.mark.slow
def test_targeted(tiny_model, attack_batch):
    x, y = attack_batch
    targets = (y[:6] + 1) % 10
    attack = SignHunter(eps=0.2, targeted=True, seed=0)
    result = run_checked(attack, tiny_model, x[:6], y[:6], 1500, targets=targets)
    assert bool(result.success.any())
    assert torch.equal(result.success, tiny_model(result.x_adv).argmax(1) == targets)


def test_eot_costs_m_queries(tiny_model, attack_batch):
    x, y = attack_batch
    result = run_checked(SignHunter(eps=0.1, seed=0, eot=3), tiny_model, x[:5], y[:5], budget=60, nu=0.02)
    assert bool((result.queries % 3 == 0).all())
    # a step costs exactly M = 3 and 60 = 20 steps: an image that did not succeed spends all 60
    assert bool((result.success | (result.queries == 60)).all())
    assert not bool(result.success.all())  # (some do not succeed, so the line above checks something)


def test_l2_points_keep_norm_mu_inside_the_box():
    """box_fill (default): the l_2 point has norm mu even where many pixels sit at 0; the paper's
    point (box_fill=False) loses the clipped pixels' share."""
    x0 = torch.zeros(3, 1, 28, 28)
    x0[:, :, 7:21, 7:21] = 0.5  # a dark background around a grey patch
    signs = torch.where(torch.rand(3, 784, generator=torch.Generator().manual_seed(0)) > 0.5, 1.0, -1.0)
    filled, paper = SignHunter(eps=1.5, norm="l2"), SignHunter(eps=1.5, norm="l2", box_fill=False)
    for attack in (filled, paper):
        attack.cur_mu = attack.mu
    norm_filled = (filled._point(x0, signs) - x0).flatten(1).norm(dim=1)
    norm_paper = (paper._point(x0, signs) - x0).flatten(1).norm(dim=1)
    assert torch.allclose(norm_filled, torch.full((3,), 1.5), atol=1e-4)
    # the paper's point: x0 + (mu / sqrt d) s clipped to the box. The 196 grey pixels keep their step,
    # a background pixel (at 0) only where s = +1, so ||delta|| = (mu / sqrt d) sqrt(196 + B), B the
    # number of +1 signs on the background: about 1.19 (B ~ 294 of 588), always <= mu.
    background = (x0 == 0).flatten(1)
    b = ((signs > 0) & background).sum(1).double()
    assert torch.allclose(norm_paper.double(), 1.5 / 28 * (196 + b).sqrt(), atol=1e-5)
    # and it loses norm: < 1.4 needs B < 487, 16 sd above B's mean 294 (sd 12), so for any seed
    assert bool((norm_paper < 1.4).all())
    # same signs wherever the point moved
    moved = (filled._point(x0, signs) - x0).flatten(1)
    assert bool((moved * signs >= 0).all())
