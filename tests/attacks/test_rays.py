import pytest
import torch

from rnd import Oracle
from rnd.attacks.base import flip_block
from rnd.attacks.rays import RayS
from rnd.errors import InputError
from tests.attacks.decision_helpers import check_batch_independent, run_decision

pytestmark = pytest.mark.usefixtures("one_thread")


def test_shrinks_and_succeeds(tiny_model, attack_batch):
    x, y = attack_batch
    res = run_decision(RayS(eps=0.25, stop_at_eps=False), tiny_model, x, y, 400)
    assert bool(res.distance.isfinite().all())
    curve = res.distance_curve()
    assert curve[-1][1] < curve[0][1]
    assert float(res.success.float().mean()) >= 0.8


def test_stops_at_eps(tiny_model, attack_batch):
    x, y = attack_batch
    short = run_decision(RayS(eps=0.3), tiny_model, x, y, 300)
    long = run_decision(RayS(eps=0.3, stop_at_eps=False), tiny_model, x, y, 300)
    assert torch.equal(short.success, long.success)
    assert int(short.queries.sum()) < int(long.queries.sum())


def test_points_are_rays(tiny_model, attack_batch):
    """The final point is clip(x0 + r s) with s in {-1, +1}^d and r its distance."""
    x, y = attack_batch
    res = run_decision(RayS(eps=1e-3, stop_at_eps=False), tiny_model, x[:5], y[:5], 120)
    delta = res.x_adv - x[:5]
    r = res.distance.view(-1, 1, 1, 1)
    free = (x[:5] + r <= 1) & (x[:5] - r >= 0)  # pixels the box does not clip
    torch.testing.assert_close(delta.abs()[free], r.expand_as(delta)[free], rtol=0, atol=1e-6)


def test_budget_never_exceeded(tiny_model, attack_batch):
    x, y = attack_batch
    for budget in (2, 3, 5, 8, 13, 21, 37):
        res = run_decision(RayS(eps=0.01, stop_at_eps=False), tiny_model, x, y, budget)
        assert int(res.queries.max()) <= budget


def test_batch_independent(tiny_model, attack_batch):
    x, y = attack_batch
    check_batch_independent(lambda: RayS(eps=0.05), tiny_model, x[:6], y[:6], 80)


def test_repeat_and_vote_costs_multiples_of_m(tiny_model, attack_batch):
    x, y = attack_batch
    res = run_decision(RayS(eps=0.05, eot=3), tiny_model, x[:8], y[:8], 100, nu=0.02)
    assert bool((res.queries % 3 == 0).all())


def test_targeted_with_starts(tiny_model, attack_batch):
    """Given starts enter as the best radius; trials then go at that radius (RayS is an untargeted
    method in the paper: its rays rarely reach a given class, so only the accounting and the
    start are checked here)."""
    x, y = attack_batch
    starts = torch.roll(x, 1, 0)
    targets = torch.roll(y, 1)  # the starts' own labels: the model classifies them correctly
    keep = targets != y
    x, y, starts, targets = x[keep], y[keep], starts[keep], targets[keep]
    res = run_decision(RayS(eps=0.3, targeted=True), tiny_model, x, y, 100, targets=targets, starts=starts)
    assert bool(res.distance.isfinite().all())
    assert bool((res.distance <= (starts - x).flatten(1).abs().amax(1) + 1e-6).all())


def test_mu_is_the_search_tolerance(tiny_model, attack_batch):
    """The start's binary search on the all-ones ray stops once its bracket is mu wide: 5 halvings
    for mu = 0.05 (clean image + corner + 5 = 7 queries), 14 for mu = 1e-4, and the coarse radius
    lies within mu above the fine one."""
    x, y = attack_batch
    with torch.no_grad():
        corner = tiny_model(torch.ones_like(x)).argmax(1) != y  # the all-ones ray is adversarial
    assert bool(corner.any())
    x, y = x[corner], y[corner]
    coarse = run_decision(RayS(eps=1e-3, mu=0.05), tiny_model, x, y, 7)
    fine = run_decision(RayS(eps=1e-3), tiny_model, x, y, 16)
    assert RayS(eps=0.1).mu == 1e-4 and coarse.params["mu"] == 0.05
    assert bool((fine.distance <= coarse.distance).all())
    assert bool((coarse.distance <= fine.distance + 0.05 + 1e-4).all())
    with pytest.raises(InputError, match="mu"):
        RayS(eps=0.05, mu=0.0)
    with pytest.raises(InputError, match="norm 'l2'"):
        RayS(eps=1.0, norm="l2")


def test_refuses_score_oracle(tiny_model, attack_batch):
    x, y = attack_batch
    with pytest.raises(InputError, match="label-only"):
        RayS(eps=0.05)(Oracle(tiny_model, budget=30), x, y)


class SequentialRayS(RayS):
    """RayS as it ran before the pipelined step: every image's trial in one query, then the binary
    searches of the images whose trial hit, to the end, before any image's next trial."""

    def step(self, state, rows):
        stage, block = state.stage[rows], state.block[rows]
        cand, last, _ = flip_block(state.signs[rows], stage, block)
        self._try(state, rows, cand)
        finest = (state.signs.shape[1] - 1).bit_length()
        state.block[rows] = torch.where(last, torch.zeros_like(block), block + 1)
        state.stage[rows] = torch.where(last, torch.clamp(stage + 1, max=finest), stage)


@pytest.mark.parametrize("budget", [150, 400])
def test_pipelined_steps_make_the_sequential_decisions(tiny_model, attack_batch, budget):
    """One decision per image per step (trial or halving, side by side in one query) makes each
    image's decisions of the sequential algorithm: on a deterministic model the same points, the
    same distances and the same query counts, budget edge included."""
    x, y = attack_batch
    new = run_decision(RayS(eps=0.05, stop_at_eps=False), tiny_model, x, y, budget)
    ref = run_decision(SequentialRayS(eps=0.05, stop_at_eps=False), tiny_model, x, y, budget)
    assert torch.equal(new.queries, ref.queries)
    assert torch.equal(new.distance, ref.distance)
    assert torch.equal(new.x_adv, ref.x_adv)
