import pytest
import torch

from rnd.attacks.base import unit
from rnd.attacks.sign_opt import SignOPT
from rnd.errors import InputError
from tests.attacks.decision_helpers import check_batch_independent, run_decision

pytestmark = pytest.mark.usefixtures("one_thread")

# small probe counts keep the file fast on 2 cores; the defaults are checked in test_defaults
FAST = {"k": 20, "n_init": 10}


def test_defaults():
    a = SignOPT(eps=1.0, norm="l2")
    assert (a.k, a.alpha, a.mu, a.n_init, a.tol) == (200, 0.2, 0.001, 100, 1e-3)
    assert SignOPT(eps=0.1, norm="linf").mu == 0.001
    assert SignOPT.name == "sign-opt" and set(SignOPT.norms) == {"l2", "linf"}
    with pytest.raises(InputError, match="k"):
        SignOPT(eps=1.0, norm="l2", k=0)


def test_unit():
    v = torch.tensor([[3.0, -4.0], [0.5, 0.25]])
    torch.testing.assert_close(unit(v, "l2").norm(dim=1), torch.ones(2))
    torch.testing.assert_close(unit(v, "linf").abs().amax(1), torch.ones(2))


@pytest.mark.parametrize("norm,eps", [("l2", 6.0), ("linf", 0.9)])
def test_shrinks_and_succeeds(tiny_model, attack_batch, norm, eps):
    x, y = attack_batch
    x, y = x[:10], y[:10]
    res = run_decision(SignOPT(eps=eps, norm=norm, seed=0, stop_at_eps=False, **FAST), tiny_model, x, y, 600)
    curve = res.distance_curve()
    start = next(d for _, d in curve if d < float("inf"))
    assert curve[-1][1] < 0.75 * start  # the descent shrinks the median distance after the start
    found = res.distance.isfinite()  # a random start exists (noise is never some images' class)
    assert int(found.sum()) >= 6
    # Sign-OPT from random Gaussian starts is slow in queries: at this small budget (k = 20) the
    # easy images succeed, those with far starts do not yet
    assert float(res.success[found].float().mean()) >= 0.5


def test_budget_never_exceeded(tiny_model, attack_batch):
    x, y = attack_batch
    for norm in ("l2", "linf"):
        for budget in (2, 3, 5, 8, 13, 31, 57):
            attack = SignOPT(eps=0.01, norm=norm, seed=budget, stop_at_eps=False, k=7, n_init=5)
            res = run_decision(attack, tiny_model, x[:8], y[:8], budget)
            assert int(res.queries.max()) <= budget


def test_batch_independent(tiny_model, attack_batch):
    x, y = attack_batch
    for norm in ("l2", "linf"):
        check_batch_independent(
            lambda norm=norm: SignOPT(eps=0.01, norm=norm, seed=3, stop_at_eps=False, k=10, n_init=6),
            tiny_model,
            x[:4],
            y[:4],
            100,
        )


def test_eot_costs_multiples(tiny_model, attack_batch):
    x, y = attack_batch
    res = run_decision(
        SignOPT(eps=0.01, norm="l2", seed=4, eot=3, k=5, n_init=4), tiny_model, x[:8], y[:8], 100
    )
    assert bool((res.queries % 3 == 0).all()) and int(res.queries.max()) <= 100


def test_given_starts_and_clean_adversarial(tiny_model, attack_batch):
    x, y = attack_batch
    starts = torch.roll(x, 1, 0)
    res = run_decision(SignOPT(eps=0.01, norm="l2", seed=5, **FAST), tiny_model, x, y, 120, starts=starts)
    assert bool(res.distance.isfinite().all())
    # an image the model already gets wrong: distance 0 after the clean query, nothing more spent
    wrong = (tiny_model(x).argmax(1) + 1) % 10
    res = run_decision(
        SignOPT(eps=0.01, norm="l2", seed=5, stop_at_eps=False, **FAST), tiny_model, x[:2], wrong[:2], 50
    )
    assert bool((res.distance == 0).all()) and bool((res.queries == 1).all())


class Spy(SignOPT):
    """Keeps the final state (direction theta and its g) for inspection."""

    def result(self, state):
        self.state = state
        return super().result(state)


def test_linf_searches_in_linf(tiny_model, attack_batch):
    """The l_inf variant is its own search, not an l_2 search with an l_inf check: g(theta) is the
    l_inf distance to the boundary along a direction of unit l_inf norm (the l_2 variant's g is the
    l_2 distance along a unit l_2 direction)."""
    x, y = attack_batch
    x, y = x[:10], y[:10]
    spies = {n: Spy(eps=0.01, norm=n, seed=6, stop_at_eps=False, **FAST) for n in ("l2", "linf")}
    res = {n: run_decision(a, tiny_model, x, y, 500) for n, a in spies.items()}
    st = spies["linf"].state
    f = st.g.isfinite()
    assert int(f.sum()) >= 8
    g, theta = st.g[f].float().view(-1, 1, 1, 1), st.theta[f]
    torch.testing.assert_close(theta.flatten(1).abs().amax(1), torch.ones(int(f.sum())))
    on, inside = (x[f] + g * theta).clamp(0, 1), (x[f] + 0.95 * g * theta).clamp(0, 1)
    with torch.no_grad():
        assert bool((tiny_model(on).argmax(1) != y[f]).all())  # on the boundary, adversarial side
        assert float((tiny_model(inside).argmax(1) == y[f]).float().mean()) >= 0.7  # just inside: not
    assert bool((res["linf"].distance[f] <= st.g[f].float() + 1e-5).all())  # distance: l_inf, at most g
    # g is the l_inf distance of the boundary point (clipping can only shorten it)
    reach = (on - x[f]).flatten(1).abs().amax(1) / st.g[f].float()
    assert bool((reach <= 1 + 1e-5).all()) and float(reach.median()) > 0.9
    # the l_2 variant's g is an l_2 length (at most the l_2 reach), far above its l_inf reach
    st2 = spies["l2"].state
    f2 = st2.g.isfinite()
    d2 = ((x[f2] + st2.g[f2].float().view(-1, 1, 1, 1) * st2.theta[f2]).clamp(0, 1) - x[f2]).flatten(1)
    assert bool((d2.norm(dim=1) <= st2.g[f2].float() + 1e-5).all())
    assert float((d2.abs().amax(1) / st2.g[f2].float()).median()) < 0.5
