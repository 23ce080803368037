"""Transfer attacks from the command line and in sweeps: `--surrogate` / `surrogates = [...]`, one
query per submitted candidate, the surrogate identified by its sha256 (not its path) in the cell
key, the same cells from `rnd attack` and `rnd sweep`; bad input is one line, exit 2, nothing
written."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner

from rnd.cli import main
from rnd.data.base import ImageDataset
from rnd.evaluation.store import ResultsStore
from rnd.models import model_sha256, save_checkpoint
from rnd.training.standard import init_model


@pytest.fixture(scope="module")
def folder(tiny_model, fmnist_small_train, tmp_path_factory) -> Path:
    """The target (the tiny CNN), a surrogate (an untrained CNN of another seed) and a colour model."""
    root = tmp_path_factory.mktemp("transfer")
    save_checkpoint(tiny_model, root / "target", dataset="fashion-mnist", recipe={"kind": "test"})
    sur = init_model("small-cnn", fmnist_small_train, seed=1, width=8, hidden=32).eval()
    save_checkpoint(sur, root / "sur", dataset="fashion-mnist", recipe={"kind": "test"})
    rgb = ImageDataset("synthetic", "train", fmnist_small_train.images[:2].repeat(1, 3, 1, 1),
                       fmnist_small_train.labels[:2], fmnist_small_train.classes)  # fmt: skip
    save_checkpoint(init_model("small-cnn", rgb, seed=0).eval(), root / "rgb", dataset="synthetic", recipe={})
    return root


def invoke(*args: str):
    return CliRunner().invoke(main, ["--threads", "1", *map(str, args)])


def attack(folder: Path, *args: str):
    return invoke("attack", "--checkpoint", folder / "target", "--images", "4", "--budget", "3",
                  "--acc-images", "100", "--no-progress", *args)  # fmt: skip


def test_attack_with_a_surrogate_spends_one_query_per_image(folder):
    res = attack(folder, "--attack", "mi-fgsm", "--surrogate", folder / "sur", "--json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)["rows"]
    assert [r["defense"] for r in rows] == ["none", "rnd:nu=0.02"]
    for r in rows:
        assert r["queries"] == [1, 1, 1, 1]  # one candidate, one query each; crafting sent nothing
        assert r["params"]["surrogates"] == 1 and r["params"]["candidates"] == 1


@pytest.mark.parametrize(("name", "norm"), [("gfcs", "l2"), ("p-rgf", "linf"), ("hsja-ts", "l2")])
def test_a_hybrid_runs_from_the_command_line_within_its_budget(folder, name, norm):
    extra = ["--param", "q=4", "--param", "norm_samples=2"] if name == "p-rgf" else []
    res = attack(folder, "--attack", name, "--norm", norm, "--surrogate", folder / "sur", "--budget", "40",
                 "--eot", "1", *extra, "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)["rows"]
    assert [r["defense"] for r in rows] == ["none", "rnd:nu=0.02"]
    for r in rows:
        assert len(r["queries"]) == 4 and max(r["queries"]) <= 40 and min(r["queries"]) >= 1
        assert r["params"]["surrogates"] == 1


def test_a_sweep_runs_the_cells_rnd_attack_runs_and_keys_them_by_the_surrogates_sha(folder, tmp_path):
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    for suffix in (".safetensors", ".json"):
        shutil.copy(folder / f"sur{suffix}", moved / f"sur{suffix}")
    cfg = tmp_path / "t.toml"
    cfg.write_text(f"""
