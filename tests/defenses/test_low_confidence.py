"""LowConfidenceNoise: RND only where the calibrated confidence is at most tau; fit_temperature."""

import math

import pytest
import torch
from torch import nn

from rnd.defenses import DEFENSES, LowConfidenceNoise, RandomNoiseDefense, build_defense
from rnd.defenses.low_confidence import DEFAULT_TAU, fit_temperature
from rnd.errors import InputError
from rnd.models import build_model


@pytest.fixture
def model():
    torch.manual_seed(0)  # only the untrained weights; the defense never touches the global RNG
    net = build_model("small-cnn", width=4, hidden=16).eval()
    with torch.no_grad():
        net.head.weight.mul_(40)  # spread the confidences of the untrained net over (0.1, 1)
    return net


@pytest.fixture
def x():
    return torch.rand(40, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def confidence(model, x, temperature=1.0):
    with torch.no_grad():
        return torch.softmax(model(x) / temperature, 1).amax(1)


def test_registered_declared_and_spec_round_trip(model, x):
    assert DEFENSES["low-confidence"] is LowConfidenceNoise
    d = build_defense("low-confidence:nu=0.05,tau=0.9,temperature=1.5", model, seed=4)
    assert d.randomised and not d.stateful
    assert d.public_params() == {"nu": 0.05, "tau": 0.9, "temperature": 1.5}
    rebuilt = build_defense(str(d.spec), model, seed=4)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), d(x))
    assert build_defense("low-confidence:nu=0.02", model).tau == DEFAULT_TAU == 0.97


@torch.no_grad()
def test_clean_answers_on_confident_inputs_rnd_on_the_others(model, x):
    conf = confidence(model, x, 2.0)
    tau = float(conf.median())
    low = conf <= tau
    assert 5 <= int(low.sum()) <= 35  # both kinds are present
    d = LowConfidenceNoise(model, nu=0.1, tau=tau, temperature=2.0, seed=9)
    clean, out = model(x), d(x)
    assert torch.equal(out[~low], clean[~low])  # exactly the clean answers
    assert bool((out[low] != clean[low]).any(1).all())  # every low-confidence answer changed
    rnd = RandomNoiseDefense(model, nu=0.1, seed=9)  # the same noise: clip(x + nu v) on those rows
    assert torch.allclose(out[low], model(rnd.perturb(x[low])), atol=1e-6)


@torch.no_grad()
def test_temperature_and_tau_set_which_queries_get_noise(model, x):
    clean = model(x)

    def noised(**kw):
        return int((LowConfidenceNoise(model, nu=0.1, seed=1, **kw)(x) != clean).any(1).sum())

    assert noised(tau=0.0) == 0 and noised(tau=1.0) == len(x)  # tau = 1 is plain RND
    counts = [noised(tau=0.8, temperature=t) for t in (0.5, 1.0, 2.0, 4.0)]
    assert counts == sorted(counts) and counts[0] < counts[-1]  # hotter -> less confident -> more noise
    assert int((confidence(model, x) <= 0.8).sum()) == counts[1]


@torch.no_grad()
def test_nu_zero_is_the_identity_and_the_global_rng_is_untouched(model, x):
    assert torch.equal(LowConfidenceNoise(model, nu=0.0, tau=1.0, seed=1)(x), model(x))
    torch.manual_seed(0)
    state = torch.get_rng_state()
    first = LowConfidenceNoise(model, nu=0.1, tau=1.0, seed=3)(x)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(999)
    d = LowConfidenceNoise(model, nu=0.1, tau=1.0, seed=3)
    assert torch.equal(d(x), first) and not torch.equal(d(x), first)  # reproducible, then fresh


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("low-confidence:nu=-0.1", "nu must be >= 0"),
        ("low-confidence:nu=0.1,tau=1.5", r"tau must lie in \[0, 1\]"),
        ("low-confidence:nu=0.1,tau=-0.1", r"tau must lie in \[0, 1\]"),
        ("low-confidence:nu=0.1,tau=high", "tau must be a number"),
        ("low-confidence:nu=0.1,temperature=0", "temperature must be > 0"),
        ("low-confidence:nu=0.1,temperature=true", "temperature must be a number"),
        ("low-confidence:nu=0.1,sigma=1", "its parameters are: nu, tau, temperature"),
        ("low-confidence:tau=0.9", "its parameters are: nu, tau, temperature"),
    ],
)
def test_bad_parameters_are_one_line_input_errors(model, spec, words):
    with pytest.raises(InputError, match=words) as info:
        build_defense(spec, model)
    assert "\n" not in str(info.value)


