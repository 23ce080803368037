"""The contract every registered defense keeps (DESIGN section 3), checked over the whole registry:
an nn.Module answering (N, classes) logits; built from its spec, and again from the spec it reports;
a random one draws only from its own generator (the global RNG is neither used nor able to change
its answers) and is reproducible when seeded; a deterministic one answers the same query the same
way twice (a stateful one: two fresh instances); bad parameters are refused with InputError."""

from __future__ import annotations

import pytest
import torch

from rnd.defenses import DEFENSES, build_defense
from rnd.errors import InputError
from rnd.models import build_model

#: A spec of each registered defense at a strength where it acts on a small model.
SPECS = {
    "none": "none",
    "rnd": "rnd:nu=0.05",
    "feature-noise": "feature-noise:sigma=0.5",
    "low-confidence": "low-confidence:nu=0.05,tau=1.0",
    "aaa": "aaa",
    "rls": "rls",
    "blacklight": "blacklight",
}
#: Defenses whose answers always keep the model's label.
KEEP_LABEL = {"none", "aaa", "rls"}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("small-cnn", width=4, hidden=16).eval()


@pytest.fixture(scope="module")
def x():
    return torch.rand(6, 1, 28, 28, generator=torch.Generator().manual_seed(1))


def test_every_registered_defense_has_a_spec_here():
    assert set(SPECS) == set(DEFENSES)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_contract(model, x, name):
    d = build_defense(SPECS[name], model, seed=3)
    assert isinstance(d, torch.nn.Module) and d.name == name
    with torch.inference_mode():
        out = d(x)
        assert out.shape == (6, 10) and bool(out.isfinite().all())
        again = build_defense(str(d.spec), model, seed=3)
        assert again.public_params() == d.public_params()
        if d.randomised:
            state = torch.get_rng_state()
            torch.manual_seed(123)
            a = build_defense(SPECS[name], model, seed=9)(x)
            torch.manual_seed(456)
            b = build_defense(SPECS[name], model, seed=9)(x)
            assert torch.equal(a, b)  # seeded: reproducible whatever the global RNG does
            torch.set_rng_state(state)
            before = torch.get_rng_state()
            d(x)
            assert torch.equal(before, torch.get_rng_state())  # the global RNG is not used
            assert not torch.equal(d(x), d(x))  # fresh draws on every query
        elif d.stateful:
            assert torch.equal(out, build_defense(SPECS[name], model, seed=3)(x))
        else:
            assert torch.equal(out, d(x))
        if name in KEEP_LABEL:
            assert torch.equal(out.argmax(1), model(x).argmax(1))


@pytest.mark.parametrize("name", sorted(set(SPECS) - {"none"}))
def test_unknown_parameter_is_refused(model, name):
    with pytest.raises(InputError, match=name):
        build_defense(f"{SPECS[name]}{',' if ':' in SPECS[name] else ':'}bogus=1", model)
