"""Hybrid attacks (a query search steered by the attacker's surrogate): queries counted exactly
and never past the budget, EOT at M queries a query, the same result however the images are
batched, and with a correlated surrogate fewer queries to success than the prior-free twin."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from rnd import Oracle, RandomNoiseDefense
from rnd.attacks import GFCS, HYBRID_ATTACKS, PRGF, SURROGATE_ATTACKS, make_attack, needs_surrogate
from rnd.attacks.base import unit
from rnd.attacks.prgf import optimal_lambda
from rnd.errors import InputError
from rnd.models.cnn import SmallCNN
from rnd.training.standard import init_model
from tests.conftest import CountingModel

LABEL_ONLY = {n for n, c in HYBRID_ATTACKS.items() if c.feedback == "labels"}
EPS = {"linf": 0.1, "l2": 1.5}


def output(name: str) -> str:
    return "labels" if name in LABEL_ONLY else "probs"


def small(name: str, norm: str, surrogate: nn.Module, **kw):
    """The hybrid with a short search (a few probes per estimate) for fast tests."""
    extra = {"q": 4, "norm_samples": 2} if name == "p-rgf" else {}
    return make_attack(name, eps=EPS[norm], norm=norm, surrogate=surrogate, seed=3, **extra, **kw)


def norms(name: str) -> list[str]:
    return list(HYBRID_ATTACKS[name].norms)


CASES = [(n, norm) for n in sorted(HYBRID_ATTACKS) for norm in norms(n)]


class RowWise(nn.Module):
    """A model forwarding one image at a time (numerics independent of the batch)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model, self.input_shape, self.num_classes = model, model.input_shape, model.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.model(x[i : i + 1]) for i in range(x.shape[0])])


def test_registered_as_surrogate_attacks():
    assert set(HYBRID_ATTACKS) == {"gfcs", "p-rgf", "square-ts", "signhunter-ts", "hsja-ts", "psj-ts"}
    assert all(needs_surrogate(n) for n in HYBRID_ATTACKS) and set(HYBRID_ATTACKS) <= set(SURROGATE_ATTACKS)
    with pytest.raises(InputError, match="surrogate"):
        GFCS(1.5, "l2")  # no surrogate


@pytest.mark.parametrize(("name", "norm"), CASES)
def test_queries_counted_exactly_and_the_budget_holds(
    name, norm, tiny_model, surrogate, attack_batch, one_thread
):
    x, y = attack_batch
    counting = CountingModel(tiny_model)
    oracle = Oracle(RandomNoiseDefense(counting, nu=0.02), output=output(name), budget=60)
    result = small(name, norm, surrogate)(oracle, x, y)
    assert bool((result.queries <= 60).all())
    assert counting.images == int(result.queries.sum()) == int(oracle.counts.sum())
    dist = (result.x_adv - x).flatten(1)
    size = dist.abs().amax(1) if norm == "linf" else dist.norm(dim=1)
    if name in LABEL_ONLY:  # label-only: success is distance <= eps, x_adv may be further
        assert bool((size[result.success] <= EPS[norm] + 1e-4).all())
    else:
        assert bool((size <= EPS[norm] + 1e-4).all())
        assert float(result.x_adv.min()) >= 0 and float(result.x_adv.max()) <= 1


@pytest.mark.parametrize("name", ["gfcs", "p-rgf", "square-ts", "hsja-ts"])
def test_eot_costs_m_queries_a_query(name, tiny_model, surrogate, attack_batch, one_thread):
    x, y = attack_batch[0][:6], attack_batch[1][:6]
    norm = norms(name)[0]
    oracle = Oracle(RandomNoiseDefense(tiny_model, nu=0.02), output=output(name), budget=90)
    result = small(name, norm, surrogate, eot=3)(oracle, x, y)
    assert bool((result.queries % 3 == 0).all()) and bool((result.queries <= 90).all())


@pytest.mark.parametrize(
    ("name", "norm"), [c for c in CASES if not c[0].startswith(("square", "signhunter"))]
)
def test_results_do_not_depend_on_batching(name, norm, tiny_model, surrogate, attack_batch, one_thread):
    """Per-image generators (Square and SignHunter draw from one attack generator, as their parents
    do, so only the others are batch-independent)."""
    x, y = attack_batch[0][:5], attack_batch[1][:5]
    # float32's batch-size rounding (a few 1e-6 in the logits, and which kernels run it differs
    # between CPUs: AVX2 against AVX-512) is amplified by P-RGF's finite differences (mu = 0.001)
    # and flips decisions of the boundary searches of hsja-ts and psj-ts: the target and the
    # surrogate forward one image at a time in both runs, so only the attack's own batching differs
    target, sur = RowWise(tiny_model), RowWise(surrogate)

    def run(xs, ys):
        return small(name, norm, sur)(Oracle(target, output=output(name), budget=40), xs, ys)

    whole = run(x, y)
    for i in range(5):
        one = run(x[i : i + 1], y[i : i + 1])
        assert torch.allclose(one.x_adv[0], whole.x_adv[i], atol=1e-5), (name, i)
        assert bool(one.success[0] == whole.success[i]) and int(one.queries[0]) == int(whole.queries[i])