class Scaled(nn.Module):
    """Logits `k * (w . x)`: a model `k` times too confident for labels drawn from softmax(w . x)."""

    def __init__(self, w: torch.Tensor, k: float) -> None:
        super().__init__()
        self.w, self.k = w, k

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.k * (x.flatten(1) @ self.w)


def test_fit_temperature_recovers_the_overconfidence_and_minimises_nll():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(4000, 1, 4, 4, generator=g)
    w = 2.0 * torch.randn(16, 5, generator=g)
    y = torch.multinomial(torch.softmax(x.flatten(1) @ w, 1), 1, generator=g).squeeze(1)
    model = Scaled(w, 3.0)
    t = fit_temperature(model, x, y)
    assert t == pytest.approx(3.0, rel=0.1)

    def nll(temp):
        return float(nn.functional.cross_entropy(model(x) / temp, y))

    assert nll(t) <= min(nll(t * 1.02), nll(t / 1.02))
    assert fit_temperature(model, x, y) == t  # deterministic
    assert fit_temperature(Scaled(w, 1.0), x, y) == pytest.approx(1.0, rel=0.1)


def test_fit_temperature_checks_its_inputs():
    model = Scaled(torch.ones(16, 3), 1.0)
    x = torch.rand(10, 1, 4, 4)
    with pytest.raises(InputError, match="float32"):
        fit_temperature(model, x.double(), torch.zeros(10, dtype=torch.long))
    with pytest.raises(InputError, match="shape"):
        fit_temperature(model, x, torch.zeros(9, dtype=torch.long))
    with pytest.raises(InputError, match="classes"):
        fit_temperature(model, x, torch.full((10,), 5, dtype=torch.long))
    with pytest.raises(InputError, match="bounds"):
        fit_temperature(model, x, torch.zeros(10, dtype=torch.long), bounds=(2.0, 1.0))


@torch.no_grad()
def test_low_confidence_noise_keeps_clean_accuracy_better_than_rnd(tiny_model, fmnist_test):
    """On real data many clean images are confident: they keep their clean answer, so low-confidence
    noise costs less than RND. The gain is under a point for the tiny model at tau 0.9 (few of its
    answers are confident), so it is measured on 5,000 images and 3 noise draws: on 1,000 images
    and one draw the two are within noise of each other."""
    idx = torch.cat([torch.arange(1000), torch.arange(2000, 6000)])  # 1000-1999 fit the temperature
    images, labels = fmnist_test.get(idx)
    t = fit_temperature(tiny_model, *fmnist_test.get(torch.arange(1000, 2000)))
    assert math.isfinite(t) and 0.2 < t < 5
    clean_logits = tiny_model(images)
    clean = clean_logits.argmax(1)
    confident = (clean_logits / t).softmax(1).amax(1) > 0.9
    assert 0.05 < confident.float().mean() < 0.95
    lc_acc = rnd_acc = 0.0
    for seed in (1, 2, 3):
        lc = LowConfidenceNoise(tiny_model, nu=0.3, tau=0.9, temperature=t, seed=seed)(images).argmax(1)
        assert torch.equal(lc[confident], clean[confident])
        lc_acc += float((lc == labels).float().mean()) / 3
        rnd_acc += (
            float(
                (RandomNoiseDefense(tiny_model, nu=0.3, seed=seed)(images).argmax(1) == labels).float().mean()
            )
            / 3
        )
        assert (lc == clean).float().mean() > 0.8
    assert lc_acc > rnd_acc
