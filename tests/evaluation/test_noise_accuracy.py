import math

import pytest
import torch
from PIL import Image

from rnd.audit.calibration import calibrate_nu, measure_drop
from rnd.errors import InputError
from rnd.evaluation import accuracy
from rnd.evaluation.strength import accuracy_vs_nu, compare_models
from rnd.report.plots import plot_accuracy_vs_nu
from rnd.stats import t_quantile

IDX = torch.arange(500)


def test_accuracy_vs_nu_mean_spread_and_seed(tiny_model, fmnist_test):
    rows = accuracy_vs_nu(tiny_model, fmnist_test, [0, 0.1, 0.6], draws=3, seed=2, indices=IDX)
    assert [r.nu for r in rows] == [0, 0.1, 0.6]
    assert rows[0].draws == [rows[0].mean] and rows[0].std == 0  # nu = 0 is deterministic: one draw
    assert rows[0].mean == pytest.approx(100 * accuracy(tiny_model, fmnist_test, indices=IDX))
    assert len(rows[1].draws) == 3 and rows[1].std > 0
    assert rows[1].mean == pytest.approx(sum(rows[1].draws) / 3)
    assert rows[2].mean < rows[0].mean - 10  # heavy noise costs accuracy
    again = accuracy_vs_nu(tiny_model, fmnist_test, [0, 0.1, 0.6], draws=3, seed=2, indices=IDX)
    assert [r.draws for r in again] == [r.draws for r in rows]


