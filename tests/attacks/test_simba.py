import pytest
import torch

from rnd.attacks import SimBA, make_attack
from rnd.attacks.simba import _moved, dct_matrix, frequency_rings
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
    # a direction costs 1 or 2 queries, and a step is one try: no image overspends, and an image
    # that did not succeed spent its whole budget (which tries came when is checked against the
    # two-query reference in test_pipelined_steps_make_the_tries_of_alg1)
    assert bool((result.queries <= 40).all())
    assert bool((result.success | (result.queries == 40)).all())
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


class TwoQuerySimBA(SimBA):
    """Alg. 1 step by step, as rnd ran it before the pipelined loop: x - mu q, and x + mu q in the
    same step where the first try failed (the reference for the pipelined step)."""

    @property
    def step_cost(self) -> int:
        return 2 * self.eot

    def step(self, state, rows):
        total = state.order.shape[1]
        wrap = rows[state.pos[rows] >= total]
        if wrap.numel():
            state.order[wrap] = self._new_orders(wrap.numel())
            state.pos[wrap] = 0
        q = self.directions(state.order[rows, state.pos[rows]])
        state.pos[rows] += 1
        x, x0, mu, old = state.x[rows], state.x0[rows], self.cur_mu, state.loss[rows]
        x_minus = self.project(x - mu * q, x0)
        better = torch.zeros(rows.numel(), dtype=torch.bool)
        first = _moved(x_minus, x).nonzero().flatten()
        if first.numel():
            loss, adv = self.evaluate(state, x_minus[first], rows[first])
            better[first] = (loss < old[first]) | adv
            self.accept(state, rows[first], x_minus[first], loss, adv, better[first])
        x_plus = self.project(x + mu * q, x0)
        second = (~better & _moved(x_plus, x)).nonzero().flatten()
        if second.numel():
            loss, adv = self.evaluate(state, x_plus[second], rows[second])
            self.accept(state, rows[second], x_plus[second], loss, adv, (loss < old[second]) | adv)


@pytest.mark.parametrize("norm, eps", [("linf", 0.3), ("l2", 4.0)])
def test_pipelined_steps_make_the_tries_of_alg1(tiny_model, attack_batch, norm, eps):
    """One try per image per step (the batch stays full) makes each image's tries of Alg. 1 in the
    same order: on a deterministic model every image that ends before its budget (and before its
    first order of directions runs out) ends at the same point after the same number of queries."""
    x, y = attack_batch
    budget = 600  # under the 784 directions of one order: no image draws a second order
    new = run_checked(SimBA(eps=eps, norm=norm, seed=3), tiny_model, x, y, budget=budget)
    ref = run_checked(TwoQuerySimBA(eps=eps, norm=norm, seed=3), tiny_model, x, y, budget=budget)
    ended = ref.queries < budget - 1
    assert int(ended.sum()) >= 5
    assert torch.equal(new.queries[ended], ref.queries[ended])
    assert torch.equal(new.x_adv[ended], ref.x_adv[ended])
    assert torch.equal(new.success[ended], ref.success[ended])
