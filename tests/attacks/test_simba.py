import pytest
import torch

from rnd.attacks import SimBA, make_attack
from rnd.attacks.simba import dct_matrix, frequency_rings
from rnd.errors import InputError, UnknownNameError
from tests.attacks.helpers import check_early_stop, run_checked, true_margin


def test_dct_matrix_is_orthonormal():
    d = dct_matrix(28)
    assert torch.allclose(d @ d.T, torch.eye(28), atol=1e-5)
    assert torch.allclose(d[0], torch.full((28,), 28**-0.5))


def test_frequency_rings_put_low_frequencies_first():
    rings = frequency_rings(28, 28, 14, 7).view(28, 28)
    assert int(rings[:14, :14].max()) == 0
    assert int(rings[14:21, :21].min()) == 1 and int(rings[27, 27]) == 2


def test_dct_directions_are_unit_and_low_frequency_first(tiny_model, attack_batch):
    x, y = attack_batch
    attack = SimBA(eps=1.0, basis="dct", seed=0)
    run_checked(attack, tiny_model, x[:2], y[:2], budget=5)  # sets up the basis
    order = attack._new_orders(3)
    assert torch.equal(order.sort(1).values, torch.arange(784).expand(3, -1))
    first = order[:, :196] % 784
    assert bool(((first // 28 < 14) & (first % 28 < 14)).all())
    q = attack.directions(order[0, :50])
    assert torch.allclose(q.flatten(1).norm(dim=1), torch.ones(50), atol=1e-5)
    gram = q.flatten(1) @ q.flatten(1).T
    assert torch.allclose(gram, torch.eye(50), atol=1e-5)


@pytest.mark.parametrize(
    ("norm", "eps", "basis", "rate"),
    [("l2", 3.0, "dct", 0.4), ("linf", 0.2, "pixel", 0.6)],
)
def test_lowers_margin_and_succeeds(tiny_model, attack_batch, norm, eps, basis, rate):
    x, y = attack_batch[0][:10], attack_batch[1][:10]
    attack = SimBA(eps=eps, norm=norm, basis=basis, mu=0.2, seed=0)
    result = run_checked(attack, tiny_model, x, y, budget=800)
    assert float(result.success.float().mean()) >= rate
    assert bool((true_margin(tiny_model, result.x_adv, y) < true_margin(tiny_model, x, y)).all())
    assert torch.equal(result.success, true_margin(tiny_model, result.x_adv, y) < 0)


# slow: 2 x 20 images x 1,000 queries of one-pixel steps, the longest test of the default suite
@pytest.mark.slow
def test_rnd_raises_failure_rate(tiny_model, attack_batch):
    x, y = attack_batch
    # At eps 2 and 300 queries the undefended attack already fails on 85 %. At eps 3 / 1,000 queries:
    # 60 -> 99 % failure on average; over 20 attack and defense seeds x 2 tiny models the smallest
    # gain was 30 points: require 25 (one image of margin)
    plain = run_checked(SimBA(eps=3.0, seed=0), tiny_model, x, y, budget=1000)
    noisy = run_checked(SimBA(eps=3.0, seed=0), tiny_model, x, y, budget=1000, nu=0.05)
    assert noisy.failure_rate >= plain.failure_rate + 25


def test_second_query_only_when_first_fails(tiny_model, attack_batch):
    x, y = attack_batch
    result = run_checked(SimBA(eps=2.0, basis="dct", seed=0), tiny_model, x[:8], y[:8], budget=40)
    # steps cost 1 or 2 queries (1 + k steps, some with a second query): both parities occur (always
    # two queries: all odd; never a second: all even), no image overspends, and an image that did not
    # succeed stops only when less than one step (2 queries) is left
    assert bool((result.queries <= 40).all())
    assert set((result.queries % 2).tolist()) == {0, 1}
    assert bool((result.success | (result.queries >= 39)).all())
    eot = run_checked(SimBA(eps=2.0, eot=3, seed=0), tiny_model, x[:4], y[:4], 60, nu=0.02)
    assert bool((eot.queries % 3 == 0).all())


def test_early_stop(tiny_model, attack_batch):
    x, y = attack_batch
    check_early_stop(lambda: SimBA(eps=2.0, mu=0.2, seed=0), tiny_model, x, y, budget=150)


# slow: among the longest of the default suite (SimBA l_2 targeted runs its whole budget)
@pytest.mark.slow
def test_targeted(tiny_model, attack_batch):
    x, y = attack_batch
    # the runner-up class of the clean image: a target the tiny model can be pushed to
    targets = tiny_model(x[:6]).scatter(1, y[:6, None], -1e9).argmax(1)
    attack = SimBA(eps=4.0, targeted=True, seed=0)
    result = run_checked(attack, tiny_model, x[:6], y[:6], 1000, targets=targets)
    assert bool(result.success.any())
    assert torch.equal(result.success, tiny_model(result.x_adv).argmax(1) == targets)


def test_bad_hyper_parameters():
    with pytest.raises(UnknownNameError, match="basis"):
        SimBA(eps=1.0, basis="wavelet")
    with pytest.raises(InputError, match="freq"):
        SimBA(eps=1.0, freq=0)
    with pytest.raises(InputError, match="mu"):
        SimBA(eps=1.0, mu=0.0)
    assert isinstance(make_attack("simba", eps=1.0), SimBA)