def test_compare_models_and_png_plot(tiny_model, fmnist_test, tmp_path):
    results = compare_models(
        {"a": tiny_model, "b": tiny_model}, fmnist_test, [0, 0.2], draws=2, indices=IDX[:200]
    )
    assert [r.draws for r in results["a"]] == [r.draws for r in results["b"]]  # same noise for every model
    path = plot_accuracy_vs_nu(results, tmp_path / "acc.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 200
    with pytest.raises(InputError, match=r"ending in \.png"):
        plot_accuracy_vs_nu(results, tmp_path / "acc.jpg")


def test_bad_nu_grid(tiny_model, fmnist_test):
    with pytest.raises(InputError, match="at least one nu"):
        accuracy_vs_nu(tiny_model, fmnist_test, [])
    with pytest.raises(InputError, match="nu must be >= 0"):
        accuracy_vs_nu(tiny_model, fmnist_test, [0.1, -0.1])
    with pytest.raises(InputError, match="draws must be >= 1"):
        accuracy_vs_nu(tiny_model, fmnist_test, [0.1], draws=0)


def test_t_quantiles():
    assert t_quantile(0.95, 4) == pytest.approx(2.1318, abs=1e-3)
    assert t_quantile(0.975, 10) == pytest.approx(2.2281, abs=1e-3)
    assert t_quantile(0.95, 1000) == pytest.approx(1.6464, abs=2e-3)
    assert t_quantile(0.5, 3) == pytest.approx(0, abs=1e-6)


GRID = (0.05, 0.1, 0.2, 0.3, 0.45, 0.6)


def test_calibrate_picks_the_last_grid_nu_within_budget(tiny_model, fmnist_test):
    cal = calibrate_nu(tiny_model, fmnist_test, max_drop=3.0, grid=GRID, draws=3, indices=IDX)
    assert cal.chosen is not None and cal.next_over is not None
    assert cal.nu == cal.chosen.nu and cal.chosen.upper <= 3.0
    assert cal.chosen.upper >= cal.chosen.drop  # a one-sided bound above the mean drop
    assert cal.next_over.upper > 3.0
    assert cal.next_over.nu == GRID[GRID.index(cal.nu) + 1]  # the next grid value exceeds the budget
    assert all(m.upper <= 3.0 for m in cal.tried[:-1])
    assert cal.clean_accuracy == pytest.approx(100 * accuracy(tiny_model, fmnist_test, indices=IDX))
    assert math.isclose(cal.chosen.accuracy, cal.clean_accuracy - cal.chosen.drop, abs_tol=1e-9)
    refined = calibrate_nu(tiny_model, fmnist_test, max_drop=3.0, grid=GRID, draws=3, indices=IDX, refine=2)
    assert cal.nu <= refined.nu < refined.next_over.nu <= cal.next_over.nu
    assert refined.chosen.upper <= 3.0 < refined.next_over.upper


def test_calibrate_when_nothing_fits_or_bad_budget(tiny_model, fmnist_test):
    cal = calibrate_nu(tiny_model, fmnist_test, max_drop=0.5, grid=(0.6,), draws=2, indices=IDX[:200])
    assert cal.nu == 0 and cal.chosen is None and cal.next_over.nu == 0.6
    with pytest.raises(InputError, match="max_drop must be > 0"):
        calibrate_nu(tiny_model, fmnist_test, max_drop=0)
    with pytest.raises(InputError, match="draws must be >= 2"):
        calibrate_nu(tiny_model, fmnist_test, draws=1)


# Student's t quantiles from the tables (Abramowitz & Stegun 26.10): t_{p, df}
T_TABLE = {(0.95, 2): 2.919986, (0.95, 4): 2.131847, (0.975, 2): 4.302653, (0.99, 4): 3.746947}


@pytest.mark.parametrize(("confidence", "draws"), [(0.95, 5), (0.95, 3), (0.975, 3), (0.99, 5)])
def test_drop_bound_is_the_one_sided_t_bound(tiny_model, fmnist_test, confidence, draws):
    """upper = mean drop + t_{conf, n-1} * s / sqrt(n), s the sample std (n - 1) of the per-draw drops,
    recomputed here from the draws themselves and the t table: a normal quantile (1.645), the
    population std or df = n would all give a smaller, anti-conservative bound."""
    idx = IDX[:300]
    clean = 100 * accuracy(tiny_model, fmnist_test, indices=idx)
    m = measure_drop(
        tiny_model, fmnist_test, 0.3, clean, draws=draws, confidence=confidence, seed=4, indices=idx
    )
    accs = accuracy_vs_nu(tiny_model, fmnist_test, [0.3], draws=draws, seed=4, indices=idx)[0].draws
    drops = [clean - a for a in accs]
    mean = sum(drops) / draws
    s = math.sqrt(sum((d - mean) ** 2 for d in drops) / (draws - 1))
    assert s > 0.1  # the draws differ, so the bound's width is tested
    assert m.drop == pytest.approx(mean, abs=1e-9) and m.std == pytest.approx(s, abs=1e-9)
    assert m.upper == pytest.approx(mean + T_TABLE[confidence, draws - 1] * s / math.sqrt(draws), abs=1e-4)


def test_calibrated_nu_passes_the_independently_computed_bound(tiny_model, fmnist_test):
    """Every nu calibrate accepts has mean + t_{0.95,2} s / sqrt(3) <= max_drop, recomputed from its
    draws; the first it rejects exceeds it."""
    cal = calibrate_nu(tiny_model, fmnist_test, max_drop=3.0, grid=GRID, draws=3, seed=1, indices=IDX)
    clean = cal.clean_accuracy
    for i, m in enumerate(cal.tried):
        accs = accuracy_vs_nu(tiny_model, fmnist_test, [m.nu], draws=3, seed=1 + i, indices=IDX)[0].draws
        drops = [clean - a for a in accs]
        mean = sum(drops) / 3
        s = math.sqrt(sum((d - mean) ** 2 for d in drops) / 2)
        bound = mean + T_TABLE[0.95, 2] * s / math.sqrt(3)
        assert m.upper == pytest.approx(bound, abs=1e-4)
        assert (bound <= 3.0) == (m is not cal.next_over)
    assert cal.chosen is not None and cal.next_over is cal.tried[-1]
