"""`rnd surrogates train | substitute | info`: the zoo, a substitute whose checkpoint says what it
cost, the provenance table; bad input is one line, exit 2, nothing written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from rnd.cli import main
from rnd.models import read_meta, save_checkpoint
from rnd.training import surrogates as zoo_module
from rnd.training.loop import TrainConfig
from rnd.training.surrogates import SURROGATES, SurrogateRecipe
from tests.training.helpers import fmnist_slice


@pytest.fixture(scope="module")
def folder(tiny_model, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("surrogates")
    save_checkpoint(tiny_model, root / "target", dataset="fashion-mnist", recipe={"kind": "standard"})
    return root


def invoke(*args: object):
    return CliRunner().invoke(main, ["--threads", "1", *map(str, args)])


def one_line_error(res, message: str) -> None:
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:") and message in lines[0], res.output


def test_substitute_then_info(folder, tmp_path):
    out = tmp_path / "sub"
    res = invoke("surrogates", "substitute", "--model", folder / "target", "--out", out,
                 "--seed-images", 20, "--rounds", 2, "--epochs", 2, "--no-progress")  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "trained from 40 labels of the target, 40 queries, rounds [20, 40]" in res.output
    meta = read_meta(out)
    assert meta.metrics["queries"] == 40 and meta.parent == {"target": read_meta(folder / "target").sha256}

    res = invoke("surrogates", "info", folder / "target", out, "--model", folder / "target", "--images", 200)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert "agreement %" in lines[0] and "100.00" in lines[2] and "40 target labels" in lines[3]
    assert "on the first 200 fashion-mnist test images" in lines[-1]

    files = [out.with_name("sub.json"), out.with_name("sub.safetensors")]  # as a shell glob names them
    res = invoke("surrogates", "info", *files, "--model", folder / "target", "--images", 50, "--json")
    (row,) = json.loads(res.output)
    assert row["queries"] == 40 and row["test_images"] == 50 and 0 <= row["agreement"] <= 1

    res = invoke("surrogates", "info", out, "--model", folder / "target", "--images", 50, "--markdown")
    assert res.output.startswith("| surrogate |")


def test_train_builds_the_zoo_in_home(monkeypatch, folder, tmp_path, fmnist_small_train, fmnist_test):
    tiny = {"tiny": SurrogateRecipe("small-cnn", TrainConfig(epochs=1, batch_size=50, seed=4), {"width": 4})}
    data = {"train": fmnist_slice(fmnist_small_train, 200), "test": fmnist_slice(fmnist_test, 100)}
    monkeypatch.setitem(SURROGATES, "fashion-mnist", tiny)
    monkeypatch.setattr(zoo_module, "load_dataset", lambda name, split: data[split])
    res = invoke("surrogates", "train", "--home", tmp_path, "--no-progress")
    assert res.exit_code == 0, res.output
    path = tmp_path / "surrogates" / "fashion-mnist-tiny"
    assert res.output.startswith("tiny: small-cnn width=4, seed 4, test accuracy ")
    assert res.output.rstrip().endswith(f" %  ->  {path}")
    assert (tmp_path / "surrogates" / "fashion-mnist-tiny.safetensors").is_file()
    res = invoke("surrogates", "train", "--home", tmp_path, "--name", "nope")
    one_line_error(res, "unknown fashion-mnist surrogate 'nope'")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "give the target: --model SPEC or --url URL"),
        (["--model", "TARGET", "--url", "http://x/v2/models/m"], "give the target"),
        (["--url", "http://x/v2/models/m", "--defense", "rnd:nu=0.02"], "--defense is for --model"),
        (["--model", "NOPE"], "not found"),
        (["--model", "TARGET", "--seed-images", "20000"], "more than the 10000 images"),
        (["--model", "TARGET", "--defense", "bogus"], "bogus"),
        (["--model", "TARGET", "--dataset", "imagenet-samples", "--seed-images", "5"], "inputs"),
    ],
)
def test_bad_substitute_input_is_one_line_and_writes_nothing(folder, tmp_path, args, message):
    names = {"TARGET": folder / "target", "NOPE": folder / "nope"}
    out = tmp_path / "sub"
    res = invoke("surrogates", "substitute", "--out", out, "--no-progress", *[names.get(a, a) for a in args])
    one_line_error(res, message)
    assert list(tmp_path.iterdir()) == []


def test_an_unwritable_out_fails_before_any_query(folder, tmp_path):
    (tmp_path / "file").write_text("")
    res = invoke("surrogates", "substitute", "--model", folder / "target", "--out", tmp_path / "file" / "sub")
    one_line_error(res, "file")


def test_bad_info_input_is_one_line(folder):
    one_line_error(invoke("surrogates", "info", folder / "nope", "--model", folder / "target"), "not found")
    one_line_error(invoke("surrogates", "info", folder / "target", "--model", folder / "nope"), "not found")
    res = invoke("surrogates", "info", "--model", folder / "target")
    assert res.exit_code == 2 and "Missing argument 'SPECS...'" in res.output


def test_a_substitute_of_a_served_model_is_charged_what_it_counted(tiny_model, tmp_path):
    pytest.importorskip("fastapi")  # the serve extra
    pytest.importorskip("httpx")
    from rnd.defenses import build_defense
    from rnd.serving.app import create_app
    from rnd.serving.keys import SQLiteKeyStore
    from tests.serving.test_server import Served

    store = SQLiteKeyStore(tmp_path / "keys.sqlite")
    key = store.add("attacker", budget=1_000)
    app = create_app(tiny_model, build_defense("none", tiny_model), name="tiny", keys=store)
    with Served(app) as served:
        res = invoke("surrogates", "substitute", "--url", f"{served.url}/v2/models/tiny", "--key", key,
                     "--out", tmp_path / "sub", "--seed-images", 10, "--rounds", 3, "--epochs", 1,
                     "--no-progress")  # fmt: skip
    assert res.exit_code == 0, res.output
    meta = read_meta(tmp_path / "sub")
    assert meta.metrics["queries"] == 40 and meta.parent == {"target": f"{served.url}/v2/models/tiny"}
    (row,) = store.list()
    assert row["used"] == 40  # the server charged every label the substitute counted
    store.close()
