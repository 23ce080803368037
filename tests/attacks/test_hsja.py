import math

import pytest
import torch

from rnd.attacks.hsja import HopSkipJump, along, halvings
from tests.attacks.decision_helpers import check_batch_independent, check_probe_chunks, run_decision
from tests.attacks.test_decision import LineSearch

pytestmark = pytest.mark.usefixtures("one_thread")


EPS = {"l2": 4.5, "linf": 0.35}  # easy: most of the tiny model's images are within these in 1,000 queries


def test_along_and_halvings():
    x0, xs = torch.zeros(2, 1, 2, 2), torch.tensor([0.2, 0.8, 0.4, 1.0]).view(1, 1, 2, 2).repeat(2, 1, 1, 1)
    t = torch.tensor([0.5, 1.0])
    torch.testing.assert_close(along(x0, xs, t, "l2")[0], xs[0] / 2)
    assert torch.equal(along(x0, xs, t, "l2")[1], xs[1])
    assert float(along(x0, xs, t, "linf")[0].max()) == pytest.approx(0.5)  # radius t * ||xs - x0||_inf
    assert halvings(1.0, 0.25) == 2 and halvings(1.0, 0.2) == 3
    d = 784
    assert halvings(1.0, 1 / d**1.5) == math.ceil(math.log2(d**1.5))


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_shrinks_and_succeeds(tiny_model, attack_batch, norm):
    x, y = attack_batch
    res = run_decision(HopSkipJump(eps=EPS[norm], norm=norm, seed=0), tiny_model, x, y, 1000)
    assert float(res.success.float().mean()) >= 0.8
    long = run_decision(
        HopSkipJump(eps=EPS[norm], norm=norm, seed=0, stop_at_eps=False), tiny_model, x, y, 600
    )
    curve = dict(long.distance_curve())
    assert curve[600] < 0.6 * curve[50]  # the start (after its searches) shrinks by far


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_beats_a_line_search(tiny_model, attack_batch, norm):
    """Against a binary search along the ray to the random start (the base's test attack)."""
    x, y = attack_batch
    kw = {"eps": EPS[norm] / 10, "norm": norm, "seed": 1, "stop_at_eps": False}
    hsja = run_decision(HopSkipJump(**kw), tiny_model, x, y, 400)
    naive = run_decision(LineSearch(**kw), tiny_model, x, y, 400)
    assert hsja.median_distance < 0.7 * naive.median_distance


def test_budget_never_exceeded(tiny_model, attack_batch):
    x, y = attack_batch
    for budget, eot in (
        (2, 1),
        (3, 1),
        (7, 1),
        (13, 1),
        (29, 1),
        (57, 1),
        (131, 1),
        (8, 2),
        (45, 2),
        (133, 3),
    ):
        res = run_decision(
            HopSkipJump(eps=0.01, norm="l2", seed=2, eot=eot, stop_at_eps=False), tiny_model, x, y, budget
        )
        assert int(res.queries.max()) <= budget


def test_batch_independent(tiny_model, attack_batch):
    x, y = attack_batch
    check_batch_independent(lambda: HopSkipJump(eps=1.0, norm="l2", seed=3), tiny_model, x[:6], y[:6], 250)
    check_batch_independent(lambda: HopSkipJump(eps=0.1, norm="linf", seed=3), tiny_model, x[:6], y[:6], 250)


def test_repeat_and_vote_costs_m(tiny_model, attack_batch):
    x, y = attack_batch
    res = run_decision(HopSkipJump(eps=0.1, norm="linf", seed=4, eot=3), tiny_model, x, y, 400)
    assert bool((res.queries % 3 == 0).all()) and bool(res.distance.isfinite().any())


def test_clean_image_already_adversarial(tiny_model, attack_batch):
    """The 0/0 guard: an image whose clean prediction is already wrong has distance 0 and stops."""
    x, y = attack_batch
    wrong = (y + 1) % 10
    res = run_decision(HopSkipJump(eps=1.0, seed=5, stop_at_eps=False), tiny_model, x[:3], wrong[:3], 100)
    assert torch.equal(res.distance, torch.zeros(3)) and bool((res.queries == 1).all())


