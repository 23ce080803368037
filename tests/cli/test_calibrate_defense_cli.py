"""`rnd calibrate --defense NAME[:params] --param NAME`: any defense's strength for an accuracy budget."""

import json

import pytest
from click.testing import CliRunner

from rnd.cli import main
from rnd.defenses import DefenseSpec, build_defense
from rnd.models import save_checkpoint


@pytest.fixture(scope="module")
def checkpoint(tiny_model, tmp_path_factory):
    path = tmp_path_factory.mktemp("cal") / "tiny"
    save_checkpoint(tiny_model, path, dataset="fashion-mnist", recipe={"kind": "standard"})
    return path


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


FAST = ("--refine", 0, "--draws", 3, "--images", 300, "--no-progress")


def test_feature_noise_prints_sigma_and_the_spec(checkpoint, tiny_model):
    result = run(
        "calibrate", checkpoint, "--defense", "feature-noise", "--grid", "0.05,50", "--max-drop", 3, *FAST
    )
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[1].startswith("sigma = 0.05: accuracy") and "upper 95 % bound" in lines[1]
    assert lines[2].startswith("next sigma = 50 exceeds the budget")
    assert lines[-1] == "spec: feature-noise:sigma=0.05"
    spec = lines[-1].removeprefix("spec: ")
    assert DefenseSpec.parse(spec).params == {"sigma": 0.05}
    build_defense(spec, tiny_model)


def test_json_names_the_parameter_and_the_spec(checkpoint):
    result = run(
        "calibrate", checkpoint, "--defense", "feature-noise:layers=stages", "--param", "sigma",
        "--grid", "0.001", "--grid", "50", "--max-drop", 3, "--json", *FAST,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    cal = json.loads(result.stdout)
    assert cal["param"] == "sigma" and cal["defense"] == "feature-noise:layers=stages"
    assert cal["spec"] == "feature-noise:layers=stages,sigma=0.001" and cal["value"] == 0.001
    assert cal["chosen"]["upper"] <= 3 < cal["next_over"]["upper"]


def test_default_is_rnd_nu_with_its_spec(checkpoint):
    result = run("calibrate", checkpoint, "--grid", "0.05,0.6", "--max-drop", 3, *FAST)
    assert result.exit_code == 0, result.output
    assert "nu = 0.05: accuracy" in result.output and result.stdout.splitlines()[-1] == "spec: rnd:nu=0.05"
    as_json = json.loads(
        run("calibrate", checkpoint, "--grid", "0.05,0.6", "--max-drop", 3, "--json", *FAST).output
    )
    assert as_json["nu"] == 0.05 and "param" not in as_json  # the RND record keeps its fields


def test_low_confidence_tau_when_nothing_fits(checkpoint):
    result = run(
        "calibrate", checkpoint, "--defense", "low-confidence:nu=0.6", "--param", "tau",
        "--grid", "1", "--max-drop", 0.5, *FAST,
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "no tau on the grid keeps the drop within 0.5 points: at tau=1 the drop is" in result.output
    assert result.stdout.rstrip().endswith("tau = 0 (no low-confidence)")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--defense", "nope"], "unknown defense 'nope'; choose one of:"),
        (
            ["--defense", "feature-noise", "--param", "nu"],
            "no public parameter 'nu' to calibrate; choose one of: sigma",
        ),
        (["--defense", "rnd:nu=0.1"], "fixes nu; leave it out"),
        (["--defense", "rnd:nu"], "is not key=value"),
        (["--defense", "low-confidence:nu=0.1", "--param", "temperature"], "no default grid"),
        (["--defense", "feature-noise", "--grid", "0,1"], "--grid values must be > 0 (sigma = 0"),
    ],
)
def test_bad_input_is_one_line_exit_2_before_any_work(checkpoint, monkeypatch, args, words):
    def refuse(*_a, **_k):
        raise AssertionError("work started before the input was checked")

    for name in ("calibrate_nu", "calibrate_defense", "load_checkpoint"):
        monkeypatch.setattr(f"rnd.cli.noise_accuracy.{name}", refuse)
    result = run("calibrate", checkpoint, *args)
    assert result.exit_code == 2, result.output
    message = result.stderr.strip()
    assert "\n" not in message and words in message, message


