"""Transfer attacks: crafted on a surrogate with no query, one query (M with EOT) per submitted
candidate, never past the budget, the same result however the images are batched; an
independently trained surrogate transfers to the target (a random one does not), and RND's noise
barely changes it."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from rnd import Oracle, RandomNoiseDefense
from rnd.attacks import MIFGSM, TRANSFER_ATTACKS, TransferAttack
from rnd.data.base import ImageDataset
from rnd.errors import InputError
from rnd.training.standard import init_model
from tests.conftest import CountingModel


def run(attack: TransferAttack, model: nn.Module, x, y, budget: int = 10, **kw):
    oracle = Oracle(model, output=kw.pop("output", "labels"), budget=budget, **kw)
    return attack(oracle, x, y), oracle


@pytest.mark.parametrize("name", sorted(TRANSFER_ATTACKS))
def test_one_query_per_submitted_candidate(name, tiny_model, surrogate, attack_batch):
    x, y = attack_batch
    counting = CountingModel(tiny_model)
    attack = TRANSFER_ATTACKS[name](eps=0.1, surrogate=surrogate, candidates=3, iterations=4, seed=0)
    result, oracle = run(attack, counting, x, y)
    q = result.queries
    assert bool(((q >= 1) & (q <= 3)).all())
    assert bool((q[~result.success] == 3).all())  # a failed image submitted all its candidates
    assert counting.images == int(q.sum()) == int(oracle.counts.sum())  # crafting sent nothing
    # the kept candidate is the last one submitted: observed adversarial exactly where it succeeded
    fooled = tiny_model(result.x_adv).argmax(1) != y
    assert torch.equal(fooled, result.success)
    assert float((result.x_adv - x).abs().amax()) <= 0.1 + 1e-6


def test_eot_costs_m_per_candidate_and_the_budget_holds(tiny_model, surrogate, attack_batch):
    x, y = attack_batch
    attack = MIFGSM(eps=0.1, surrogate=surrogate, candidates=5, eot=3, seed=0)
    result, _ = run(attack, RandomNoiseDefense(tiny_model, nu=0.02), x, y, budget=7)
    assert bool((result.queries <= 7).all()) and set(result.queries.tolist()) <= {3, 6}
    assert bool((result.queries[~result.success] == 6).all())  # two candidates fit, a third does not
    with pytest.raises(InputError, match="budget"):
        run(MIFGSM(eps=0.1, surrogate=surrogate, eot=3), tiny_model, x, y, budget=2)


@pytest.mark.parametrize("name", sorted(TRANSFER_ATTACKS))
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_results_do_not_depend_on_batching(name, norm, tiny_model, surrogate, attack_batch):
    x, y = attack_batch[0][:6], attack_batch[1][:6]
    eps = 0.1 if norm == "linf" else 1.5
    make = lambda: TRANSFER_ATTACKS[name](eps, norm, surrogate=surrogate, candidates=2, iterations=3, seed=5)  # noqa: E731
    whole, _ = run(make(), tiny_model, x, y)
    for i in range(6):
        one, _ = run(make(), tiny_model, x[i : i + 1], y[i : i + 1])
        assert torch.allclose(one.x_adv[0], whole.x_adv[i], atol=1e-6), (name, i)
        assert bool(one.success[0] == whole.success[i]) and int(one.queries[0]) == int(whole.queries[i])


def test_an_independent_surrogate_transfers_and_a_random_one_does_not(tiny_model, surrogate, fmnist_test):
    from rnd.evaluation import correctly_classified

    idx = correctly_classified(tiny_model, fmnist_test, 100)
    x, y = fmnist_test.get(idx)
    untrained = init_model("small-cnn", fmnist_test, seed=7, width=12, hidden=48).eval()
    rates = {}
    for label, model in (("trained", surrogate), ("random", untrained)):
        rates[label] = float(
            run(MIFGSM(eps=0.1, surrogate=model, seed=0), tiny_model, x, y)[0].success.float().mean()
        )
    assert rates["trained"] >= 0.25 and rates["trained"] >= rates["random"] + 0.15, rates
    # RND perturbs queries, and a transfer example is sent once: the noise hardly changes it
    noisy = RandomNoiseDefense(tiny_model, nu=0.02, generator=torch.Generator().manual_seed(0))
    defended = float(run(MIFGSM(eps=0.1, surrogate=surrogate, seed=0), noisy, x, y)[0].success.float().mean())
    assert defended >= rates["trained"] - 0.1, (defended, rates)


def test_targeted_transfer_counts_only_the_target(tiny_model, surrogate, attack_batch):
    x, y = attack_batch
    targets = (y + 1) % 10
    attack = MIFGSM(eps=0.3, surrogate=surrogate, targeted=True, mu=0.03, iterations=20, candidates=3, seed=0)
    result = attack(Oracle(tiny_model, output="labels", budget=10), x, y, targets)
    pred = tiny_model(result.x_adv).argmax(1)
    assert torch.equal(result.success, pred == targets)  # another wrong class is no success
    assert bool(result.success.any()) and bool((~result.success & (pred != y)).any() | result.success.all())


def test_an_ensemble_averages_logits_and_a_mismatched_surrogate_is_refused(
    tiny_model, surrogate, attack_batch
):
    x, y = attack_batch
    both = MIFGSM(eps=0.1, surrogate=[surrogate, tiny_model], seed=0)
    result, _ = run(both, tiny_model, x, y)
    assert result.params["surrogates"] == 2
    rgb = torch.zeros(2, 3, 28, 28, dtype=torch.uint8)
    colour = ImageDataset("w", "test", rgb, torch.zeros(2, dtype=torch.int64), list("0123456789"))
    wide = init_model("small-cnn", colour, seed=0)
    with pytest.raises(InputError, match="shape"):
        run(MIFGSM(eps=0.1, surrogate=wide.eval()), tiny_model, x, y)
    with pytest.raises(InputError, match="surrogate"):
        MIFGSM(eps=0.1, surrogate=[])


def test_a_refused_submission_is_no_success(surrogate, attack_batch):
    """A detector's refusal (an all-NaN answer, REFUSED as a label) is no success, and it costs."""

    class Refuser(nn.Module):
        input_shape, num_classes = (1, 28, 28), 10

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.full((x.shape[0], 10), float("nan"))

    x, y = attack_batch
    for output in ("labels", "probs"):
        result, oracle = run(
            MIFGSM(eps=0.1, surrogate=surrogate, candidates=2), Refuser(), x, y, output=output
        )
        assert not bool(result.success.any()) and bool((result.queries == 2).all())
        assert int(oracle.refusals.sum()) == 2 * len(y)