name = "t"
budget = 4
[data]
images = 4
accuracy_images = 100
[defense]
nu = [0.0, 0.02]
[[models]]
label = "target"
checkpoint = "{folder / "target"}"
[[attacks]]
name = "mi-fgsm"
norm = "linf"
eps = 0.1
surrogates = ["{moved / "sur"}"]
[attacks.params]
candidates = 2
""")
    db = tmp_path / "t.sqlite"
    res = invoke("sweep", cfg, "--db", db, "--no-progress")
    assert res.exit_code == 0, res.output
    assert "2 cells, 0 already done, 2 run now, 0 failed" in res.output
    sha = model_sha256(str(folder / "sur"), None)
    with ResultsStore(db, readonly=True) as store:
        records = store.records(rows=True)
    assert {r.cell.surrogate_sha256 for r in records} == {sha}
    assert all(1 <= row.queries <= 2 for r in records for row in r.rows)
    # the same choices from the command line, the surrogate at another path: the same cells
    res = attack(folder, "--attack", "mi-fgsm", "--surrogate", folder / "sur", "--param", "candidates=2",
                 "--budget", "4", "--json")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert {r["cell_key"] for r in json.loads(res.output)["rows"]} == {r.key for r in records}
    assert "0 run now" in invoke("sweep", cfg, "--db", db, "--no-progress").output  # resumes as done
    # the report's columns name the surrogate (its sha256's first 8 hex digits)
    res = invoke("report", db, "--out", tmp_path / "report")
    assert res.exit_code == 0, res.output
    assert (
        f"mi-fgsm linf eps=0.1 candidates=2 on={sha[:8]}" in (tmp_path / "report" / "report.md").read_text()
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--attack", "mi-fgsm"], "give --surrogate SPEC"),
        (["--attack", "square", "--surrogate", "SUR"], "--surrogate is for the transfer and hybrid attacks"),
        (["--attack", "mi-fgsm", "--surrogate", "NOPE"], "attacks[0].surrogates: checkpoint"),
        (["--attack", "mi-fgsm", "--surrogate", "RGB"], "takes images of shape (3, 28, 28)"),
        (["--attack", "mx-fgsm", "--surrogate", "SUR"], "unknown attack 'mx-fgsm'"),
    ],
)
def test_bad_surrogate_input_is_one_line(folder, args, message):
    names = {"SUR": folder / "sur", "NOPE": folder / "nope", "RGB": folder / "rgb"}
    res = attack(folder, *[str(names.get(a, a)) for a in args])
    assert res.exit_code == 2, res.output
    assert res.output.startswith("error: ") and res.output.count("\n") == 1 and message in res.output


@pytest.mark.parametrize(
    ("surrogates", "name", "message"),
    [
        ("", "mi-fgsm", "attacks[0].surrogates: give the surrogate models"),
        ('surrogates = ["sur"]', "square", "attacks[0].surrogates: only a transfer or hybrid attack"),
        ('surrogates = ["rgb"]', "mi-fgsm", "attacks[0].surrogates:"),
    ],
)
def test_bad_surrogates_in_a_config_write_nothing(folder, tmp_path, surrogates, name, message):
    cfg = folder / f"bad-{name}-{len(surrogates)}.toml"
    cfg.write_text(f"""
[[models]]
label = "target"
checkpoint = "target"
[[attacks]]
name = "{name}"
norm = "linf"
eps = 0.1
{surrogates}
""")
    db = tmp_path / "never.sqlite"
    res = invoke("sweep", cfg, "--db", db, "--no-progress")
    assert res.exit_code == 2 and message in res.output, res.output
    assert not db.exists()


def test_each_attack_tables_surrogates_are_checked_even_when_the_attack_repeats(folder, tmp_path):
    """Two tables of the same attack, the second on a colour model: the second is refused by index
    (its cells are found by their own surrogates, not by the attack's name)."""
    cfg = folder / "two-tables.toml"
    cfg.write_text("""
[[models]]
label = "target"
checkpoint = "target"
[[attacks]]
name = "mi-fgsm"
norm = "linf"
eps = 0.1
surrogates = ["sur"]
[[attacks]]
name = "mi-fgsm"
norm = "linf"
eps = 0.1
surrogates = ["rgb"]
""")
    db = tmp_path / "never.sqlite"
    res = invoke("sweep", cfg, "--db", db, "--no-progress")
    assert res.exit_code == 2 and "attacks[1].surrogates" in res.output, res.output
    assert not db.exists()


def test_a_surrogate_replaced_after_planning_is_caught(folder, tmp_path):
    """A cell names its surrogate by sha256: a different model at the same path is refused when the
    cell loads it, not silently attacked with."""
    from rnd.errors import CheckpointError
    from rnd.evaluation.config import parse_config
    from rnd.evaluation.grid import expand
    from rnd.evaluation.targets import Workspace

    for suffix in (".safetensors", ".json"):
        shutil.copy(folder / f"sur{suffix}", tmp_path / f"sur{suffix}")
    cfg = parse_config(
        f'[[models]]\nlabel = "t"\ncheckpoint = "{folder / "target"}"\n'
        '[[attacks]]\nname = "mi-fgsm"\nnorm = "linf"\neps = 0.1\nsurrogates = ["sur"]\n',
        base=tmp_path,
    )
    (cell,) = expand(cfg)
    assert len(Workspace().surrogates(cell)) == 1
    for suffix in (".safetensors", ".json"):  # another model now lies at the planned path
        shutil.copy(folder / f"target{suffix}", tmp_path / f"sur{suffix}")
    with pytest.raises(CheckpointError, match="changed since the sweep was planned"):
        Workspace().surrogates(cell)