def test_targeted_with_starts(tiny_model, attack_batch):
    x, y = attack_batch
    starts = torch.roll(x, 1, 0)
    with torch.no_grad():
        targets = tiny_model(starts).argmax(1)
    keep = targets != y
    x, y, starts, targets = x[keep], y[keep], starts[keep], targets[keep]
    attack = HopSkipJump(eps=0.5, norm="l2", targeted=True, seed=6, stop_at_eps=False)
    res = run_decision(attack, tiny_model, x, y, 400, targets=targets, starts=starts)
    start_dist = (starts - x).flatten(1).norm(dim=1)
    assert bool(res.distance.isfinite().all()) and res.median_distance < 0.5 * float(start_dist.median())


def test_adaptive_probe_radius(tiny_model, attack_batch):
    """With mu_nu_ratio, every probe is at least ratio * nu (the noise does not shrink)."""
    x, y = attack_batch
    attack = HopSkipJump(eps=1.0, norm="l2", mu_nu_ratio=4.0, seed=7)
    attack.cur_mu = attack.effective_mu(0.05)
    state = attack.state_type(x[:2], y[:2], None, torch.arange(2))
    state.it, state.db = torch.tensor([1, 5]), torch.tensor([2.0, 2.0])
    assert torch.allclose(attack.probe_radius(state, torch.arange(2)), torch.tensor([0.2, 0.2]))
    plain = HopSkipJump(eps=1.0, norm="l2")
    plain.cur_mu = plain.mu
    r = plain.probe_radius(state, torch.arange(2))
    assert float(r[0]) == pytest.approx(0.1) and float(r[1]) == pytest.approx(2.0 / 784)
    with pytest.raises(Exception, match="norm"):
        HopSkipJump(eps=1.0, norm="l1")  # type: ignore[arg-type]


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_probes_in_chunks_change_nothing(tiny_model, attack_batch, monkeypatch, norm):
    x, y = attack_batch
    factory = lambda: HopSkipJump(eps=0.01, norm=norm, seed=8, stop_at_eps=False)  # noqa: E731
    check_probe_chunks(factory, "_estimate_gradient", tiny_model, x[:6], y[:6], 800, monkeypatch)


def test_probe_chunks_count_the_repeats_of_eot(tiny_model, attack_batch, monkeypatch):
    """With repeat-and-vote (M answers per probe) a chunk holds PROBE_CHUNK queried images, probes
    times M, not PROBE_CHUNK probes: M does not multiply the memory of a cell."""
    from rnd.attacks import decision

    x, y = attack_batch
    one_batch, sizes = HopSkipJump._estimate_gradient, []

    def spy(self, state, rows, m, *args):
        sizes.append((int(m.sum()), int(m.max())))
        return one_batch(self, state, rows, m, *args)

    monkeypatch.setattr(HopSkipJump, "_estimate_gradient", spy)
    monkeypatch.setattr(decision, "PROBE_CHUNK", 120)
    run_decision(HopSkipJump(eps=0.01, eot=3, seed=8, stop_at_eps=False), tiny_model, x[:6], y[:6], 2400)
    assert sizes
    assert all(total * 3 < 120 + top * 3 for total, top in sizes)


def test_probe_points_clip_to_the_box_and_return_the_direction_made():
    """probe_points: x_b + delta u clipped to [0, 1], and (probe - x_b) / delta, the direction the
    clipped probe actually took (HopSkipJump's estimate weighs that one)."""
    from types import SimpleNamespace

    xb = torch.tensor([[[[0.0, 0.5], [1.0, 0.95]]], [[[0.2, 0.2], [0.2, 0.2]]]])
    u = torch.tensor([[[[-1.0, 1.0], [1.0, 1.0]]], [[[1.0, -1.0], [0.5, 0.0]]], [[[0.0, 0.0], [-1.0, 1.0]]]])
    rows, seg, delta = torch.tensor([0, 1]), torch.tensor([0, 0, 1]), torch.tensor([0.1, 0.3])
    state = SimpleNamespace(xb=xb)
    probes, made = HopSkipJump(eps=0.1).probe_points(state, rows, seg, delta, u.clone())
    base = xb[seg]
    dl = delta[seg].view(-1, 1, 1, 1)
    expected = (base + dl * u).clamp(0.0, 1.0)
    assert torch.allclose(probes, expected)
    assert torch.allclose(made, ((expected - base) / dl).flatten(1))
    assert float(made[0, 0]) == 0.0 and float(made[0, 2]) == 0.0  # the clipped pixels moved nowhere
