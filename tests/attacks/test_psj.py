import pytest
import torch

from rnd import RandomNoiseDefense
from rnd.attacks.hsja import HopSkipJump
from rnd.attacks.psj import PopSkipJump, contradicted, p_adv, quantile
from rnd.errors import InputError
from tests.attacks.decision_helpers import check_batch_independent, check_probe_chunks, run_decision

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = {"l2": 4.5, "linf": 0.35}  # easy for the tiny model (see test_hsja)


def truly_adversarial(model, res, x, y, eps: float, nu: float) -> tuple[float, float]:
    """Share of images whose x_adv is within eps and misclassified by the clean model, and by the
    majority of 21 fresh noisy answers."""
    within = res.distance <= eps + 1e-6
    noisy = RandomNoiseDefense(model, nu=nu, seed=123)
    with torch.no_grad():
        clean = model(res.x_adv).argmax(1) != y
        votes = sum((noisy(res.x_adv).argmax(1) != y).int() for _ in range(21))
    return float((clean & within).float().mean()), float(((votes > 10) & within).float().mean())


def test_line_search_model_helpers():
    t0 = torch.tensor([0.5])
    assert float(p_adv(torch.tensor([0.0]), t0, torch.tensor([1e-8]), 0.02)) == pytest.approx(0.02)
    assert float(p_adv(torch.tensor([1.0]), t0, torch.tensor([1e-8]), 0.02)) == pytest.approx(0.98)
    tg = torch.linspace(0, 1, 5).view(1, -1)
    assert float(quantile(tg, torch.tensor([[0.1, 0.1, 0.6, 0.1, 0.1]]), 0.5)) == 0.5
    ts = torch.tensor([[1.0, 0.0, 0.4, 0.6], [1.0, 0.0, 0.6, 0.4]])
    ys = torch.tensor([[1.0, 0.0, 1.0, 0.0], [1.0, 0.0, 1.0, 0.0]])
    assert contradicted(ts, ys, torch.ones_like(ts)).tolist() == [1.0, 0.0]
    with pytest.raises(InputError, match="odd"):
        PopSkipJump(eps=1.0, confirm=4)
    with pytest.raises(InputError, match="floor"):
        PopSkipJump(eps=1.0, floor=0.5)


def test_more_probes_and_wider_when_noisy():
    attack = PopSkipJump(eps=1.0, norm="l2")
    attack.cur_mu = attack.mu
    x0 = torch.zeros(2, 1, 28, 28)
    state = attack.state_type(x0, torch.zeros(2, dtype=torch.int64), None, torch.arange(2))
    state.it, state.db = torch.tensor([3, 3]), torch.tensor([2.0, 2.0])
    state.xb = x0 + 4.0 / 28  # l_2 distance 4: the radius cap (half of it) does not bind
    state.width = torch.tensor([0.0, 0.05])
    rows = torch.arange(2)
    k, r = attack.probe_count(state, rows), attack.probe_radius(state, rows)
    assert int(k[0]) == int(100 * 3**0.5) and int(k[1]) > 1.5 * int(k[0])
    assert float(r[0]) == pytest.approx(2.0 / 784) and float(r[1]) == pytest.approx(0.05 * 28)


@pytest.mark.parametrize("norm", ["l2", "linf"])
def test_beats_hsja_under_noise(tiny_model, attack_batch, norm):
    """Under RND nu = 0.05, HopSkipJump's binary search trusts noisy answers: its points are mostly
    not adversarial for the clean model; PopSkipJump's are, on most images."""
    x, y = attack_batch
    eps, nu, budget = EPS[norm], 0.05, 2000
    kw = {"eps": eps, "norm": norm, "seed": 0}  # measured: psj 0.65 / 0.7-0.75, hsja 0.0 / 0.0-0.05
    psj = run_decision(PopSkipJump(**kw), tiny_model, x, y, budget, nu=nu)
    hsja = run_decision(HopSkipJump(**kw), tiny_model, x, y, budget, nu=nu)
    psj_clean, psj_vote = truly_adversarial(tiny_model, psj, x, y, eps, nu)
    hsja_clean, hsja_vote = truly_adversarial(tiny_model, hsja, x, y, eps, nu)
    assert psj_clean >= 0.5 and psj_vote >= 0.5
    assert psj_clean >= hsja_clean + 0.3 and psj_vote >= hsja_vote + 0.3


def test_close_to_hsja_without_noise(tiny_model, attack_batch):
    x, y = attack_batch
    res = run_decision(PopSkipJump(eps=EPS["l2"], norm="l2", seed=0), tiny_model, x, y, 1000)
    assert float(res.success.float().mean()) >= 0.6
    long = run_decision(PopSkipJump(eps=1.0, norm="l2", seed=0, stop_at_eps=False), tiny_model, x, y, 500)
    curve = dict(long.distance_curve())
    assert curve[500] < 0.75 * curve[50]


@pytest.mark.parametrize("nu", [0.0, 0.05])
def test_budget_never_exceeded(tiny_model, attack_batch, nu):
    x, y = attack_batch
    for budget, eot in ((2, 1), (5, 1), (11, 1), (37, 1), (97, 1), (9, 3), (61, 3)):
        attack = PopSkipJump(eps=0.01, norm="linf", seed=2, eot=eot, stop_at_eps=False)
        res = run_decision(attack, tiny_model, x[:8], y[:8], budget, nu=nu)
        assert int(res.queries.max()) <= budget


def test_batch_independent(tiny_model, attack_batch):
    x, y = attack_batch
    check_batch_independent(lambda: PopSkipJump(eps=1.0, norm="l2", seed=3), tiny_model, x[:6], y[:6], 250)


def test_repeat_and_vote_costs_m(tiny_model, attack_batch):
    x, y = attack_batch
    res = run_decision(PopSkipJump(eps=1.0, norm="l2", seed=4, eot=3), tiny_model, x, y, 400, nu=0.05)
    assert bool((res.queries % 3 == 0).all()) and bool(res.distance.isfinite().any())


def test_probes_in_chunks_change_nothing(tiny_model, attack_batch, monkeypatch):
    x, y = attack_batch
    factory = lambda: PopSkipJump(eps=0.01, seed=9, stop_at_eps=False)  # noqa: E731
    check_probe_chunks(factory, "_estimate_gradient", tiny_model, x[:6], y[:6], 800, monkeypatch)
