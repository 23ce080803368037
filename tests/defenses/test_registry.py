import pytest
import torch

from rnd import RandomNoiseDefense
from rnd.defenses import DEFENSES, DefenseSpec, NoDefense, build_defense
from rnd.errors import InputError, UnknownNameError


def test_spec_text_round_trip():
    s = DefenseSpec.parse(" rnd : nu = 0.02 ")
    assert s == DefenseSpec("rnd", {"nu": 0.02}) and str(s) == "rnd:nu=0.02"
    assert DefenseSpec.parse(str(s)) == s
    assert str(DefenseSpec.parse("aaa:interval=6,kind=sine,calibrate=true")) == (
        "aaa:calibrate=true,interval=6,kind=sine"
    )
    assert str(DefenseSpec.parse("none")) == "none" and DefenseSpec.parse("none").params == {}


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", r"name\[:key=value"),
        (":nu=0.1", "no name"),
        ("rnd:nu", "not key=value"),
        ("rnd:nu=", "not key=value"),
        ("rnd:nu=0.1,nu=0.2", "twice"),
        ("rnd:nu=nan", "not finite"),
    ],
)
def test_bad_specs_are_refused(text, words):
    with pytest.raises(InputError, match=words):
        DefenseSpec.parse(text)


def test_build_defense_matches_the_classes(tiny_model, attack_batch):
    x, _ = attack_batch
    built = build_defense("rnd:nu=0.02", tiny_model, seed=3)
    direct = RandomNoiseDefense(tiny_model, nu=0.02, seed=3)
    assert isinstance(built, RandomNoiseDefense) and torch.equal(built(x), direct(x))
    assert built.randomised and not built.stateful
    assert built.public_params() == {"nu": 0.02, "clip": (0.0, 1.0)}
    assert str(built.spec) == "rnd:nu=0.02"  # parameters at their default are left out
    again = build_defense(str(built.spec), tiny_model, seed=3)  # the spec builds it again
    assert again.public_params() == built.public_params()
    assert torch.equal(again(x), RandomNoiseDefense(tiny_model, nu=0.02, seed=3)(x))
    none = build_defense("none", tiny_model)
    assert isinstance(none, NoDefense) and not none.randomised and torch.equal(none(x), tiny_model(x))
    assert {"none", "rnd", "feature-noise", "low-confidence"} <= set(DEFENSES)


def test_unknown_defense_or_parameter():
    model = torch.nn.Linear(2, 2)
    with pytest.raises(UnknownNameError, match="rnd"):
        build_defense("rdn:nu=0.1", model)
    with pytest.raises(InputError, match="its parameters are: nu, clip"):
        build_defense("rnd:sigma=0.1", model)
    with pytest.raises(InputError, match="nu"):
        build_defense("rnd:nu=-0.1", model)