@pytest.fixture(scope="module")
def correlated(tiny_model: nn.Module) -> nn.Module:
    """A surrogate correlated with the target by construction: its weights, each scaled by
    1 + 0.3 N(0, 1) (seeded)."""
    model = copy.deepcopy(tiny_model)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1 + 0.3 * torch.randn(p.shape, generator=gen))
    return model.eval()


@pytest.mark.parametrize(
    ("hybrid", "twin", "norm", "kw"),
    [
        ("gfcs", "simba", "l2", {}),
        ("p-rgf", "p-rgf", "linf", {"prior": False}),
        ("square-ts", "square", "linf", {}),
        ("signhunter-ts", "signhunter", "linf", {}),
        ("hsja-ts", "hsja", "l2", {}),
    ],
)
def test_a_correlated_surrogate_saves_queries(
    hybrid, twin, norm, kw, tiny_model, correlated, fmnist_test, one_thread
):
    """Undefended target: the hybrid needs fewer queries to fool an image (failures count at the
    budget) than its prior-free twin, and fails no more often."""
    surrogate = correlated
    from rnd.evaluation import correctly_classified

    idx = correctly_classified(tiny_model, fmnist_test, 40, start=100)
    x, y = fmnist_test.get(idx)
    out = output(hybrid)
    budget = 400
    costs = {}
    for label, name, extra in (("hybrid", hybrid, {}), ("twin", twin, kw)):
        if name == "p-rgf":
            extra = {**extra, "surrogate": surrogate, "q": 10, "norm_samples": 4}
        elif name == hybrid:
            extra = {**extra, "surrogate": surrogate}
        attack = make_attack(name, eps=EPS[norm], norm=norm, seed=1, **extra)
        r = attack(Oracle(tiny_model, output=out, budget=budget), x, y)
        costs[label] = (
            float(torch.where(r.success, r.queries, budget).double().mean()),
            int(r.success.sum()),
        )
    assert costs["hybrid"][0] < costs["twin"][0], costs
    assert costs["hybrid"][1] >= costs["twin"][1] - 1, costs


def test_an_untrained_surrogate_steers_no_better(tiny_model, surrogate, fmnist_test, one_thread):
    """The saving comes from the surrogate's knowledge: GFCS on an untrained surrogate spends more."""
    from rnd.evaluation import correctly_classified

    idx = correctly_classified(tiny_model, fmnist_test, 30, start=100)
    x, y = fmnist_test.get(idx)
    untrained = init_model("small-cnn", fmnist_test, seed=7, width=12, hidden=48).eval()
    spent = {}
    for label, model in (("trained", surrogate), ("untrained", untrained)):
        r = GFCS(1.5, "l2", surrogate=model, seed=0)(Oracle(tiny_model, output="probs", budget=300), x, y)
        spent[label] = float(torch.where(r.success, r.queries, 300).double().mean())
    assert spent["trained"] < spent["untrained"], spent


def test_prgf_lambda_follows_theorem_1():
    d, q = 784, 50
    lo, hi = 1 / (d + 2 * q - 2), (2 * q - 1) / (d + 2 * q - 2)
    lam = optimal_lambda(torch.tensor([0.0, lo * 0.99, 0.05, 0.1, hi * 1.001, 1.0]), d, q)
    assert lam[0] == 0 and lam[1] == 0 and lam[4] == 1 and lam[5] == 1
    assert 0 < float(lam[2]) < float(lam[3]) < 1  # a better prior gets more weight
    a = 0.05
    expect = (1 - a) * (a * (d + 2 * q - 2) - 1) / (2 * a * d * q - a * a * d * (d + 2 * q - 2) - 1)
    assert abs(float(lam[2]) - expect) < 1e-6


def test_prgf_takes_the_prior_when_it_is_the_gradient(tiny_model, attack_batch, one_thread):
    """The target as its own surrogate: the prior is the true gradient, alpha near 1, lambda 1, and a
    step costs only the alpha probes and the new point."""
    x, y = attack_batch[0][:4], attack_batch[1][:4]
    attack = PRGF(0.1, surrogate=tiny_model, q=8, norm_samples=4, seed=0, loss="ce")
    oracle = Oracle(tiny_model, output="logits", budget=1 + 2 * 14)  # a step costs 14 at most
    result = attack(oracle, x, y)
    per_step = 4 + 2  # 1 + S alpha probes, the new point; no estimate probes when lambda = 1
    assert bool(((result.queries - 1) % per_step == 0).all()), result.queries
    assert bool((attack_lambdas(attack, oracle, x, y) == 1).all())


