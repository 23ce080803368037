import json

import pytest
import torch
from click.testing import CliRunner

from rnd.cli import main
from rnd.models import save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "tiny"
    save_checkpoint(tiny_model, path, dataset="fashion-mnist", recipe={"kind": "test"})
    return path


def test_demo_end_to_end(checkpoint):
    result = CliRunner().invoke(
        main, ["demo", "--checkpoint", str(checkpoint), "--images", "8", "--budget", "120", "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.startswith("clean accuracy, RND nu=0.02") for line in lines)
    rows = [line.split() for line in lines if line.strip().startswith(("square", "nes"))]
    assert len(rows) == 4 and {r[2] for r in rows} == {"none", "rnd:nu=0.02"}


def test_demo_json(checkpoint):
    result = CliRunner().invoke(
        main,
        [
            "demo",
            "--checkpoint",
            str(checkpoint),
            "--images",
            "4",
            "--budget",
            "40",
            "--attack",
            "square",
            "--no-progress",
            "--json",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert len(report["rows"]) == 2
    assert report["rows"][0]["defense"] == "none" and report["rows"][1]["defense"] == "rnd:nu=0.02"
    assert report["rows"][0]["images"] == 4



def test_demo_prints_the_numbers_of_rnd_attack_for_the_same_cells(checkpoint):
    """One pipeline: `rnd demo` runs the cells `rnd attack` builds from the same choices (same keys)
    and reports the same rates, queries and clean accuracies for each."""
    common = ["--checkpoint", str(checkpoint), "--images", "4", "--budget", "40", "--attack", "square"]
    demo = CliRunner().invoke(main, ["demo", *common, "--no-progress", "--json"])
    attack = CliRunner().invoke(
        main,
        ["attack", *common, "--defense", "none", "--defense", "rnd:nu=0.02", "--eps", "0.1", "--acc-images",
         "10000", "--no-progress", "--json"],
    )  # fmt: skip
    assert demo.exit_code == 0 and attack.exit_code == 0, demo.output + attack.output
    d, a = json.loads(demo.output), json.loads(attack.output)
    assert d["cell_keys"] == [r["cell_key"] for r in a["rows"]]
    fields = ("failure_rate", "failure_rate_vote", "failure_rate_clean", "mean_queries", "clean_accuracy")
    for dr, ar in zip(d["rows"], a["rows"], strict=True):
        assert {f: dr[f] for f in fields} == {f: ar[f] for f in fields}
    assert d["clean_accuracy"] == a["clean_accuracy"] and d["rnd_accuracy"] == a["rows"][1]["clean_accuracy"]


def test_missing_checkpoint_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(main, ["demo", "--checkpoint", str(tmp_path / "nope"), "--no-progress"])
    assert result.exit_code == 2
    assert "not found" in result.output and "rnd train" in result.output


def test_unknown_attack_in_demo(checkpoint):
    result = CliRunner().invoke(
        main, ["demo", "--checkpoint", str(checkpoint), "--attack", "nope", "--no-progress"]
    )
    assert result.exit_code == 2 and "unknown attack 'nope'" in result.output


def test_train_writes_checkpoint(tmp_path):
    out = tmp_path / "syn"
    result = CliRunner().invoke(
        main, ["train", "--dataset", "synthetic", "--epochs", "1", "--out", str(out), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output
    assert (tmp_path / "syn.safetensors").exists() and (tmp_path / "syn.json").exists()
    meta = json.loads((tmp_path / "syn.json").read_text())
    assert meta["dataset"] == "synthetic" and meta["recipe"]["epochs"] == 1


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["demo", "--nu", "-1"], ["'--nu'", "-1"]),
        (["train", "--arch", "alexnet"], ["'--arch'", "'alexnet' is not one of", "'small-cnn'"]),
        (["train", "--epochs", "0"], ["'--epochs'", "0 is not in the range"]),
        (["--threads", "0", "demo"], ["'--threads'", "0 is not in the range"]),
    ],
)
def test_bad_option_values(args, words):
    """Exit 2 with a message naming the option and the value given (not just any exit 2)."""
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 2, result.output
    assert "Invalid value for" in result.output
    assert all(w in result.output for w in words), result.output


def test_threads_option_sets_torch_threads():
    """`rnd --threads N CMD` runs CMD with N torch CPU threads (checked in-process, then restored)."""
    before = torch.get_num_threads()
    seen = []
    try:
        for n in (1, 3):
            result = CliRunner().invoke(
                main, ["--threads", str(n), "theory", "bounds", "--l0", "2", "--d", "100", "--json"]
            )
            assert result.exit_code == 0, result.output
            seen.append(torch.get_num_threads())
    finally:
        torch.set_num_threads(before)
    assert seen == [1, 3]
