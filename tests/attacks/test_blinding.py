import pytest
import torch

from rnd.attacks import make_attack
from rnd.attacks.blinding import Blinded, BlindingOracle
from rnd.defenses.stateful import Blacklight
from rnd.errors import InputError, UnknownNameError
from rnd.oracle import Oracle


class SpyOracle(Oracle):
    """An Oracle that keeps every query it is sent (what reached the model)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.sent: list[tuple[torch.Tensor, torch.Tensor]] = []

    def query(self, x, ids, eot=None):
        self.sent.append((x.clone(), ids.clone()))
        return super().query(x, ids, eot)


@pytest.mark.parametrize(("name", "norm", "eps"), [("square", "linf", 0.1), ("simba", "l2", 1.0)])
def test_blinded_queries_stay_in_the_box_and_the_ball(model, data, name, norm, eps, one_thread):
    x, y = data
    oracle = SpyOracle(model, budget=60)
    attack = Blinded(make_attack(name, eps=eps, norm=norm, seed=0), amplitude=0.03, seed=1)
    result = attack(oracle, x, y)
    assert result.attack == f"blinded-{name}" and result.params["blind_amplitude"] == 0.03
    moved = 0.0
    for q, ids in oracle.sent:
        assert q.min() >= 0 and q.max() <= 1
        d = (q - x[ids]).flatten(1)
        size = d.abs().amax(1) if norm == "linf" else d.norm(dim=1)
        assert (size <= eps + 1e-5).all()
        moved = max(moved, float(d.abs().amax()))
    assert moved > 0
    # the real oracle counted every row it was sent, and the result reports its counts
    sent_per_id = torch.bincount(torch.cat([ids for _, ids in oracle.sent]), minlength=8)
    assert torch.equal(result.queries, sent_per_id) and torch.equal(result.queries, oracle.counts)


def test_every_query_gets_a_fresh_blind(model, data):
    x, _ = data
    oracle = Oracle(model, budget=10)
    blinded = Blinded(make_attack("square", eps=0.1), amplitude=0.02, seed=0)
    wrapper = BlindingOracle(oracle, blinded)
    ids = oracle.new_ids(2)
    wrapper.origins(ids, x[:2])
    a, b = wrapper.blind(x[:2], ids), wrapper.blind(x[:2], ids)
    assert not torch.equal(a, b) and ((a - x[:2]).abs().amax() <= 0.02 + 1e-6)


def test_sign_blinds_flip_a_bin_with_probability_levels_times_a(model):
    det = Blacklight(model, seed=0)
    x = 0.2 + 0.6 * torch.rand(200, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    oracle = Oracle(model, budget=10)
    wrapper = BlindingOracle(oracle, Blinded(make_attack("square", eps=0.1), amplitude=0.02, seed=0))
    ids = oracle.new_ids(200)
    flips = (det.quantise(x) != det.quantise(wrapper.blind(x, ids))).mean()
    assert abs(flips - 6 * 0.02) < 0.01  # L a: 6 levels at step 50 (the docstring's derivation)


def test_blinding_evades_the_detector_end_to_end(model, data, one_thread):
    x, y = data
    refused = {}
    for blind in (False, True):
        oracle = Oracle(Blacklight(model, seed=0), budget=150)
        attack = make_attack("square", eps=0.1, seed=0)
        if blind:
            attack = Blinded(attack, amplitude=0.02, seed=0)
        attack(oracle, x, y)
        refused[blind] = float(oracle.refusals.sum()) / float(oracle.counts.sum())
    assert refused[False] > 0.9  # plain Square is refused from its third query on
    assert refused[True] < 0.1


def test_retries_requery_refused_rows_within_the_budget(model, data):
    x, _ = data
    det = Blacklight(model, seed=0)
    oracle = Oracle(det, budget=4)
    blinded = Blinded(make_attack("square", eps=0.1), amplitude=0.02, retries=2, seed=0)
    wrapper = BlindingOracle(oracle, blinded)
    ids = oracle.new_ids(1)
    det(x[:1])  # the clean image is stored: an exact replay of it would be refused
    blinded.amplitude = 1e-4  # too small to change any bin: every try is refused
    out = wrapper.query(x[:1].repeat(3, 1, 1, 1), ids.repeat(3))
    assert torch.isnan(out).all()
    assert oracle.counts_of(ids).tolist() == [4] and wrapper.retried == 1  # 3 + 1 retry = budget


def test_label_only_attacks_run_blinded(model, data, one_thread):
    x, y = data
    oracle = Oracle(model, output="labels", budget=80)
    result = Blinded(make_attack("hsja", eps=0.5, norm="l2", seed=0), seed=0)(oracle, x[:2], y[:2])
    assert (result.queries <= 80).all() and torch.equal(result.queries, oracle.counts)


def test_bad_arguments_are_refused():
    square = make_attack("square", eps=0.1)
    with pytest.raises(InputError, match="wraps an rnd attack"):
        Blinded(object())  # type: ignore[arg-type]
    with pytest.raises(InputError, match="amplitude"):
        Blinded(square, amplitude=0)
    with pytest.raises(InputError, match="too large"):
        Blinded(square, amplitude=2)
    with pytest.raises(UnknownNameError):
        Blinded(square, noise="gauss")  # type: ignore[arg-type]
    with pytest.raises(InputError, match="retries"):
        Blinded(square, retries=-1)


@pytest.mark.parametrize("output", ["probs", "labels"])
def test_eot_answers_are_blinded_one_by_one(model, data, output):
    x, _ = data
    det = Blacklight(model, seed=0)
    oracle = Oracle(det, output=output, budget=20, eot=4)
    wrapper = BlindingOracle(oracle, Blinded(make_attack("square", eps=0.1), amplitude=0.05, seed=0))
    ids = oracle.new_ids(2)
    out = wrapper.query(x[:2], ids)
    assert oracle.counts_of(ids).tolist() == [4, 4] and det.queries_seen == 8
    assert det.queries_flagged == 0  # four copies of one blinded point would refuse each other
    with torch.no_grad():
        clean = model(x[:2])
    if output == "labels":
        assert torch.equal(out, clean.argmax(1))
    else:
        assert out.shape == (2, 10) and torch.allclose(out.sum(1), torch.ones(2))