def test_prgf_gives_an_uninformed_prior_little_weight(tiny_model, attack_batch, fmnist_test, one_thread):
    """An untrained surrogate's gradient is nearly orthogonal to the target's (alpha^2 about 1/D):
    its measured cosine gives it lambda near 0, where the target's own gradient gets lambda 1."""
    x, y = attack_batch[0][:8], attack_batch[1][:8]
    untrained = init_model("small-cnn", fmnist_test, seed=7, width=12, hidden=48).eval()
    for model, low, high in ((untrained, 0.0, 0.2), (tiny_model, 1.0, 1.0)):
        attack = PRGF(0.1, surrogate=model, q=8, norm_samples=4, seed=0, loss="ce")
        lam = attack_lambdas(attack, Oracle(tiny_model, output="logits"), x, y)
        assert low <= float(lam.mean()) <= high, (lam, low, high)


def test_surrogate_of_another_shape_or_class_count_is_refused(tiny_model, attack_batch, fmnist_test):
    x, y = attack_batch
    other = SmallCNN(num_classes=5, width=4, hidden=8).eval()
    for name in sorted(HYBRID_ATTACKS):
        with pytest.raises(InputError, match="surrogate 0 predicts 5 classes"):
            small(name, norms(name)[0], other)(Oracle(tiny_model, output=output(name), budget=20), x, y)


def attack_lambdas(attack: PRGF, oracle: Oracle, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The lambda of each image's last step (one more short run, on a fresh oracle)."""
    seen: list[torch.Tensor] = []
    original = attack.step

    def step(state, rows):
        original(state, rows)
        seen.append(state.lam.clone())

    attack.step = step  # type: ignore[method-assign]
    attack(Oracle(oracle.model, output="logits", budget=15), x, y)
    return seen[-1]


class SpyGFCS(GFCS):
    """GFCS recording, per step of a one-image call, whether it took an ODS direction and moved."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.ods: list[bool] = []
        self.moved: list[bool] = []

    def directions(self, state, rows):
        self.ods.append(bool(state.tried[rows].all()))
        q = super().directions(state, rows)
        if len(self.ods) == 1:  # the first step of the call: the point and its direction
            self.first = (state.x[rows].clone(), q.clone())
        return q

    def step(self, state, rows):
        before = state.x[rows].clone()
        super().step(state, rows)
        self.moved.append(not torch.equal(before, state.x[rows]))


def test_gfcs_takes_gradients_first_and_the_coimage_only_after_every_gradient_failed(
    tiny_model, surrogate, attack_batch, one_thread
):
    """Two surrogates: ODS is taken exactly when both gradients failed at the current point, and a
    move makes both gradients new again (Alg. 1's reset)."""
    x, y = attack_batch
    spy = SpyGFCS(1.5, "l2", surrogate=[surrogate, tiny_model], seed=0)
    seen_ods = False
    for i in range(6):
        spy.ods, spy.moved = [], []
        spy(Oracle(tiny_model, output="probs", budget=120), x[i : i + 1], y[i : i + 1])
        failed_in_a_row = 0
        for ods, moved in zip(spy.ods, spy.moved, strict=True):
            assert ods == (failed_in_a_row >= 2), (i, spy.ods, spy.moved)
            seen_ods |= ods
            failed_in_a_row = 0 if moved else failed_in_a_row + (not ods)
        # the first direction is one surrogate's unit margin gradient (raising the margin loss)
        point, q = spy.first
        grads = [unit(spy.surrogates.loss_gradient(point, y[i : i + 1], loss="margin", models=[m]))
                 for m in (surrogate, tiny_model)]  # fmt: skip
        assert any(torch.allclose(q, g, atol=1e-5) for g in grads), i
    assert seen_ods  # the fallback was exercised


def test_a_label_only_transfer_start_climbs_the_ladder_for_the_images_left(
    tiny_model, attack_batch, one_thread
):
    """HSJA-TS at a small eps: the images the eps-ball example does not fool get examples crafted on
    balls of 2, 4 and 8 eps, each radius for fewer images, and those found there start the walk."""
    from rnd.attacks import HopSkipJumpTS

    class Spy(HopSkipJumpTS):
        calls: list[tuple[float, int]] = []

        def transfer_examples(self, x0, y, target, radius=1.0):
            self.calls.append((radius, x0.shape[0]))
            return super().transfer_examples(x0, y, target, radius)

    x, y = attack_batch
    spy = Spy(0.3, "l2", surrogate=tiny_model, seed=0)
    spy(Oracle(tiny_model, output="labels", budget=60), x, y)
    radii = [r for r, _ in spy.calls]
    assert radii == [1.0, 2.0, 4.0, 8.0][: len(radii)] and len(radii) >= 2, spy.calls
    sizes = [n for _, n in spy.calls]
    assert sizes == sorted(sizes, reverse=True) and sizes[-1] < sizes[0]
