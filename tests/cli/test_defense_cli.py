"""Defenses as specs on the command line and in sweeps: `rnd attack` and `rnd sweep` build the same
cells and give the same numbers; targeted cells run in sweeps; bad specs fail with one line."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from rnd.cli import main
from rnd.evaluation.store import ResultsStore
from rnd.models import save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread_cli")


@pytest.fixture
def one_thread_cli():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def checkpoint(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "tiny"
    save_checkpoint(tiny_model, path, dataset="fashion-mnist", recipe={"kind": "test"})
    return path


def attack(checkpoint, *args):
    return CliRunner().invoke(
        main, ["attack", "--checkpoint", str(checkpoint), "--no-progress", "--acc-images", "200", *args]
    )


CONFIG = """
name = "same-cells"
seeds = [0]
budget = 40
[[defenses]]
name = "rnd"
nu = [0.0, 0.05]
[data]
images = 4
accuracy_images = 200
[[models]]
checkpoint = "{ck}"
[[attacks]]
name = "square"
norm = "linf"
eps = 0.1
{extra}
"""


def test_attack_and_sweep_make_the_same_cells_and_numbers(checkpoint, tmp_path):
    res = attack(
        checkpoint, "--json", "--attack", "square", "--defense", "none", "--nu", "0.05",
        "--images", "4", "--budget", "40",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    cli = {r["cell_key"]: r for r in json.loads(res.output)["rows"]}
    assert [r["defense"] for r in cli.values()] == ["none", "rnd:nu=0.05"]
    cfg = tmp_path / "s.toml"
    cfg.write_text(CONFIG.format(ck=checkpoint, extra=""))
    db = tmp_path / "s.sqlite"
    out = CliRunner().invoke(main, ["sweep", str(cfg), "--db", str(db), "--no-progress"])
    assert out.exit_code == 0, out.output
    with ResultsStore(db, readonly=True) as store:
        stored = {r.key: r for r in store.records(rows=True)}
    assert set(stored) == set(cli)  # the same cell keys
    for key, row in cli.items():
        assert stored[key].summary.failure_rate == row["failure_rate"]
        assert stored[key].summary.failure_rate_clean == row["failure_rate_clean"]
        assert stored[key].summary.clean_accuracy == row["clean_accuracy"]
        assert [r.queries for r in stored[key].rows] == row["queries"]
        assert [r.success for r in stored[key].rows] == row["success"]


def test_targeted_cells_run_in_sweeps(checkpoint, tmp_path):
    cfg = tmp_path / "t.toml"
    cfg.write_text(CONFIG.format(ck=checkpoint, extra='targeted = true\ntarget = "next"'))
    db = tmp_path / "t.sqlite"
    out = CliRunner().invoke(main, ["sweep", str(cfg), "--db", str(db), "--no-progress"])
    assert out.exit_code == 0, out.output
    with ResultsStore(db, readonly=True) as store:
        results = store.records(rows=True)
        rows = [row for r in results for row in r.rows]
    assert {r.cell.target for r in results} == {"next"}
    assert rows and all(r.target == (r.label + 1) % 10 for r in rows)  # target: (label + 1) mod 10
    res = attack(
        checkpoint, "--json", "--attack", "square", "--nu", "0", "--nu", "0.05", "--images", "4",
        "--budget", "40", "--targeted", "--target", "next",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    keys = {r["cell_key"] for r in json.loads(res.output)["rows"]}
    assert keys == {r.key for r in results}


@pytest.mark.parametrize(
    ("spec", "words"),
    [
        ("nope", "unknown defense 'nope'"),
        ("rnd:nu=-1", "nu"),
        ("rnd:nux=1", "nux"),
        ("rnd:nu=abc", "nu"),
        ("rnd:nu", "not key=value"),
        ("rnd:seed=3", "seed is not a spec parameter"),
        ("feature-noise:sigma=0.5,layers=fc9", "fc9"),
        ("feature-noise:sigma=-0.5", "sigma"),
        ("aaa:variant=cosine", "cosine"),
    ],
)
def test_bad_defense_specs_fail_with_one_line(checkpoint, tmp_path, spec, words):
    res = attack(checkpoint, "--attack", "square", "--defense", spec, "--images", "2", "--budget", "10")
    assert res.exit_code == 2, res.output
    assert words in res.output and len(res.output.strip().splitlines()) == 1
    cfg = tmp_path / "bad.toml"
    text = CONFIG.format(ck=checkpoint, extra="")
    text = text.replace('[[defenses]]\nname = "rnd"\nnu = [0.0, 0.05]\n', f'defenses = ["{spec}"]\n')
    cfg.write_text(text)
    db = tmp_path / "bad.sqlite"
    out = CliRunner().invoke(main, ["sweep", str(cfg), "--db", str(db), "--no-progress"])
    assert out.exit_code == 2, out.output
    assert "defenses" in out.output and len(out.output.strip().splitlines()) == 1
    assert not db.exists()


def test_detector_refusals_are_reported_and_blinding_is_an_attack_option(checkpoint):
    """Against Blacklight, plain Square is refused (detected) on every image; the table gains the
    detection column; blind=A runs the same attack blinded, through the same cell machinery."""
    common = ["--json", "--attack", "square", "--defense", "blacklight", "--images", "3", "--budget", "30"]
    plain = attack(checkpoint, *common)
    assert plain.exit_code == 0, plain.output
    (row,) = json.loads(plain.output)["rows"]
    assert row["detection_rate"] == 100.0 and all(q is not None and q >= 2 for q in row["first_refusal"])
    blinded = attack(checkpoint, *common, "--param", "blind=0.05")
    assert blinded.exit_code == 0, blinded.output
    (brow,) = json.loads(blinded.output)["rows"]
    assert brow["params"]["blind_amplitude"] == 0.05 and brow["cell_key"] != row["cell_key"]
    assert brow["detection_rate"] < row["detection_rate"]
    text = attack(
        checkpoint, "--attack", "square", "--defense", "blacklight", "--images", "3", "--budget", "30"
    )
    assert text.exit_code == 0 and "detected %" in text.output
