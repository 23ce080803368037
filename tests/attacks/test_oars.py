"""OARS (Feng et al., CCS 2023) against Blacklight: Square and HopSkipJump that tune their steps on
the detector's refusals and redraw refused proposals (`rnd.attacks.square_oars`, `hsja_oars`)."""

from __future__ import annotations

import pytest
import torch

from rnd.attacks import HopSkipJumpOARS, SquareOARS, make_attack
from rnd.attacks.oars import Search, binary_search
from rnd.defenses.stateful import Blacklight
from rnd.errors import InputError
from rnd.oracle import Oracle
from tests.conftest import CountingModel

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = {
    ("square-oars", "linf"): 0.1,
    ("square-oars", "l2"): 1.0,
    ("hsja-oars", "l2"): 1.5,
    ("hsja-oars", "linf"): 0.1,
}


def blacklight(model):
    return Blacklight(model, seed=0)


def output_of(name: str) -> str:
    return "labels" if name.startswith("hsja") else "probs"


def run(name, norm, model, x, y, budget, detector=None, **kwargs):
    """Attack `model` (behind `detector(model)` if given), counting the images it forwards;
    returns (result, oracle, counter)."""
    counted = CountingModel(model)
    target = counted if detector is None else detector(counted)
    oracle = Oracle(target, output=output_of(name), budget=budget)
    eps = EPS[name.removesuffix("-oars") + "-oars", norm]
    result = make_attack(name, eps=eps, norm=norm, seed=0, **kwargs)(oracle, x, y)
    return result, oracle, counted


@pytest.mark.parametrize(("name", "norm"), list(EPS))
def test_never_refused_oars_is_the_plain_attack_bit_for_bit(model, data, name, norm):
    x, y = data
    oars, _, _ = run(name, norm, model, x, y, 300)
    plain, _, _ = run(name.removesuffix("-oars"), norm, model, x, y, 300)
    assert torch.equal(oars.x_adv, plain.x_adv) and torch.equal(oars.queries, plain.queries)
    assert torch.equal(oars.success, plain.success)


@pytest.mark.parametrize(("name", "norm"), list(EPS))
@pytest.mark.parametrize("budget", [7, 60, pytest.param(400, marks=pytest.mark.slow)])
def test_against_blacklight_queries_are_counted_exactly_within_the_budget(model, data, name, norm, budget):
    x, y = data
    x, y = x[:4], y[:4]
    result, oracle, counted = run(name, norm, model, x, y, budget, blacklight)
    assert int(result.queries.sum()) == counted.images  # every sample and redraw counted
    assert int(result.queries.max()) <= budget and torch.equal(result.queries, oracle.counts)
    assert bool(result.x_adv.isfinite().all())
    assert float(result.x_adv.min()) >= 0 and float(result.x_adv.max()) <= 1
    if name == "square-oars":  # score attacks stay in the ball (label-only ones judge distance)
        d = (result.x_adv - x).flatten(1)
        size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        assert float(size.max()) <= EPS[name, norm] + 1e-5


@pytest.mark.parametrize(("name", "norm"), [("square-oars", "linf"), ("hsja-oars", "l2")])
def test_oars_is_refused_less_and_succeeds_more_than_the_plain_attack(model, data, name, norm):
    x, y = data
    refused, success = {}, {}
    for attack in (name, name.removesuffix("-oars")):
        result, oracle, _ = run(attack, norm, model, x, y, 1000, blacklight)
        refused[attack] = float(oracle.refusals.sum()) / float(oracle.counts.sum())
        success[attack] = int(result.success.sum())
        # an observed success is a real one: the clean model misclassifies the point
        with torch.no_grad():
            pred = model(result.x_adv[result.success]).argmax(1)
        assert bool((pred != y[result.success]).all())
    plain = name.removesuffix("-oars")
    assert refused[name] < refused[plain] - 0.3, refused
    assert success[name] >= success[plain] + 3, success


class DistanceDetector(torch.nn.Module):
    """Refuses (all-NaN logits) a query within l_2 distance `radius` of any earlier query: images
    far apart never refuse each other's queries, so each image's refusals depend on its own."""

    def __init__(self, model: torch.nn.Module, radius: float) -> None:
        super().__init__()
        self.model, self.radius = model, radius
        self.input_shape, self.num_classes = (1, 28, 28), 10
        self.history = torch.zeros(0, 784)
        self.refused = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x).clone()
        for i, row in enumerate(x.flatten(1)):
            if self.history.shape[0] and float((self.history - row).norm(dim=1).min()) < self.radius:
                out[i] = float("nan")
                self.refused += 1
            self.history = torch.cat([self.history, row[None]])
        return out


