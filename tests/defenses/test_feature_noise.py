"""FeatureNoiseDefense: Gaussian noise on hidden features, from the defense's own generator."""

import copy
import gc
import threading

import pytest
import torch

from rnd._rng import generator_for
from rnd.defenses import DEFENSES, FeatureNoiseDefense, build_defense
from rnd.errors import InputError
from rnd.models import build_model


@pytest.fixture
def model():
    torch.manual_seed(0)  # only the untrained weights; the defenses never touch the global RNG
    return build_model("small-cnn", width=4, hidden=16).eval()


@pytest.fixture
def x():
    return torch.rand(8, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def test_registered_and_declared(model):
    assert DEFENSES["feature-noise"] is FeatureNoiseDefense
    d = build_defense("feature-noise:sigma=0.5", model, seed=1)
    assert d.randomised and not d.stateful
    assert d.public_params() == {"sigma": 0.5, "layers": "penultimate"}
    assert d.spec.name == "feature-noise" and d.spec.params["sigma"] == 0.5
    x = torch.rand(2, 1, 28, 28)
    rebuilt = build_defense(str(d.spec), model, seed=1)  # the spec round trip
    assert torch.equal(rebuilt(x), d(x)) and torch.equal(rebuilt(x), d(x))


@torch.no_grad()
def test_noise_is_sigma_times_a_normal_on_the_penultimate_features(model, x):
    d = FeatureNoiseDefense(model, sigma=0.7, seed=5)
    v = torch.randn(8, 16, generator=generator_for(torch.device("cpu"), 5))
    expected = model.head(model.embed(x) + 0.7 * v)  # unclipped, per image
    assert torch.allclose(d(x), expected, atol=1e-6)


@torch.no_grad()
def test_noise_scale_matches_sigma(model):
    sigma = 0.3
    d = FeatureNoiseDefense(model, sigma=sigma, seed=2)
    seen = []
    hook = model.body[8].register_forward_hook(lambda _m, _i, out: seen.append(out.clone()))  # after d's
    big = torch.rand(500, 1, 28, 28, generator=torch.Generator().manual_seed(3))
    d(big)
    hook.remove()
    diff = seen[0] - model.embed(big)
    assert abs(float(diff.std()) - sigma) < 0.02 and abs(float(diff.mean())) < 0.02


@torch.no_grad()
def test_sigma_zero_is_the_identity(model, x):
    assert torch.equal(FeatureNoiseDefense(model, sigma=0.0, seed=1)(x), model(x))
    assert torch.equal(build_defense("feature-noise:sigma=0,layers=stages", model)(x), model(x))


@torch.no_grad()
def test_fresh_per_query_seeded_and_independent_of_the_global_rng(model, x):
    torch.manual_seed(0)
    state = torch.get_rng_state()
    a = FeatureNoiseDefense(model, sigma=0.5, seed=7)
    first, second = a(x), a(x)
    assert not torch.equal(first, second)  # fresh noise on every query
    assert torch.equal(torch.get_rng_state(), state)  # the global RNG is never drawn from
    torch.manual_seed(12345)
    again = FeatureNoiseDefense(model, sigma=0.5, seed=7)
    assert torch.equal(again(x), first) and torch.equal(again(x), second)
    unseeded = [FeatureNoiseDefense(model, sigma=0.5)(x) for _ in range(2)]
    assert not torch.equal(unseeded[0], unseeded[1])  # OS entropy by default
    rows = FeatureNoiseDefense(model, sigma=0.5, seed=7)(x[:1].repeat(2, 1, 1, 1))
    assert not torch.equal(rows[0], rows[1])  # fresh per image


@torch.no_grad()
def test_the_bare_model_and_other_threads_stay_clean(model, x):
    clean = model(x)
    d = FeatureNoiseDefense(model, sigma=1.0, seed=1)
    assert torch.equal(model(x), clean)
    bad = []

    def bare():
        with torch.no_grad():
            for _ in range(30):
                if not torch.equal(model(x), clean):
                    bad.append(1)

    def defended():
        with torch.inference_mode():
            for _ in range(30):
                d(x)

    threads = [threading.Thread(target=bare), threading.Thread(target=defended)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not bad
    assert torch.equal(copy.deepcopy(model)(x), clean)  # a copy carries inert hooks
    assert not torch.equal(d(x), clean)


def test_hooks_go_with_the_defense(model):
    d = FeatureNoiseDefense(model, sigma=1.0, layers="stages", seed=1)
    assert len(model.body[2]._forward_hooks) == 1 and len(model.body[5]._forward_hooks) == 1
    del d
    gc.collect()
    assert not model.body[2]._forward_hooks and not model.body[5]._forward_hooks


@torch.no_grad()
@pytest.mark.parametrize(("arch", "shape"), [("resnet8", (3, 32, 32)), ("vgg-small", (3, 32, 32))])
def test_stages_on_other_architectures_and_spec_round_trip(arch, shape):
    net = build_model(arch, shape, 10, **({"width": 4} if arch == "resnet8" else {})).eval()
    x = torch.rand(4, *shape)
    d = build_defense("feature-noise:sigma=0.2,layers=stages", net, seed=3)
    assert set(d.paths) == {k for k in net.feature_layers() if k != "penultimate"}
    out = d(x)
    assert out.shape == (4, 10) and not torch.equal(out, net(x))
    rebuilt = build_defense(str(d.spec), net, seed=3)
    assert torch.equal(rebuilt(x), build_defense("feature-noise:sigma=0.2,layers=stages", net, seed=3)(x))


@torch.no_grad()
def test_named_layers_joined_and_submodule_paths(model, x):
    d = FeatureNoiseDefense(model, sigma=0.5, layers="stage1+penultimate", seed=1)
    assert d.paths == {"stage1": "body.2", "penultimate": "body.8"} and d.layers == "stage1+penultimate"
    by_path = FeatureNoiseDefense(model, sigma=0.5, layers="body.8", seed=4)
    by_name = FeatureNoiseDefense(model, sigma=0.5, seed=4)
    assert torch.equal(by_path(x), by_name(x))
    assert torch.equal(
        build_defense(str(d.spec), model, seed=1)(x), FeatureNoiseDefense(model, 0.5, d.layers, seed=1)(x)
    )


def test_unknown_layer_lists_the_valid_names(model):
    with pytest.raises(
        InputError, match=r"no feature layer 'stage9'; choose from: stage1, stage2, penultimate"
    ):
        build_defense("feature-noise:sigma=0.1,layers=stage9", model)
    with pytest.raises(InputError, match="layer names joined by"):
        FeatureNoiseDefense(model, sigma=0.1, layers="")
    with pytest.raises(InputError, match="names no stages"):
        FeatureNoiseDefense(torch.nn.Sequential(torch.nn.Linear(2, 2)), sigma=0.1, layers="stages")


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("feature-noise:sigma=-0.1", "sigma must be >= 0"),
        ("feature-noise:sigma=abc", "sigma must be a number"),
        ("feature-noise:sigma=true", "sigma must be a number"),
        ("feature-noise:sigma=0.1,nu=0.2", "its parameters are: sigma, layers"),
        ("feature-noise", "its parameters are: sigma, layers"),
    ],
)
def test_bad_parameters_are_one_line_input_errors(model, spec, words):
    with pytest.raises(InputError, match=words) as info:
        build_defense(spec, model)
    assert "\n" not in str(info.value)


@torch.no_grad()
def test_large_noise_costs_accuracy_small_noise_little(tiny_model, attack_batch):
    images, labels = attack_batch  # 20 images the tiny model classifies correctly
    small = FeatureNoiseDefense(tiny_model, sigma=0.01, seed=1)(images).argmax(1)
    large = FeatureNoiseDefense(tiny_model, sigma=50.0, seed=1)(images).argmax(1)
    assert (small == labels).float().mean() >= 0.95
    assert (large == labels).float().mean() <= 0.6
