import json
import math

import pytest
from click.testing import CliRunner

from rnd.cli import main
from rnd.models import save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "tiny"
    save_checkpoint(tiny_model, path, dataset="fashion-mnist", recipe={"kind": "test"})
    return path


def run(args):
    return CliRunner().invoke(main, ["--threads", "1", "theory", *args])


def test_bounds_json_is_consistent():
    result = run(
        [
            "bounds",
            "--l0",
            "2",
            "--d",
            "100",
            "--mu",
            "0.01",
            "--nu",
            "0.02",
            "--M",
            "4",
            "--h-mu",
            "0.5",
            "--json",
        ]
    )
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert out["alpha"] == pytest.approx(2.0)
    # with Theorem 1's own step and eps = mu sqrt(d) L0, its bound is eq. (12)
    assert out["theorem1_bound"] == pytest.approx(out["eq12_rate"])
    assert out["theorem2_bound_M_inf"] < out["theorem2_bound"]
    assert out["theorem3_bound"] == pytest.approx(2 * 2 * 0.02 * 10 / 0.5)


def test_bounds_bad_input_is_one_line_and_status_2():
    result = run(["bounds", "--mu", "0"])
    assert result.exit_code == 2 and "mu" in result.output and "must be > 0" in result.output
    result = run(["bounds", "--M", "0"])
    assert result.exit_code == 2 and "M (EOT samples per query) must be >= 1" in result.output


def test_convergence_writes_png_and_json(tmp_path):
    result = run(
        [
            "convergence",
            "--d",
            "5",
            "--iters",
            "20",
            "--runs",
            "4",
            "--alpha",
            "0,2",
            "--M",
            "1,4",
            "--out",
            str(tmp_path),
        ]
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "convergence-quadratic.png").stat().st_size > 10_000
    data = json.loads((tmp_path / "convergence-quadratic.json").read_text())
    assert len(data["cells"]) == 4 and len(data["curves"][0][0]) == 21


def test_signflip_end_to_end(checkpoint, tmp_path):
    result = run(
        [
            "signflip",
            "--checkpoint",
            str(checkpoint),
            "--images",
            "3",
            "--draws",
            "20",
            "--grid",
            "0.01",
            "0.1",
            "2",
            "--l0-points",
            "4",
            "--out",
            str(tmp_path),
        ]
    )
    assert result.exit_code == 0, result.output
    assert "cells above the bound" in result.output
    assert (tmp_path / "signflip.png").stat().st_size > 10_000
    cells = json.loads((tmp_path / "signflip.json").read_text())["cells"]
    assert [(c["mu"], c["nu"]) for c in cells] == [(0.01, 0.01), (0.01, 0.1), (0.1, 0.01), (0.1, 0.1)]
    # each interval is the 95 % Wilson interval of its pooled count over 3 images x 20 draws
    for c in cells:
        k = round(c["p_flip"] * 60)
        assert c["p_flip"] == pytest.approx(k / 60, abs=1e-6)
        assert (c["ci_low"], c["ci_high"]) == pytest.approx(wilson(k, 60), abs=1e-5)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    p, d = k / n, 1 + z * z / n
    centre, half = (p + z * z / (2 * n)) / d, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / d
    return max(0.0, centre - half), min(1.0, centre + half)


def test_smoothing_on_an_analytic_function():
    result = run(
        ["smoothing", "--function", "logistic", "--d", "6", "--images", "3", "--samples", "64", "--json"]
    )
    assert result.exit_code == 0, result.output
    rows = json.loads(result.output)["rows"]
    assert all(r["violations"] == 0 and r["mean_gap"] <= r["mean_bound"] for r in rows)


def test_negative_nu_is_rejected(checkpoint):
    result = run(
        ["signflip", "--checkpoint", str(checkpoint), "--nu", "-0.1", "--mu", "0.1", "--images", "2"]
    )
    assert result.exit_code == 2, result.output
    assert result.output == "error: nu (the RND noise level) must be >= 0, got -0.1\n"
