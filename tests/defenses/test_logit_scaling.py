import pytest
import torch

from rnd import Oracle
from rnd.defenses import RandomLogitScaling, build_defense
from rnd.errors import InputError
from rnd.models import build_model


@pytest.fixture(scope="module")
def untrained():
    torch.manual_seed(0)
    return build_model("small-cnn", width=4, hidden=16).eval()


@pytest.fixture(scope="module")
def images():
    return torch.rand(16, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def test_logits_are_scaled_per_image_per_query(untrained, images):
    d = RandomLogitScaling(untrained, seed=0)
    assert d.randomised and not d.stateful
    with torch.no_grad():
        clean = untrained(images)
        a, b = d(images), d(images)
    ratio = a / clean
    m = ratio[:, 0]
    assert torch.allclose(ratio, m[:, None].expand_as(ratio), rtol=1e-5)  # one scale per image
    assert bool((m >= 0.5).all()) and bool((m <= 10.0).all())
    assert m.unique().numel() == m.numel()  # each image draws its own
    assert not torch.allclose(a, b)  # fresh scales on every query
    assert torch.equal(a.argmax(1), clean.argmax(1)) and torch.equal(b.argmax(1), clean.argmax(1))


def test_own_generator_never_the_global_rng(untrained, images):
    before = torch.get_rng_state()
    with torch.no_grad():
        torch.manual_seed(0)
        a = RandomLogitScaling(untrained, seed=7)(images)
        torch.manual_seed(12345)
        b = RandomLogitScaling(untrained, seed=7)(images)
        c = RandomLogitScaling(untrained, seed=8)(images)
    assert torch.equal(a, b)  # the global seed changes nothing; the defense's seed does
    assert not torch.equal(a, c)
    torch.manual_seed(12345)
    state = torch.get_rng_state()
    with torch.no_grad():
        RandomLogitScaling(untrained)(images)  # OS-entropy seed
    assert torch.equal(state, torch.get_rng_state())  # the global RNG was not touched
    torch.set_rng_state(before)
    with torch.no_grad():
        u1, u2 = RandomLogitScaling(untrained)(images), RandomLogitScaling(untrained)(images)
    assert not torch.equal(u1, u2)  # unseeded defenses differ


def test_build_defense_passes_the_seed_and_spec_round_trips(untrained, images):
    d = build_defense("rls", untrained, seed=5)
    assert isinstance(d, RandomLogitScaling) and str(d.spec) == "rls"
    with torch.no_grad():
        assert torch.equal(d(images), RandomLogitScaling(untrained, seed=5)(images))
    spec = build_defense("rls:low=1,high=5", untrained).spec
    assert str(spec) == "rls:high=5.0,low=1.0"
    assert build_defense(str(spec), untrained, seed=5).public_params() == {"low": 1.0, "high": 5.0}


def test_through_the_oracle_on_real_images(tiny_model, attack_batch):
    x, y = attack_batch
    d = RandomLogitScaling(tiny_model, seed=0)
    for output in ("probs", "logits"):
        oracle = Oracle(d, output=output)
        ids = oracle.new_ids(x.shape[0])
        first, second = oracle.query(x, ids), oracle.query(x, ids)
        assert torch.equal(first.argmax(1), y) and torch.equal(second.argmax(1), y)
        assert not torch.allclose(first, second)
    labels = Oracle(d, output="labels")
    assert torch.equal(labels.query(x, labels.new_ids(x.shape[0])), y)


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("rls:low=0", "low"),
        ("rls:low=-1", "low"),
        ("rls:low=5,high=2", "low <= high"),
        ("rls:high=big", "high"),
        ("rls:scale=2", "its parameters are"),
    ],
)
def test_bad_parameters_are_refused(untrained, spec, words):
    with pytest.raises(InputError, match=words):
        build_defense(spec, untrained)


def test_seed_and_generator_conflict(untrained):
    with pytest.raises(InputError, match="either generator or seed"):
        RandomLogitScaling(untrained, generator=torch.Generator(), seed=1)
    with pytest.raises(InputError, match="seed"):
        RandomLogitScaling(untrained, seed="1")  # type: ignore[arg-type]
