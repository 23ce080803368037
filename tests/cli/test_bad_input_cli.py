"""Bad input through the CLI: exit status 2, one error line naming the problem and the way out, before
any work starts (the functions doing the work are replaced by ones that fail the test) and before any
write (every file under the test's folder is byte-identical afterwards, none appears)."""

from __future__ import annotations

import hashlib
import shutil
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from rnd.cli import main
from rnd.cli.app import progress_option
from rnd.evaluation.store import ResultsStore
from rnd.models import build_model, save_checkpoint
from tests.cli.helpers import unprivileged

BIG = str(2**63 - 1)  # int64 max: an unbounded budget / count
HUGE = str(2**64)  # beyond int64


class WorkStarted(Exception):
    """Raised by the stand-ins of the functions that do the real work."""


#: (module, attribute) of every function that starts work a bad input must never reach.
WORK = [
    ("rnd.cli.train", "train_model"),
    ("rnd.cli.train", "adversarial_train"),
    ("rnd.cli.finetune", "finetune_gaussian"),
    ("rnd.evaluation.demo", "accuracy"),
    ("rnd.evaluation.demo", "noisy_accuracy"),
    ("rnd.evaluation.demo", "correctly_classified"),
    ("rnd.training.default", "train_model"),
    ("rnd.evaluation.demo", "execute_cell"),
    ("rnd.evaluation.execute", "execute_cell"),
    ("rnd.evaluation.targets.Workspace", "clean_accuracies"),
    ("rnd.cli.noise_accuracy", "calibrate_defense"),
    ("rnd.cli.noise_accuracy", "compare_models"),
    ("rnd.cli.noise_accuracy", "calibrate_nu"),
    ("rnd.theory.signflip", "sign_flip_probability"),
    ("rnd.theory.convergence", "convergence_experiment"),
    ("rnd.cli.report", "write_report"),
    ("rnd.cli.sweep", "run_sweep"),
]


@pytest.fixture
def no_work(monkeypatch):
    """Any call into the real work fails the command with an exception that is not exit status 2."""

    def refuse(*args, **kwargs):
        raise WorkStarted("work started before the input was validated")

    for module, attr in WORK:
        monkeypatch.setattr(f"{module}.{attr}", refuse)


@pytest.fixture(scope="module")
def models(tiny_model, tmp_path_factory) -> Path:
    """Checkpoints in a folder of their own: the tiny Fashion-MNIST model, the same model labelled as
    trained on `synthetic` (same shape and classes), a 3 x 32 x 32 one and a 5-class one."""
    d = tmp_path_factory.mktemp("bad-input-models")
    save_checkpoint(tiny_model, d / "tiny", dataset="fashion-mnist")
    save_checkpoint(tiny_model, d / "syn", dataset="synthetic")
    rgb = build_model("small-cnn", (3, 32, 32), 10, dataset="cifar10", width=4, hidden=8)
    save_checkpoint(rgb, d / "rgb", dataset="cifar10")
    five = build_model("small-cnn", (1, 28, 28), 5, dataset="fashion-mnist", width=4, hidden=8)
    save_checkpoint(five, d / "five", dataset="fashion-mnist")
    return d


