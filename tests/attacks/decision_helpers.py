"""Checks every label-only attack must pass; each decision attack's test module calls them."""

from __future__ import annotations

import torch

from rnd import Oracle, RandomNoiseDefense
from rnd.attacks import decision
from rnd.attacks.decision import EPS_TOL, DecisionAttack
from tests.conftest import CountingModel


def run_decision(attack: DecisionAttack, model, x, y, budget: int, nu: float = 0.0, targets=None, **kw):
    """Run a label-only `attack` through a counting model and check the accounting invariants:
    queries reported == images forwarded, no image past the budget, x_adv in [0, 1], distances
    equal to ||x_adv - x||, successes within eps and observed adversarial by the clean model
    when there is no noise."""
    counted = CountingModel(model)
    target_model = RandomNoiseDefense(counted, nu=nu, seed=0) if nu else counted
    oracle = Oracle(target_model, output="labels", budget=budget)
    result = attack(oracle, x, y, targets, **kw)
    assert int(result.queries.sum()) == counted.images
    assert int(result.queries.max()) <= budget
    assert result.x_adv.shape == x.shape
    assert float(result.x_adv.min()) >= 0 and float(result.x_adv.max()) <= 1
    assert result.distance is not None and result.trace is not None
    d = (result.x_adv - x).flatten(1)
    d = d.abs().amax(1) if attack.norm == "linf" else d.norm(dim=1)
    found = result.distance.isfinite()
    torch.testing.assert_close(d[found], result.distance[found], rtol=1e-5, atol=1e-6)
    assert torch.equal(result.success, found & (result.distance <= attack.eps + EPS_TOL))
    # the trace never rises and ends at the final distance
    t = result.trace
    assert bool((t[:, 1:] <= t[:, :-1]).all())
    assert torch.equal(t[:, -1], result.distance)
    if not nu:
        with torch.no_grad():
            z = model(result.x_adv[found])
        pred = z.argmax(1)
        hit = pred == targets[found] if targets is not None else pred != y[found]
        # the search ends on the boundary: forwarded in another batch (another summation order),
        # a point there may tie the other way; a logit gap within float rounding counts as a hit
        want = targets[found] if targets is not None else y[found]
        other = z.scatter(1, want[:, None], float("-inf")).amax(1)
        gap = (z.gather(1, want[:, None])[:, 0] - other).abs()
        assert bool((hit | (gap < 1e-4)).all()), gap[~hit]
    return result


def check_batch_independent(factory, model, x, y, budget: int) -> None:
    """The same images attacked in one batch and one at a time give the same result: the same
    queries and successes, distances equal up to float rounding (a batched matmul sums in another
    order than a single one)."""
    whole = run_decision(factory(), model, x, y, budget)
    parts = [run_decision(factory(), model, x[i : i + 1], y[i : i + 1], budget) for i in range(len(y))]
    assert torch.equal(whole.queries, torch.cat([p.queries for p in parts]))
    assert torch.equal(whole.success, torch.cat([p.success for p in parts]))
    torch.testing.assert_close(whole.distance, torch.cat([p.distance for p in parts]), rtol=1e-4, atol=1e-6)


def check_probe_chunks(factory, method: str, model, x, y, budget: int, monkeypatch, limit: int = 100) -> None:
    """An attack that probes many points per image queries them `PROBE_CHUNK` images at a time
    (memory: a full-size audit draws thousands of probes per image). `method(state, rows, m, ...)`
    is its one-batch step, called once per chunk: with a small chunk the calls are more, none holds
    more than limit + one row's probes, the probes are the same in total, and on a deterministic
    model the result is the same as with every probe in one batch."""
    cls = type(factory())
    one_batch, sizes = getattr(cls, method), []

    def spy(self, state, rows, m, *args):
        sizes.append((int(m.sum()), int(m.max())))
        return one_batch(self, state, rows, m, *args)

    monkeypatch.setattr(cls, method, spy)

    def run():
        sizes.clear()
        return run_decision(factory(), model, x, y, budget), list(sizes)

    whole, batches = run()
    assert max(total for total, _ in batches) > limit  # else nothing would be cut
    monkeypatch.setattr(decision, "PROBE_CHUNK", limit)
    chunked, chunks = run()
    assert len(chunks) > len(batches) and all(total < limit + top for total, top in chunks)
    assert sum(t for t, _ in chunks) == sum(t for t, _ in batches)
    assert torch.equal(chunked.x_adv, whole.x_adv) and torch.equal(chunked.queries, whole.queries)
    assert torch.equal(chunked.distance, whole.distance)
