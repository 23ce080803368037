"""Bring your own model through the CLI: `rnd attack --model` and sweep configs' `model = ...` with
an rnd checkpoint, a TorchScript file and a `package.module:factory`; the same weights give the
same numbers every way; bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import save_file

from rnd.cli import main
from rnd.errors import CheckpointError
from rnd.evaluation.cells import Cell
from rnd.evaluation.config import load_config
from rnd.evaluation.grid import expand
from rnd.evaluation.store import ResultsStore
from rnd.evaluation.targets import Workspace
from rnd.models import save_checkpoint

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
MODULE = "byo_cli_nets"
FACTORY = """
from torch import nn
from rnd.models.registry import build_from_arguments

NOT_CALLABLE = 3


def make():
    return build_from_arguments({arch!r}, {kwargs!r})


def five():
    m = nn.Sequential(nn.Flatten(), nn.Linear(784, 5))
    m.input_shape = (1, 28, 28)
    m.num_classes = 10
    return m
"""
SWEEP = """
name = "byo"
budget = 50
[data]
images = 3
accuracy_images = 100
[defense]
nu = [0.0, 0.02]
[[models]]
label = "ck"
checkpoint = "tiny"
[[models]]
label = "ts"
model = "net.pt"
[[models]]
label = "fa"
model = "{module}:make"
weights = "tiny.safetensors"
[[attacks]]
name = "square"
norm = "linf"
eps = 0.1
"""


@pytest.fixture(scope="module")
def folder(tiny_model, tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("byocli")
    save_checkpoint(tiny_model, d / "tiny", dataset="fashion-mnist")
    torch.jit.save(torch.jit.trace(tiny_model, torch.rand(2, 1, 28, 28)), d / "net.pt")
    (d / "net.json").write_text(json.dumps({"input_shape": [1, 28, 28], "num_classes": 10}))
    torch.jit.save(torch.jit.trace(tiny_model, torch.rand(2, 1, 28, 28)), d / "bare.pt")
    text = FACTORY.format(arch=tiny_model.arch_name, kwargs=dict(tiny_model.arch_kwargs))
    (d / f"{MODULE}.py").write_text(textwrap.dedent(text))
    (d / "sweep.toml").write_text(SWEEP.format(module=MODULE))
    (d / "garbage.pt").write_text("not a model")
    save_file({"fc.weight": torch.zeros(5, 784)}, str(d / "wrong.safetensors"))
    return d


@pytest.fixture(autouse=True)
def on_path(folder, monkeypatch):
    monkeypatch.syspath_prepend(str(folder))
    yield
    sys.modules.pop(MODULE, None)


def invoke(*args: str):
    return CliRunner().invoke(main, ["--threads", "1", *args])


def attack_json(*model_args: str) -> dict:
    result = invoke(
        "attack", *model_args, "--attack", "square", "--images", "4", "--budget", "50", "--json",
        "--no-progress", "--acc-images", "200",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_attack_three_ways_gives_the_same_numbers(folder):
    reports = {
        "checkpoint": attack_json("--model", str(folder / "tiny")),
        "torchscript": attack_json("--model", str(folder / "net.pt")),
        "factory": attack_json("--model", f"{MODULE}:make", "--weights", str(folder / "tiny.safetensors")),
    }
    legacy = attack_json("--checkpoint", str(folder / "tiny"))
    ref = reports["checkpoint"]
    assert [r["defense"] for r in ref["rows"]] == ["none", "rnd:nu=0.02"]
    for row in ref["rows"]:
        assert 0 <= row["failure_rate"] <= 100 and len(row["queries"]) == 4
    assert ref["rows"][0]["failure_rate"] < 100  # square fools the undefended tiny model
    # --model on a checkpoint is --checkpoint: the same cells, keys and numbers
    assert [r["cell_key"] for r in legacy["rows"]] == [r["cell_key"] for r in ref["rows"]]
    for kind, report in reports.items():
        assert report["indices"] == ref["indices"] and report["labels"] == ref["labels"], kind
        assert report["clean_accuracy"] == ref["clean_accuracy"], kind
        for row, expected in zip(report["rows"], ref["rows"], strict=True):
            for field in ("failure_rate", "failure_rate_clean", "failure_rate_vote", "queries", "success"):
                assert row[field] == expected[field], (kind, field)
    assert reports["torchscript"]["model_sha256"] != ref["model_sha256"]  # the .pt file's own hash
    assert reports["factory"]["model_sha256"] == ref["model_sha256"]  # the same safetensors file


def test_attack_with_metadata_options(folder):
    report = attack_json(
        "--model", str(folder / "bare.pt"), "--input-shape", "1,28,28", "--num-classes", "10"
    )
    assert len(report["indices"]) == 4 and report["checkpoint"] == str(folder / "bare.pt")


def test_sweep_with_model_entries(folder, tmp_path):
    db = tmp_path / "r.sqlite"
    result = invoke("sweep", str(folder / "sweep.toml"), "--db", str(db), "--no-progress")
    assert result.exit_code == 0, result.output
    assert "6 cells, 0 already done, 6 run now, 0 failed" in result.output
    with ResultsStore(db, readonly=True) as store:
        rows = store.records()
    by = {(r.cell.model, r.cell.nu): r for r in rows}
    for nu in (0.0, 0.02):
        ref = by["ck", nu].summary
        for label in ("ts", "fa"):
            for field in ("failure_rate", "failure_rate_clean", "failure_rate_vote", "clean_accuracy"):
                assert getattr(by[label, nu].summary, field) == getattr(ref, field), (label, nu, field)
    assert by["fa", 0.0].cell.checkpoint == f"{MODULE}:make"  # the spec text, a local field


def test_cells_identify_the_model_by_sha_and_catch_a_changed_file(folder, tmp_path):
    cfg = load_config(folder / "sweep.toml")
    cells = expand(cfg)
    fa = next(c for c in cells if c.model == "fa")
    assert fa.weights == str(folder / "tiny.safetensors") and fa.checkpoint == f"{MODULE}:make"
    assert "weights" not in fa.identity() and "model_meta" not in fa.identity()
    # the new local fields leave the keys of cells written before them unchanged
    old = {k: v for k, v in fa.to_dict().items() if k not in ("weights", "model_meta")}
    assert Cell.from_dict(old).key == fa.key
    # a TorchScript file replaced after planning is caught before it is used
    pt = tmp_path / "net.pt"
    pt.write_bytes((folder / "net.pt").read_bytes())
    (tmp_path / "net.json").write_text((folder / "net.json").read_text())
    ts = next(c for c in cells if c.model == "ts")
    planned = Cell.from_dict({**ts.to_dict(), "checkpoint": str(pt)})
    other = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    torch.jit.save(torch.jit.trace(other, torch.rand(2, 1, 28, 28)), pt)  # replaced after planning
    with pytest.raises(CheckpointError, match="changed since the sweep was planned"):
        Workspace().model(planned)  # a fresh process's workspace


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--model", "no_such_pkg_rnd.nets:make"], "cannot import 'no_such_pkg_rnd.nets'"),
        (["--model", f"{MODULE}:absent"], f"{MODULE} has no attribute 'absent'"),
        (["--model", f"{MODULE}:NOT_CALLABLE"], "is a int, not a callable"),
        (["--model", f"{MODULE}:make", "--weights", "{d}/wrong.safetensors"], "do not fit"),
        (["--model", "{d}/garbage.pt"], "is not a TorchScript file"),
        (["--model", f"{MODULE}:five"], "the model's output is (1, 5), expected (N, 10)"),
        (["--model", "{d}/bare.pt"], "no input shape known"),
        (["--model", "{d}/bare.pt", "--input-shape", "1,x"], "--input-shape takes C,H,W"),
        (["--model", "{d}/bare.pt", "--input-shape", "3,8,8"], "to have 1 channels, but got 3"),
        (["--model", "{d}/tiny", "--checkpoint", "{d}/tiny"], "give --checkpoint or --model, not both"),
        (["--weights", "{d}/tiny.safetensors"], "--weights goes with --model"),
        (["--model", "{d}/net.pt", "--weights", "{d}/tiny.safetensors"], "weights are for a package"),
    ],
)
def test_attack_bad_models_are_one_line(folder, args, message):
    before = tree(folder)
    result = invoke(
        "attack", *[a.format(d=folder) for a in args], "--images", "2", "--budget", "50", "--no-progress"
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.output
    assert tree(folder) == before


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_device_cuda_without_a_gpu(folder):
    result = invoke("--device", "cuda", "attack", "--model", str(folder / "net.pt"), "--no-progress")
    assert result.exit_code == 2 and "no CUDA GPU" in result.output


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            ('model = "net.pt"', 'model = "garbage.pt"'),
            "garbage.pt is not a TorchScript file",
        ),
        ((f'model = "{MODULE}:make"', 'model = "no_such_pkg_rnd:make"'), "models[2].model: "),
        (('weights = "tiny.safetensors"', 'weights = "wrong.safetensors"'), "models[2].model: weights"),
        (('model = "net.pt"', 'model = "net.pt"\ncheckpoint = "tiny"'), "give exactly one of checkpoint"),
        (('model = "net.pt"', 'model = "bare.pt"'), "no input shape known"),
        (('model = "net.pt"', 'model = "absent.pt"'), "TorchScript file"),
    ],
)
def test_sweep_bad_models_are_one_line(folder, tmp_path, edit, message):
    config = tmp_path / "bad.toml"
    config.write_text((folder / "sweep.toml").read_text().replace(*edit))
    for name in (
        "net.pt",
        "net.json",
        "garbage.pt",
        "bare.pt",
        "tiny.json",
        "tiny.safetensors",
        "wrong.safetensors",
    ):
        (tmp_path / name).write_bytes((folder / name).read_bytes())  # the config's relative paths
    db = tmp_path / "r.sqlite"
    result = invoke("sweep", str(config), "--db", str(db), "--no-progress")
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.output
    assert not db.exists()
