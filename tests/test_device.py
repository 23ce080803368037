"""`rnd --device ...`: one process-wide device for every command that runs a model (issue 16)."""

from __future__ import annotations

import pytest
import torch
from click.testing import CliRunner

from rnd.cli import main
from rnd.device import default_device, set_default_device
from rnd.errors import InputError
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


# -- the CPU's channels-last layout (rnd.device.use_channels_last) ----------------------------------
def _layouts(model: torch.nn.Module) -> list[bool]:
    """Per 4-D tensor of `model`: whether it is stored channels-last and not contiguous."""
    return [
        t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()
        for t in (*model.parameters(), *model.buffers())
        if t.dim() == 4
    ]


class _ViewNet(torch.nn.Module):
    """A network that `.view`s its feature map: it runs only in the contiguous layout."""

    input_shape, num_classes = (1, 28, 28), 10

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 28 * 28, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.conv(x)
        return self.fc(z.view(z.shape[0], -1))


def test_the_oracle_puts_a_model_in_channels_last_when_asked_and_answers_as_before(tiny_model, attack_batch):
    """`channels_last=True` stores the convolutions' weights channels-last, in place; the answers
    equal the contiguous model's to float rounding (and their labels exactly, on these images);
    the default leaves the model as it is (a user's model stays savable by safetensors as is)."""
    import copy

    from rnd import Oracle

    x, _ = attack_batch
    flat = copy.deepcopy(tiny_model).to(memory_format=torch.contiguous_format)
    with torch.inference_mode():
        before = flat(x)
    assert not Oracle(flat).channels_last and not any(_layouts(flat))
    oracle = Oracle(flat, channels_last=True)
    assert oracle.channels_last and any(_layouts(flat))
    answers = oracle.query(x, oracle.new_ids(len(x)))
    assert torch.allclose(answers, before.softmax(1), atol=1e-5)
    assert torch.equal(answers.argmax(1), before.argmax(1))
    assert Oracle(flat, channels_last=True).channels_last  # a second oracle on the converted model
    with pytest.raises(InputError, match="channels_last"):
        Oracle(flat, channels_last="auto")


def test_the_layout_check_draws_no_noise_and_records_no_query(tiny_model, attack_batch):
    """The check forwards the network behind the defense, not the defense: a seeded RND answers the
    same noise as with the layout left alone, and Blacklight has stored nothing."""
    import copy

    from rnd import Oracle
    from rnd.defenses import build_defense

    x, _ = attack_batch
    answers = []
    for layout in (False, True):
        net = copy.deepcopy(tiny_model).to(memory_format=torch.contiguous_format)
        oracle = Oracle(build_defense("rnd:nu=0.05", net, seed=3), channels_last=layout)
        assert oracle.channels_last is layout
        answers.append(oracle.query(x, oracle.new_ids(len(x))))
    assert torch.allclose(answers[0], answers[1], atol=1e-5)
    guard = build_defense("blacklight", copy.deepcopy(tiny_model), seed=0)
    assert Oracle(guard, channels_last=True).channels_last and guard.stored == 0


def test_a_model_that_needs_contiguous_maps_stays_contiguous_with_one_warning(caplog, attack_batch):
    from rnd import Oracle

    x, _ = attack_batch
    net = _ViewNet().eval()
    with torch.inference_mode():
        expected = net(x).softmax(1)
    with caplog.at_level("WARNING", logger="rnd.device"):
        oracle = Oracle(net, channels_last=True)
        again = Oracle(net, channels_last=True)
    assert not oracle.channels_last and not again.channels_last and not any(_layouts(net))
    warnings = [r.getMessage() for r in caplog.records if r.name == "rnd.device"]
    assert len(warnings) == 1 and "kept contiguous" in warnings[0]
    assert torch.allclose(oracle.query(x, oracle.new_ids(len(x))), expected)
    mlp = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 10))
    assert not Oracle(mlp, input_shape=(1, 28, 28), num_classes=10, channels_last=True).channels_last


def test_the_commands_loader_prefers_channels_last_on_the_cpu(checkpoint):
    """`load_model` (every command's loader) stores a CPU model channels-last, values unchanged;
    `load_checkpoint` (the Python API's) returns the weights as stored."""
    from rnd.models.source import load_model

    model, info = load_model(str(checkpoint))
    assert any(_layouts(model)) and not any(_layouts(load_checkpoint(checkpoint)[0]))
    state = load_checkpoint(checkpoint)[0].state_dict()
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())  # values unchanged
    assert info.sha256 == load_model(str(checkpoint))[1].sha256