def test_hsja_oars_is_batch_independent_with_refusals(model, data):
    """The same images in one batch and one at a time, behind a detector whose refusals of an
    image's queries depend on that image's queries only: the same queries, refusals, distances."""
    x, y = data

    def attack(xs, ys):
        detector = DistanceDetector(model, radius=0.3)
        oracle = Oracle(detector, output="labels", budget=500)
        return HopSkipJumpOARS(eps=2.5, seed=7)(oracle, xs, ys), detector.refused

    whole, refused = attack(x, y)
    parts = [attack(x[i : i + 1], y[i : i + 1]) for i in range(len(y))]
    assert refused > 0 and refused == sum(n for _, n in parts)  # the tuning was exercised
    assert torch.equal(whole.queries, torch.cat([p.queries for p, _ in parts]))
    assert torch.equal(whole.success, torch.cat([p.success for p, _ in parts]))
    torch.testing.assert_close(
        whole.distance, torch.cat([p.distance for p, _ in parts]), rtol=1e-4, atol=1e-6
    )


def test_a_refused_query_never_counts_as_success(model, data):
    """A detector that refuses everything after the clean query: nothing succeeds, nothing is NaN."""

    class RefuseAll(torch.nn.Module):
        input_shape, num_classes = (1, 28, 28), 10

        def __init__(self) -> None:
            super().__init__()
            self.seen = 0

        def forward(self, xb: torch.Tensor) -> torch.Tensor:
            out = model(xb).clone()
            out[max(0, 3 - self.seen) :] = float("nan")  # the 3 clean queries are answered
            self.seen += len(xb)
            return out

    x, y = data[0][:3], data[1][:3]
    for name, norm in (("square-oars", "linf"), ("hsja-oars", "l2")):
        oracle = Oracle(RefuseAll(), output=output_of(name), budget=200)
        result = make_attack(name, eps=EPS[name, norm], norm=norm, seed=0)(oracle, x, y)
        assert not bool(result.success.any()) and bool(result.x_adv.isfinite().all())
        assert int(oracle.refusals.sum()) == int(oracle.counts.sum()) - 3


def test_the_search_keeps_the_smallest_passing_value():
    """Refused share 1 below 37, 0 from 37 up: the search closes in on 37 from above."""
    search = Search(10, 100, 10, 5, 0.0)
    rows = torch.arange(3)
    tried = []

    def share(idx, mid):
        tried.append(mid.clone())
        return (mid < 37).double()

    value = binary_search(search, rows, share, lambda idx: torch.ones(idx.numel(), dtype=torch.bool))
    assert len(tried) == 10 and bool(((value >= 37) & (value < 37.2)).all())
    never = binary_search(search, rows, lambda idx, mid: torch.ones(idx.numel()), lambda idx: idx >= 0)
    assert bool((never == 100).all())  # no middle passed: the upper end


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (SquareOARS, {"squares_min": 50, "squares_max": 20}, "squares_min"),
        (SquareOARS, {"squares_min": 0}, "squares_min"),
        (SquareOARS, {"side_rate": 1.5}, "side_rate"),
        (SquareOARS, {"squares_samples": 0}, "squares_samples"),
        (SquareOARS, {"max_attempts": 0}, "max_attempts"),
        (SquareOARS, {"search_steps": -1}, "search_steps"),
        (HopSkipJumpOARS, {"radius_min": 0.0}, "radius_min"),
        (HopSkipJumpOARS, {"radius_min": 3.0}, "radius_min"),
        (HopSkipJumpOARS, {"max_refusal_rate": -0.1}, "rate"),
        (HopSkipJumpOARS, {"probe_rounds": 0}, "probe_rounds"),
        (HopSkipJumpOARS, {"step_attempts": 0}, "step_attempts"),
    ],
)
def test_bad_arguments_give_input_errors(cls, kwargs, match):
    with pytest.raises(InputError, match=match):
        cls(eps=0.5, **kwargs)
