"""`rnd --device ...`: one process-wide device for every command that runs a model (issue 16)."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from rnd.cli import main
from rnd.device import default_device, set_default_device
from rnd.models import load_checkpoint, save_checkpoint

NO_GPU = not torch.cuda.is_available()


@pytest.fixture(autouse=True)
def _restore_default_device():
    yield
    set_default_device("cpu")


@pytest.fixture(scope="module")
def checkpoint(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("ck") / "tiny"
    save_checkpoint(tiny_model, path, dataset="fashion-mnist", recipe={"kind": "test"})
    return path


def demo(checkpoint, *pre: str, db=None) -> object:
    args = [*pre, "demo", "--checkpoint", str(checkpoint), "--images", "4", "--budget", "40"]
    return CliRunner().invoke(main, [*args, "--attack", "square", "--no-progress", "--json"])


@pytest.mark.skipif(not NO_GPU, reason="checks the error on a machine without a GPU")
@pytest.mark.parametrize("device", ["cuda", "cuda:7"])
def test_missing_gpu_is_one_line_exit_2(checkpoint, device):
    result = demo(checkpoint, "--device", device)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --device cuda") and "--device cpu" in lines[0]


@pytest.mark.skipif(not NO_GPU, reason="checks the error on a machine without a GPU")
def test_missing_gpu_attack_writes_nothing(checkpoint, tmp_path):
    out = tmp_path / "out"
    args = ["--device", "cuda:7", "attack", "--checkpoint", str(checkpoint), "--attack", "square"]
    result = CliRunner().invoke(main, [*args, "--images", "4", "--budget", "40", "--db", str(out / "r.db")])
    assert result.exit_code == 2, result.output
    assert len(result.output.strip().splitlines()) == 1, result.output
    assert not out.exists() and not list(tmp_path.iterdir())


def test_unknown_device_is_one_line_exit_2(checkpoint):
    result = demo(checkpoint, "--device", "tpu")
    assert result.exit_code == 2 and "unknown device 'tpu'" in result.output, result.output


def test_auto_picks_the_cpu_without_a_gpu(checkpoint):
    result = CliRunner().invoke(main, ["--device", "auto", "theory", "bounds", "--l0", "2", "--d", "100"])
    assert result.exit_code == 0, result.output
    assert default_device() == (torch.device("cuda:0") if not NO_GPU else torch.device("cpu"))


def test_device_cpu_gives_the_same_numbers_as_no_option(checkpoint):
    plain = demo(checkpoint)
    cpu = demo(checkpoint, "--device", "cpu")
    assert plain.exit_code == 0 and cpu.exit_code == 0, plain.output + cpu.output
    assert plain.output == cpu.output


def test_load_checkpoint_follows_the_default_device(checkpoint):
    model, _ = load_checkpoint(checkpoint)
    assert next(model.parameters()).device == torch.device("cpu")
    if not NO_GPU:
        set_default_device("cuda")
        model, _ = load_checkpoint(checkpoint)
        assert next(model.parameters()).device.type == "cuda"
