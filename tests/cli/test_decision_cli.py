"""Label-only attacks from the command line: `rnd attack` picks a labels oracle and reports
distances, a sweep stores them and `rnd report` plots them; bad input is one line, exit 2, and
nothing is written."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from click.testing import CliRunner

from rnd.cli import main
from rnd.evaluation.store import ResultsStore
from rnd.models import save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tiny_model, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dck") / "tiny"
    save_checkpoint(tiny_model, path, dataset="fashion-mnist", recipe={"kind": "test"})
    return path


def attack(checkpoint, *args):
    return CliRunner().invoke(
        main,
        [
            "--threads",
            "1",
            "attack",
            "--checkpoint",
            str(checkpoint),
            "--no-progress",
            "--acc-images",
            "200",
            *args,
        ],
    )


def test_label_only_attack_reports_distances(checkpoint):
    res = attack(
        checkpoint, "--attack", "hsja", "--attack", "rays", "--nu", "0", "--nu", "0.02", "--images", "4",
        "--budget", "150", "--eps", "0.3", "--json",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    report = json.loads(res.output)
    assert [(r["attack"], r["nu"]) for r in report["rows"]] == [
        ("hsja", 0.0), ("hsja", 0.02), ("rays", 0.0), ("rays", 0.02),
    ]  # fmt: skip
    for row in report["rows"]:
        assert row["params"]["attack"] == row["attack"] and "loss" not in row["params"]
        d = [math.inf if v is None else v for v in row["distance"]]
        assert len(d) == 4 and all(v > 0 for v in d) and all(q <= 150 for q in row["queries"])
        # success as observed == an adversarial point within eps
        assert row["success"] == [v <= 0.3 + 1e-6 for v in d]
        srt = sorted(d)
        assert row["median_distance"] == pytest.approx((srt[1] + srt[2]) / 2)
    text = attack(checkpoint, "--attack", "hsja", "--nu", "0", "--images", "2", "--budget", "60")
    assert text.exit_code == 0, text.output
    assert "median dist" in text.output
    score = attack(checkpoint, "--attack", "square", "--nu", "0", "--images", "2", "--budget", "20")
    assert score.exit_code == 0 and "median dist" not in score.output  # no distance column for scores


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (("--attack", "hjsa"), ("unknown attack", "hsja")),
        (("--attack", "rays", "--norm", "l2"), ("rays", "norm")),
        (("--attack", "hsja", "--eps", "0"), ("eps",)),
        (("--attack", "hsja", "--eps", "-0.1"), ("eps",)),
        (("--attack", "hsja", "--budget", "1"), ("hsja needs 2 queries", "budget")),
        (("--attack", "sign-flip", "--eot", "5", "--budget", "9"), ("needs 10 queries", "budget")),
        (("--attack", "hsja", "--eot", "0"), ("eot",)),
        (("--attack", "hsja", "--param", "loss=ce"), ("--loss",)),
    ],
)
def test_bad_input_is_one_line_and_exit_2(checkpoint, tmp_path, args, words):
    res = attack(checkpoint, "--images", "2", *args)
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), res.output
    for w in words:
        assert w in lines[0], lines[0]


CONFIG = """
name = "decision-test"
budget = 120
[data]
images = 3
accuracy_images = 200
[defense]
nu = [0.0, 0.05]
[[models]]
label = "tiny"
checkpoint = "tiny"
[[attacks]]
name = "hsja"
norm = "l2"
eps = 3.0
eot = [1, 3]
"""


def test_sweep_stores_distances_and_report_plots_them(tiny_model, tmp_path):
    save_checkpoint(tiny_model, tmp_path / "tiny", dataset="fashion-mnist")
    (tmp_path / "d.toml").write_text(CONFIG)
    db = tmp_path / "d.sqlite"
    runner = CliRunner()
    res = runner.invoke(
        main, ["--threads", "1", "sweep", str(tmp_path / "d.toml"), "--db", str(db), "--no-progress"]
    )
    assert res.exit_code == 0, res.output
    assert "4 cells, 0 already done, 4 run now, 0 failed" in res.output
    with ResultsStore(db, readonly=True) as store:
        results = store.records(rows=True)
        rows = [row for r in results for row in r.rows]
    assert {r.cell.output for r in results} == {"labels"}  # chosen for the label-only attack
    for r in results:
        assert r.summary.distance_curve and r.summary.distance_curve[-1][0] == 120
        assert r.summary.median_distance == r.summary.distance_curve[-1][1]
    assert len(rows) == 12 and all(row.distance is not None and row.distance > 0 for row in rows)
    out = tmp_path / "rep"
    rep = runner.invoke(main, ["report", str(db), "--out", str(out)])
    assert rep.exit_code == 0, rep.output
    text = (out / "report.md").read_text()
    assert "median l2 distance against queries on tiny" in text
    assert any(p.name.startswith("distance_") for p in out.glob("*.png"))