@pytest.fixture
def work(tmp_path, monkeypatch) -> Path:
    """The test's folder, also the working directory and $RND_HOME (default outputs land here)."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("RND_HOME", str(tmp_path / "home"))
    return tmp_path


def snapshot(root: Path) -> dict[str, str]:
    """Every path under `root`, with the sha256 of each file ('dir' for folders)."""
    out = {}
    for p in sorted(root.rglob("*")):
        out[str(p.relative_to(root))] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def bad(root: Path, args: list[str], words: list[str]) -> str:
    """Run `rnd ARGS`; check status 2, one error line holding every word, and no change under root."""
    before = snapshot(root)
    result = CliRunner().invoke(main, [str(a) for a in args])
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert result.exit_code == 2, result.output
    errors = [ln for ln in result.output.splitlines() if ln.startswith(("error: ", "Error: "))]
    assert len(errors) == 1, result.output
    if errors[0].startswith("error: "):  # rnd's own errors: nothing but that line
        assert result.output.strip() == errors[0], result.output
    for w in words:
        assert w in errors[0], f"{w!r} not in {errors[0]!r}"
    assert snapshot(root) == before, "a file was created or changed"
    return errors[0]


# -- 1. where results go is checked before training --------------------------------------------------


@pytest.fixture
def a_file(work) -> Path:
    f = work / "plain.txt"
    f.write_text("not a folder\n")
    return f


def test_train_out_below_a_file(work, a_file, no_work):
    bad(
        work,
        ["train", "--dataset", "synthetic", "--epochs", "1", "--out", a_file / "m"],
        ["below", "is a file"],
    )


def test_train_out_is_a_directory(work, no_work):
    (work / "m.safetensors").mkdir()
    bad(
        work, ["train", "--dataset", "synthetic", "--out", work / "m"], ["is a directory", "give a file path"]
    )


def test_adversarial_train_out_below_a_file(work, a_file, no_work):
    args = [
        "train",
        "--adversarial",
        "--dataset",
        "synthetic",
        "--epochs",
        "1",
        "--out",
        a_file / "sub" / "m",
    ]
    bad(work, args, ["below", "choose a path in a folder"])


def test_train_default_out_below_a_file(work, no_work, monkeypatch):
    (work / "home").write_text("RND_HOME is a file\n")
    bad(work, ["train", "--dataset", "synthetic", "--epochs", "1"], ["below", "home", "is a file"])


def test_finetune_out_below_a_file(work, a_file, models, no_work):
    args = ["finetune", models / "tiny", "--sigma", "0.1", "--out", a_file / "gf"]
    bad(work, args, ["--out", "below", "choose a path in a folder"])


def test_train_out_in_a_read_only_folder(work):
    """Run in a process that respects permissions (as root: without CAP_DAC_OVERRIDE)."""
    ro = work / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    before = snapshot(work)
    try:
        proc = unprivileged(["train", "--dataset", "synthetic", "--out", str(ro / "m")])
    finally:
        ro.chmod(0o755)
    text = proc.stderr.strip()
    assert proc.returncode == 2 and text.startswith("error: ") and "\n" not in text, proc.stderr
    assert "not writable" in text and "writable location" in text, text
    assert snapshot(work) == before


# -- 2. every option is validated before the work starts ---------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--attack", "bogus"], ["unknown attack 'bogus'", "choose one of", "square"]),
        (["--attack", "square", "--attack", "bogus"], ["unknown attack 'bogus'"]),
        (["--nu", "nan"], ["--nu", "not finite", "0 < x"]),
        (["--nu", "inf"], ["--nu", "not finite"]),
        (["--eps", "nan"], ["--eps", "not finite"]),
        (["--eps", "2"], ["--eps", "out of range", "x <= 1"]),
        (["--attack", "nes", "--budget", "10"], ["nes", "costs", "more than --budget 10", "raise it"]),
        (["--images", "20000"], ["--images 20000 exceeds the 10000 test images", "ask for fewer"]),
    ],
)
def test_demo_validates_before_the_accuracy_pass(work, models, no_work, args, words):
    bad(work, ["demo", "--checkpoint", models / "tiny", "--no-progress", *args], words)


def test_demo_asks_for_fewer_images_than_are_correct_before_the_accuracy_pass(work, models, monkeypatch):
    work_done = ("demo.accuracy", "demo.noisy_accuracy", "demo.execute_cell")
    work_done += ("targets.Workspace.clean_accuracies",)
    for attr in work_done:
        monkeypatch.setattr(f"rnd.evaluation.{attr}", _refuse)
    line = bad(work, ["demo", "--checkpoint", models / "tiny", "--images", "9999"], ["classified correctly"])
    assert "ask for --images " in line


def _refuse(*args, **kwargs):
    raise WorkStarted("work started before the input was validated")


def test_demo_without_checkpoint_never_trains_on_bad_input(work, no_work):
    bad(work, ["demo", "--attack", "bogus", "--no-progress"], ["unknown attack 'bogus'"])
    assert not (work / "home").exists()


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--nu", "nan"], ["--nu must be >= 0", "finite"]),
        (["--mu", "nan"], ["--mu must be a finite number"]),
        (["--eps", "inf"], ["--eps must be a finite number"]),
        (["--attack", "nes", "--budget", "10"], ["nes needs 31 queries per step", "raise --budget"]),
        (["--attack", "square", "--attack", "bogus"], ["unknown attack 'bogus'", "choose one of"]),
    ],
)
def test_attack_validates_first(work, models, no_work, args, words):
    bad(work, ["attack", "--checkpoint", models / "tiny", "--no-progress", *args], words)


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["calibrate", "{tiny}", "--max-drop", "nan"], ["--max-drop", "not finite"]),
        (["calibrate", "{tiny}", "--confidence", "1"], ["--confidence", "out of range", "x < 1"]),
        (["calibrate", "{tiny}", "--grid", "0,0.1"], ["--grid values must be > 0", "drop the zeros"]),
        (["accuracy", "{tiny}", "--nu", "nan"], ["--nu", "finite number >= 0"]),
        (["accuracy", "{tiny}", "--plot", "plain.txt/acc.png"], ["--plot", "below", "is a file"]),
        (["theory", "signflip", "--checkpoint", "{tiny}", "--nu", "nan"], ["--nu", "finite numbers"]),
        (["theory", "signflip", "--checkpoint", "{tiny}", "--grid", "0.001", "0.1", BIG], ["STEPS", "1000"]),
        (["theory", "signflip", "--checkpoint", "{tiny}", "--out", "plain.txt"], ["--out", "is a file"]),
        (["theory", "bounds", "--mu", "nan"], ["--mu", "not finite"]),
        (["theory", "bounds", "--plot", "plain.txt/b.png"], ["--plot", "below"]),
        (["theory", "convergence", "--alpha", "0,inf"], ["--alpha", "finite numbers"]),
        (["theory", "convergence", "--out", "plain.txt"], ["--out", "is a file", "folder"]),
    ],
)
def test_accuracy_calibrate_theory_validate_first(work, a_file, models, no_work, args, words):
    bad(work, [a.format(tiny=models / "tiny") for a in args], words)


# -- 3. a checkpoint of another data set ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "model", "words"),
    [
        ("demo", "syn", ["trained on 'synthetic', not on 'fashion-mnist'", "--allow-dataset-mismatch"]),
        ("attack", "syn", ["trained on 'synthetic', not on 'fashion-mnist'", "--allow-dataset-mismatch"]),
        ("attack", "rgb", ["shape (3, 32, 32)", "(1, 28, 28)", "data set it was trained on (cifar10)"]),
        ("attack", "five", ["predicts 5 classes", "has 10", "data set it was trained on"]),
        ("demo", "rgb", ["shape (3, 32, 32)", "data set it was trained on"]),
    ],
)
def test_checkpoint_of_another_data_set_is_refused(work, models, no_work, command, model, words):
    bad(work, [command, "--checkpoint", models / model, "--no-progress"], words)


def test_shape_mismatch_is_refused_even_when_allowed(work, models, no_work):
    args = ["attack", "--checkpoint", models / "rgb", "--allow-dataset-mismatch", "--no-progress"]
    bad(work, args, ["shape (3, 32, 32)"])


def test_allow_dataset_mismatch_runs(work, models):
    result = CliRunner().invoke(
        main,
        [
            "attack",
            "--checkpoint",
            str(models / "syn"),
            "--allow-dataset-mismatch",
            "--attack",
            "square",
            "--nu",
            "0",
            "--images",
            "2",
            "--budget",
            "20",
            "--acc-images",
            "20",
            "--no-progress",
        ],
    )
    assert result.exit_code == 0, result.output


def test_accuracy_of_checkpoints_of_two_data_sets(work, models, no_work):
    bad(work, ["accuracy", models / "tiny", models / "syn"], ["different data sets", "one data set per run"])


# -- 4. bounded numbers ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["demo", "--budget", BIG], ["--budget", "1<=x<=1000000000"]),
        (["demo", "--images", BIG], ["--images", "1<=x<=10000000"]),
        (["demo", "--seed", HUGE], ["--seed", "0<=x<=9223372036854775807"]),
        (["attack", "--budget", BIG], ["--budget must be <= 10**9", "lower it"]),
        (["attack", "--seed", HUGE], ["--seed must be <= 2**63 - 1", "lower it"]),
        (["attack", "--eot", BIG], ["--eot must be <= 10**6"]),
        (["attack", "--images", HUGE], ["--images must be <= 10**7"]),
        (["train", "--dataset", "synthetic", "--epochs", BIG], ["--epochs", "1<=x<=1000000"]),
        (["train", "--dataset", "synthetic", "--seed", HUGE], ["--seed", "0<=x<=9223372036854775807"]),
        (["finetune", "{tiny}", "--sigma", "0.1", "--samples", BIG], ["--samples", "x<=1000000"]),
        (["accuracy", "{tiny}", "--draws", BIG], ["--draws", "1<=x<=1000000"]),
        (["calibrate", "{tiny}", "--images", HUGE], ["--images", "1<=x<=10000000"]),
        (["theory", "signflip", "--draws", BIG], ["--draws", "1<=x<=1000000"]),
        (["theory", "convergence", "--M", f"1,{BIG}"], ["--M", "at most 10**6"]),
        (["theory", "bounds", "--Q", HUGE], ["--Q", "x<=1000000000"]),
    ],
)
def test_integers_are_bounded(work, models, no_work, args, words):
    bad(work, [a.format(tiny=models / "tiny") for a in args], words)


# -- sweeps: validated in the planning step, before a database is opened -------------------------------

SWEEP = """
name = "bad"
budget = 60
[data]
images = 2
start = {start}
accuracy_images = 50
{data_extra}
[defense]
nu = [0.0]
[[models]]
checkpoint = "{ckpt}"
[[attacks]]
name = "square"
norm = "linf"
eps = 0.1
{attack_extra}
"""


def sweep_config(
    work: Path, ckpt: Path, *, start: int = 0, data_extra: str = "", attack_extra: str = ""
) -> Path:
    path = work / "sweep.toml"
    path.write_text(SWEEP.format(ckpt=ckpt, start=start, data_extra=data_extra, attack_extra=attack_extra))
    return path


def sweep_bad(work: Path, config: Path, words: list[str], existing_db: bool = False) -> None:
    """A bad sweep: no database created, or an existing one left byte-identical."""
    db = work / "r.sqlite"
    if existing_db:
        with ResultsStore(db):
            pass
    bad(work, ["--threads", "1", "sweep", config, "--db", db, "--no-progress"], words)
    assert db.exists() == existing_db


@pytest.mark.parametrize("existing_db", [False, True])
def test_sweep_with_too_few_correct_images(work, models, no_work, existing_db):
    config = sweep_config(work, models / "tiny", start=9999)  # one image left from there
    sweep_bad(
        work, config, ["data.images", "classified correctly", "lower data.images or data.start"], existing_db
    )


@pytest.mark.parametrize("existing_db", [False, True])
def test_sweep_with_a_corrupted_checkpoint(work, models, no_work, existing_db):
    for suffix in (".safetensors", ".json"):
        shutil.copy(models / f"tiny{suffix}", work / f"copy{suffix}")
    weights = work / "copy.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF  # the weights changed after the json recorded their sha256
    weights.write_bytes(bytes(data))
    config = sweep_config(work, work / "copy")
    sweep_bad(work, config, ["models[0].checkpoint", "corrupted", "retrain or restore"], existing_db)


def test_sweep_start_past_the_end(work, models, no_work):
    config = sweep_config(work, models / "tiny", start=20000)
    sweep_bad(work, config, ["data.start", "past the end", "choose a start below 10000"])


def test_sweep_with_a_checkpoint_of_another_data_set(work, models, no_work):
    config = sweep_config(work, models / "syn")
    sweep_bad(work, config, ["models[0].checkpoint", "'synthetic'", "data.allow_dataset_mismatch = true"])
    config = sweep_config(work, models / "rgb", data_extra="allow_dataset_mismatch = true")
    sweep_bad(work, config, ["models[0].checkpoint", "shape (3, 32, 32)"])


def test_sweep_allows_another_data_set_when_told(work, models):
    config = sweep_config(work, models / "syn", data_extra="allow_dataset_mismatch = true")
    result = CliRunner().invoke(main, ["sweep", str(config), "--dry-run"])
    assert result.exit_code == 0 and result.output.strip().endswith("1 cells"), result.output


@pytest.mark.parametrize(
    ("edit", "words"),
    [
        ({"attack_extra": "budget = 9223372036854775808"}, ["attacks[0].budget", "<= 10**9", "lower it"]),
        ({"attack_extra": "[attacks.params]\nn_iters = 99999999999999999999"}, ["64 bits", "lower it"]),
        ({"attack_extra": "[attacks.params]\nq = 10"}, ["params.q", "accepted keys:", "n_iters"]),
        ({"start": 10**8}, ["data.start", "<= 10**7"]),
    ],
)
def test_sweep_config_errors_name_the_key(work, models, no_work, edit, words):
    sweep_bad(work, sweep_config(work, models / "tiny", **edit), words)


def test_sweep_config_that_is_a_directory(work, no_work):
    (work / "configs").mkdir()
    sweep_bad(work, work / "configs", ["is a directory", "give the path of a TOML file"])


# -- 5. messages that point the right way ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda w: w / "missing.sqlite", ["not found", "results database written by `rnd sweep`"]),
        (lambda w: (w / "dbdir").mkdir() or w / "dbdir", ["is a directory", "written by `rnd sweep`"]),
        (lambda w: (w / "t.sqlite").write_text("x") and w / "t.sqlite", ["not an SQLite database"]),
    ],
)
def test_report_names_its_argument_not_a_db_option(work, no_work, make, words):
    line = bad(work, ["report", make(work)], words)
    assert "--db" not in line


def test_attack_param_lists_accepted_keys(work, models, no_work):
    bad(
        work,
        ["attack", "--checkpoint", models / "tiny", "--attack", "square", "--param", "q=3"],
        ["unknown --param key 'q'", "accepted keys:", "n_iters"],
    )


# -- 6. progress bars: on only when stderr is a terminal --------------------------------------------------


def test_progress_is_off_when_stderr_is_not_a_terminal():
    @click.command()
    @progress_option
    def cmd(progress: bool) -> None:
        click.echo(f"progress={progress}")

    runner = CliRunner()  # its stderr is not a terminal, as in CI logs or `> file 2>&1`
    assert runner.invoke(cmd, []).output.strip() == "progress=False"
    assert runner.invoke(cmd, ["--progress"]).output.strip() == "progress=True"
    assert runner.invoke(cmd, ["--no-progress"]).output.strip() == "progress=False"


def test_progress_on_a_terminal(monkeypatch, capsys):
    @click.command()
    @progress_option
    def cmd(progress: bool) -> None:
        print(f"progress={progress}")

    class Tty:
        def isatty(self) -> bool:
            return True

        def write(self, s: str) -> int:
            return len(s)

        def flush(self) -> None:
            pass

    monkeypatch.setattr(sys, "stderr", Tty())
    cmd.main([], standalone_mode=False)
    cmd.main(["--no-progress"], standalone_mode=False)
    assert capsys.readouterr().out.split() == ["progress=True", "progress=False"]


@pytest.mark.parametrize(
    "command",
    [
        ["train"],
        ["finetune"],
        ["demo"],
        ["attack"],
        ["accuracy"],
        ["calibrate"],
        ["sweep"],
        ["theory", "signflip"],
        ["surrogates", "train"],
        ["surrogates", "substitute"],
    ],
)
def test_every_long_command_has_no_progress(command):
    result = CliRunner().invoke(main, [*command, "--help"])
    assert result.exit_code == 0 and "--progress / --no-progress" in result.output


@pytest.mark.parametrize("missing", ["json", "safetensors"])
def test_demo_names_the_missing_checkpoint_file(work, models, no_work, missing):
    for suffix in ("json", "safetensors"):
        if suffix != missing:
            shutil.copy(models / f"tiny.{suffix}", work / f"half.{suffix}")
    line = bad(work, ["demo", "--checkpoint", work / "half", "--no-progress"], [f"half.{missing}", "missing"])
    assert "restore the file" in line
