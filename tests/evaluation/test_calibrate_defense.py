"""calibrate_defense / measure_defense_drop / accuracy_vs_param: any defense with a strength parameter."""

import dataclasses

import pytest
import torch

from rnd.audit.calibration import (
    DEFAULT_GRIDS,
    calibrate_defense,
    calibrate_nu,
    measure_defense_drop,
    measure_drop,
)
from rnd.defenses import build_defense
from rnd.errors import InputError, UnknownNameError
from rnd.evaluation import accuracy
from rnd.evaluation.strength import accuracy_vs_nu, accuracy_vs_param

IDX = torch.arange(300)
SIGMAS = (0.05, 0.5, 5.0, 50.0)


def test_rnd_through_the_generic_path_gives_the_same_numbers(tiny_model, fmnist_test):
    grid = (0.05, 0.3, 0.6)
    old = calibrate_nu(tiny_model, fmnist_test, max_drop=3.0, grid=grid, draws=2, indices=IDX, refine=1)
    new = calibrate_defense(
        tiny_model, fmnist_test, "rnd", "nu", 3.0, grid=grid, draws=2, indices=IDX, refine=1
    )
    assert new.value == old.nu and new.spec == f"rnd:nu={old.nu!r}" and new.defense == "rnd"
    assert [dataclasses.astuple(m) for m in new.tried] == [dataclasses.astuple(m) for m in old.tried]
    assert old.next_over is old.tried[-1] and new.next_over is new.tried[-1]
    clean = old.clean_accuracy
    a = measure_drop(tiny_model, fmnist_test, 0.3, clean, draws=2, seed=5, indices=IDX)
    b = measure_defense_drop(tiny_model, fmnist_test, "rnd", "nu", 0.3, clean, draws=2, seed=5, indices=IDX)
    assert dataclasses.astuple(a) == dataclasses.astuple(b)
    rows = accuracy_vs_param(tiny_model, fmnist_test, "rnd", "nu", [0, 0.2], draws=2, seed=1, indices=IDX)
    assert [r.draws for r in rows] == [
        r.draws for r in accuracy_vs_nu(tiny_model, fmnist_test, [0, 0.2], draws=2, seed=1, indices=IDX)
    ]


def test_feature_noise_sigma_for_a_budget(tiny_model, fmnist_test):
    cal = calibrate_defense(
        tiny_model, fmnist_test, "feature-noise", "sigma", 3.0, grid=SIGMAS, draws=3, indices=IDX
    )
    assert cal.chosen is not None and cal.next_over is not None
    assert cal.chosen.upper <= 3.0 < cal.next_over.upper
    assert cal.next_over.value == SIGMAS[SIGMAS.index(cal.value) + 1]
    assert cal.spec == f"feature-noise:sigma={cal.value!r}" and cal.param == "sigma"
    assert cal.clean_accuracy == pytest.approx(100 * accuracy(tiny_model, fmnist_test, indices=IDX))
    # the chosen spec builds the defense that was measured (same seed -> same accuracy)
    i = [m.value for m in cal.tried].index(cal.value)
    defended = build_defense(cal.spec, tiny_model, seed=i)
    x, y = fmnist_test.get(IDX)
    with torch.no_grad():
        first = 100 * float((defended(x).argmax(1) == y).float().mean())
    again = measure_defense_drop(
        tiny_model,
        fmnist_test,
        "feature-noise",
        "sigma",
        cal.value,
        cal.clean_accuracy,
        draws=1,
        seed=i,
        indices=IDX,
    )
    assert again.accuracy == pytest.approx(first)
    refined = calibrate_defense(
        tiny_model, fmnist_test, "feature-noise", "sigma", 3.0, grid=SIGMAS, draws=3, indices=IDX, refine=2
    )
    assert cal.value <= refined.value < refined.next_over.value <= cal.next_over.value


def test_fixed_parameters_are_kept_and_drop_grows_with_sigma(tiny_model, fmnist_test):
    rows = accuracy_vs_param(
        tiny_model, fmnist_test, "feature-noise:layers=stages", "sigma", [0, 0.05, 50], draws=2, indices=IDX
    )
    assert rows[0].draws == [rows[0].mean] and rows[0].mean == pytest.approx(
        100 * accuracy(tiny_model, fmnist_test, indices=IDX)
    )
    assert rows[2].mean < rows[0].mean - 20 and len(rows[1].draws) == 2
    cal = calibrate_defense(
        tiny_model,
        fmnist_test,
        "feature-noise:layers=stages",
        "sigma",
        3.0,
        grid=(0.001, 50.0),
        draws=3,
        indices=IDX,
    )
    assert (
        cal.spec == "feature-noise:layers=stages,sigma=0.001" and cal.defense == "feature-noise:layers=stages"
    )


def test_low_confidence_tau_and_nothing_fits(tiny_model, fmnist_test):
    cal = calibrate_defense(
        tiny_model, fmnist_test, "low-confidence:nu=0.6", "tau", 0.5, grid=(1.0,), draws=2, indices=IDX[:200]
    )
    assert cal.chosen is None and cal.value == 0 and cal.spec is None and cal.next_over.value == 1.0
    assert ("low-confidence", "tau") in DEFAULT_GRIDS and ("feature-noise", "sigma") in DEFAULT_GRIDS


@pytest.mark.parametrize(
    ("defense", "param", "kwargs", "error", "words"),
    [
        (
            "feature-noise",
            "nu",
            {},
            InputError,
            "no public parameter 'nu' to calibrate; choose one of: sigma, layers",
        ),
        ("feature-noise:sigma=1", "sigma", {}, InputError, "fixes sigma"),
        ("featur-noise", "sigma", {}, UnknownNameError, "feature-noise"),
        ("feature-noise:layers=stage9", "sigma", {}, InputError, "no feature layer 'stage9'"),
        ("feature-noise", "sigma", {"grid": (0.0, 1.0)}, InputError, "grid values must be > 0"),
        ("feature-noise", "sigma", {"grid": ()}, InputError, "at least one sigma"),
        ("feature-noise", "sigma", {"draws": 1}, InputError, "draws must be >= 2"),
        ("low-confidence:nu=0.1", "temperature", {}, InputError, "no default grid"),
        ("low-confidence:nu=0.1", "tau", {"grid": (0.5, 2.0)}, InputError, r"tau must lie in \[0, 1\]"),
    ],
)
def test_bad_calibration_requests_fail_before_measuring(
    tiny_model, fmnist_test, monkeypatch, defense, param, kwargs, error, words
):
    def refuse(*_a, **_k):
        raise AssertionError("measured before the request was checked")

    monkeypatch.setattr("rnd.audit.calibration.measure_defense_drop", refuse)
    with pytest.raises(error, match=words):
        calibrate_defense(tiny_model, fmnist_test, defense, param, 1.0, indices=IDX, **kwargs)