def test_a_bad_fixed_parameter_is_refused_before_measuring(checkpoint, monkeypatch):
    def refuse(*_a, **_k):
        raise AssertionError("measured before the spec was checked")

    monkeypatch.setattr("rnd.audit.calibration.measure_defense_drop", refuse)
    result = run("calibrate", checkpoint, "--defense", "feature-noise:layers=stage9", *FAST)
    assert (
        result.exit_code == 2
        and "no feature layer 'stage9'; choose from: stage1, stage2, penultimate" in result.stderr
    )


def test_your_own_model_calibrates_as_its_checkpoint_does(checkpoint, tiny_model, tmp_path):
    """`rnd calibrate MODEL` takes a TorchScript file or a factory like a checkpoint: the same
    weights give the same measurements; the data set is the model's, else --dataset's."""
    import sys

    import torch
    from safetensors.torch import save_file

    traced = tmp_path / "net.pt"
    torch.jit.save(torch.jit.trace(tiny_model, torch.rand(2, 1, 28, 28)), traced)
    arch, kwargs = tiny_model.arch_name, dict(tiny_model.arch_kwargs)
    (tmp_path / "calnets.py").write_text(
        "from rnd.models.registry import build_from_arguments\n"
        f"def make():\n    return build_from_arguments({arch!r}, {kwargs!r})\n"
    )
    save_file(tiny_model.state_dict(), str(tmp_path / "w.safetensors"))
    args = ("--grid", "0.01,0.05,0.2", "--max-drop", 3, *FAST, "--json")
    want = json.loads(run("calibrate", checkpoint, *args).stdout)
    sys.path.insert(0, str(tmp_path))
    try:
        for model in (
            [traced, "--input-shape", "1,28,28", "--num-classes", 10],
            ["calnets:make", "--weights", tmp_path / "w.safetensors", "--dataset", "fashion-mnist"],
        ):
            res = run("calibrate", *model, *args)
            assert res.exit_code == 0, res.output
            assert json.loads(res.stdout) == want
        bad = run("calibrate", checkpoint, "--weights", tmp_path / "w.safetensors", *FAST)
        assert bad.exit_code == 2 and "holds its own weights" in bad.output
        bare = run("calibrate", traced, *FAST)  # a TorchScript file without its shape
        assert bare.exit_code == 2 and "no input shape known" in bare.output
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("calnets", None)


def test_a_torchscript_model_counts_its_images_as_a_checkpoint_does(checkpoint, tiny_model, tmp_path):
    """The progress counter counts the images forwarded through the model (a forward hook): a
    TorchScript file, loaded as an nn.Module wrapper, counts the same images as its checkpoint."""
    import re

    import torch

    traced = tmp_path / "net.pt"
    torch.jit.save(torch.jit.trace(tiny_model, torch.rand(2, 1, 28, 28)), traced)
    args = ("--grid", "0.01,0.05", "--max-drop", 3, "--refine", 0, "--draws", 3, "--images", 300)
    args = (*args, "--progress")

    def counted(*model) -> int:
        res = run("calibrate", *model, *args)
        assert res.exit_code == 0, res.output
        return int(re.findall(r"calibrate: (\d+)img", res.output)[-1])

    want = counted(checkpoint)
    assert want >= 300 * 3  # at least one value measured with 3 draws of 300 images
    assert counted(traced, "--input-shape", "1,28,28", "--num-classes", 10) == want


def test_the_counter_never_changes_what_the_model_answers(tiny_model, monkeypatch):
    """tqdm's update returns True when it redraws; a forward hook's return value replaces the
    output, so the counting hook must return nothing (here every update redraws)."""
    import torch

    import rnd.cli.noise_accuracy as cli_mod

    class Redrawing:
        def __init__(self, **_):
            self.n = 0

        def __enter__(self):
            return self

        def __exit__(self, *_):
            return False

        def update(self, k):
            self.n += k
            return True

    monkeypatch.setattr(cli_mod, "tqdm", Redrawing)
    x = torch.rand(5, 1, 28, 28)
    want = tiny_model(x)
    with cli_mod.forward_progress([tiny_model], "calibrate", True):
        got = tiny_model(x)
    assert isinstance(got, torch.Tensor) and torch.equal(got, want)
