import itertools

import pytest
import torch

from rnd import Oracle
from rnd.attacks.geoda import GeoDA, default_sub_dim, probe_schedule, subspace_basis
from rnd.attacks.simba import dct_matrix
from rnd.errors import InputError
from tests.attacks.decision_helpers import check_batch_independent, check_probe_chunks, run_decision

pytestmark = pytest.mark.usefixtures("one_thread")


def test_probe_subspace_is_low_frequency():
    assert default_sub_dim(32) == 10 and default_sub_dim(28) == 20 and default_sub_dim(2) == 1
    dh, dw = subspace_basis(28, 28, 9, 9)
    torch.testing.assert_close(dh @ dh.T, torch.eye(9), atol=1e-5, rtol=0)
    z = torch.randn(50, 1, 9, 9)
    eta = dh.T @ z @ dw  # probes in pixel space
    # the full 2-D DCT of a probe: its energy sits in the 9 x 9 lowest frequencies, nowhere else
    d = dct_matrix(28)
    coef = d @ eta @ d.T
    torch.testing.assert_close(coef[..., :9, :9], z, atol=1e-4, rtol=0)
    assert float(coef[..., 9:, :].abs().max()) < 1e-4 and float(coef[..., :, 9:].abs().max()) < 1e-4
    # orthonormal: a probe's l_2 norm is its coefficients' norm; smooth: neighbours nearly equal
    torch.testing.assert_close(eta.flatten(1).norm(dim=1), z.flatten(1).norm(dim=1), rtol=1e-4, atol=0)
    step = (eta[..., 1:, :] - eta[..., :-1, :]).abs().mean() / eta.abs().mean()
    noise = torch.randn(50, 1, 28, 28)
    assert step < 0.5 * (noise[..., 1:, :] - noise[..., :-1, :]).abs().mean() / noise.abs().mean()


def test_probe_schedule_grows_within_budget():
    for budget in (30, 100, 200, 1000, 10000):
        s = probe_schedule(budget)
        assert len(s) >= 1 and sum(s) + 25 * len(s) <= budget + len(s)
        assert all(b > a for a, b in itertools.pairwise(s))
    s = probe_schedule(10000)
    assert 50 <= s[0] <= 80 and len(s) > 5
    assert s[1] / s[0] == pytest.approx(0.6 ** (-2 / 3), rel=0.05)


@pytest.mark.parametrize(("norm", "eps", "rate"), [("l2", 4.0, 0.65), ("linf", 0.3, 0.8)])
def test_shrinks_and_succeeds(tiny_model, attack_batch, norm, eps, rate):
    x, y = attack_batch
    # sub_dim 9: the small subspace converges fastest at a few hundred queries (the default, 20 at
    # 28 x 28, is the best at 10,000)
    res = run_decision(GeoDA(eps=eps, norm=norm, seed=0, sub_dim=9), tiny_model, x, y, 300)
    assert float(res.success.float().mean()) >= rate
    curve = res.distance_curve()
    assert curve[-1][0] == 300 and curve[-1][1] < 0.5 * curve[0][1]
    # the iterations after the start shrink the distance (not only the first binary search)
    long = run_decision(GeoDA(eps=eps, norm=norm, seed=0, stop_at_eps=False), tiny_model, x[:6], y[:6], 300)
    at = dict(long.distance_curve())
    assert at[300] < 0.7 * at[50]


def test_budget_never_exceeded(tiny_model, attack_batch):
    x, y = attack_batch
    for norm in ("l2", "linf"):
        for budget in (2, 3, 7, 13, 31, 77, 101):
            attack = GeoDA(eps=0.01, norm=norm, seed=budget, stop_at_eps=False)
            res = run_decision(attack, tiny_model, x[:5], y[:5], budget)
            assert int(res.queries.max()) <= budget


def test_batch_independent(tiny_model, attack_batch):
    x, y = attack_batch
    check_batch_independent(lambda: GeoDA(eps=0.5, seed=3), tiny_model, x[:6], y[:6], 150)


def test_repeat_and_vote_costs_m(tiny_model, attack_batch):
    x, y = attack_batch
    res = run_decision(GeoDA(eps=0.05, norm="linf", seed=4, eot=3), tiny_model, x[:6], y[:6], 200)
    assert bool((res.queries % 3 == 0).all())
    assert bool(res.distance.isfinite().any())


def test_under_noise_and_adaptive_mu(tiny_model, attack_batch):
    x, y = attack_batch
    attack = GeoDA(eps=0.3, norm="linf", seed=5, mu_nu_ratio=0.5, assume={"nu": 0.02})
    res = run_decision(attack, tiny_model, x[:6], y[:6], 120, nu=0.02)
    assert res.params["mu_used"] == pytest.approx(0.01)  # max(2e-4, 0.5 * nu)


def test_sub_dim_checked(tiny_model, attack_batch):
    x, y = attack_batch
    with pytest.raises(InputError, match="sub_dim"):
        GeoDA(eps=1.0, sub_dim=40)(Oracle(tiny_model, output="labels", budget=50), x[:2], y[:2])


def test_targeted_from_given_starts(tiny_model, attack_batch):
    x, y = attack_batch
    other = [int((y != y[i]).nonzero()[0]) for i in range(6)]  # an image of another class each
    starts, targets = x[other], y[other]
    attack = GeoDA(eps=2.0, seed=6, targeted=True, stop_at_eps=False)
    res = run_decision(attack, tiny_model, x[:6], y[:6], 150, targets=targets, starts=starts)
    start_dist = (starts - x[:6]).flatten(1).norm(dim=1)
    assert bool((res.distance <= start_dist + 1e-4).all())
    assert float(res.distance.median()) < 0.8 * float(start_dist.median())


def test_probes_in_chunks_change_nothing(tiny_model, attack_batch, monkeypatch):
    x, y = attack_batch
    factory = lambda: GeoDA(eps=0.5, seed=7, stop_at_eps=False)  # noqa: E731
    check_probe_chunks(factory, "_estimate", tiny_model, x[:6], y[:6], 600, monkeypatch)
