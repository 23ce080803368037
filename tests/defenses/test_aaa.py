import math

import pytest
import torch

from rnd import Oracle
from rnd.attacks import Square
from rnd.defenses import AAA, build_defense
from rnd.defenses.aaa import attractor, quantise_8bit, target_margin
from rnd.errors import InputError
from rnd.models import build_model


@pytest.fixture(scope="module")
def untrained():
    torch.manual_seed(0)
    return build_model("small-cnn", width=4, hidden=16).eval()


def top_margin(z: torch.Tensor) -> torch.Tensor:
    v = z.topk(2, dim=1).values
    return v[:, 0] - v[:, 1]


def test_attractors_and_targets_follow_the_authors_formulas():
    m = torch.tensor([0.5, 2.0, 3.0, 4.5, 8.0, 10.0])
    # attractors at the odd multiples of I / 2 = 3
    assert torch.equal(attractor(m, 6.0), torch.tensor([3.0, 3.0, 3.0, 3.0, 9.0, 9.0]))
    # linear: mirror around the attractor (r = 1)
    assert torch.allclose(target_margin(m, 6.0, "linear"), 2 * attractor(m, 6.0) - m)
    # sine: m - 0.7 I sin((1 - 2 (m - a) / I) pi); fixed at the attractor, pushed back around it
    a = attractor(m, 6.0)
    expected = m - 0.7 * 6.0 * torch.sin((1 - 2 * (m - a) / 6.0) * math.pi)
    assert torch.allclose(target_margin(m, 6.0, "sine"), expected)
    assert float(target_margin(torch.tensor([3.0]), 6.0, "sine")) == pytest.approx(3.0, abs=1e-5)
    # small positive margins are answered with larger ones (the answer stays on the right side)
    small = torch.linspace(0.01, 2.9, 20)
    for variant in ("linear", "sine"):
        assert bool((target_margin(small, 6.0, variant) > 0).all())


def test_the_answered_margin_runs_backwards_inside_a_period():
    """Two queries whose true margin rises (3.5 -> 4.5, one period) are answered with falling ones."""
    z = torch.tensor([[3.5, 0.0, -1.0, -2.0], [4.5, 0.0, -1.0, -2.0]])
    for variant in ("linear", "sine"):
        out = AAA(torch.nn.Identity(), variant=variant).reshape(z)
        got = top_margin(out)
        assert float(got[1]) < float(got[0]), variant
        assert torch.equal(out.argmax(1), z.argmax(1))
    lin = top_margin(AAA(torch.nn.Identity()).reshape(z))
    assert torch.allclose(lin, torch.tensor([2.5, 1.5]), atol=0.05)  # the mirror, fitted


def test_deterministic_argmax_kept_random_inputs(untrained):
    g = torch.Generator().manual_seed(1)
    x = torch.rand(32, 1, 28, 28, generator=g)
    for variant in ("linear", "sine"):
        d = AAA(untrained, variant=variant)
        assert not d.randomised and not d.stateful
        a, b = d(x), d(x)
        assert torch.equal(a, b)
        with torch.no_grad():
            clean = untrained(quantise_8bit(x))
        assert torch.equal(a.argmax(1), clean.argmax(1))
        assert not torch.allclose(a, clean)  # it did reshape the logits


def test_images_of_a_batch_are_optimised_independently():
    g = torch.Generator().manual_seed(2)
    z = 4 * torch.randn(16, 10, generator=g)
    d = AAA(torch.nn.Identity(), variant="sine")
    assert torch.equal(d.reshape(z)[:5], d.reshape(z[:5]))


def test_quantisation_keeps_8bit_pixels():
    levels = torch.arange(256, dtype=torch.float32) / 255
    assert torch.equal(quantise_8bit(levels), levels)
    x = torch.tensor([0.5 / 255, 1.7 / 255, 1.0])
    assert torch.allclose(quantise_8bit(x), torch.tensor([0.0, 1 / 255, 1.0]))


def test_through_the_oracle_on_real_images(tiny_model, attack_batch):
    """The oracle forwards under inference mode; AAA still optimises, and keeps every label."""
    x, y = attack_batch
    with torch.no_grad():
        clean = tiny_model(x)
    for variant in ("linear", "sine"):
        d = build_defense(f"aaa:variant={variant}", tiny_model)
        oracle = Oracle(d, output="probs")
        ids = oracle.new_ids(x.shape[0])
        p = oracle.query(x, ids)
        assert torch.equal(p.argmax(1), clean.argmax(1))
        assert torch.equal(p, oracle.query(x, ids))  # deterministic
        answered = top_margin(p.log())
        fitted = (answered - target_margin(top_margin(clean), 6.0, variant)).abs()
        assert float(fitted.median()) < 0.2  # the margins follow the target
        labels = Oracle(d, output="labels")
        assert torch.equal(labels.query(x, labels.new_ids(x.shape[0])), y)


def test_spec_round_trip(untrained):
    d = build_defense("aaa:variant=sine,interval=4", untrained)
    assert isinstance(d, AAA) and d.variant == "sine" and d.interval == 4.0
    again = build_defense(str(d.spec), untrained)
    assert again.public_params() == d.public_params() and str(again.spec) == str(d.spec)
    assert str(d.spec) == "aaa:interval=4.0,variant=sine"  # defaults left out
    assert str(build_defense("aaa", untrained).spec) == "aaa"
    x = torch.rand(4, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    assert torch.equal(d(x), again(x))


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("aaa:variant=cosine", "variant"),
        ("aaa:variant=3", "variant"),
        ("aaa:interval=0", "interval"),
        ("aaa:interval=-6", "interval"),
        ("aaa:iterations=2.5", "iterations"),
        ("aaa:iterations=-1", "iterations"),
        ("aaa:lr=fast", "lr"),
        ("aaa:calibration_weight=-5", "calibration_weight"),
        ("aaa:temperature=0", "temperature"),
        ("aaa:attractor=6", "its parameters are"),
    ],
)
def test_bad_parameters_are_refused(untrained, spec, words):
    with pytest.raises(InputError, match=words):
        build_defense(spec, untrained)


# each variant takes about 6 s (with its undefended run): the default suite keeps the linear one (the
# sine period's arithmetic is pinned by the formula tests above)
@pytest.mark.parametrize("variant", ["linear", pytest.param("sine", marks=pytest.mark.slow)])
def test_aaa_raises_the_failure_rate_of_square(tiny_model, attack_batch, variant):
    """Square's greedy rule walks the wrong way under AAA (the adaptive rules are measured in
    the report, not pinned here: on this tiny model they do not beat plain Square)."""
    x, y = attack_batch

    def run(model: torch.nn.Module) -> float:
        result = Square(eps=0.2, seed=0)(Oracle(model, budget=100), x, y)
        return float(result.success.float().mean())

    assert run(AAA(tiny_model, variant=variant)) <= run(tiny_model) - 0.2  # measured: 0.75 -> 0.35
