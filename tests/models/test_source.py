"""`rnd.models.load_model`: one loader for an rnd checkpoint, a TorchScript file and a
`package.module:factory`; the same weights give the same model through all three, and every
kind of bad input is one clear error."""

from __future__ import annotations

import json
import pickle
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from rnd.errors import InputError, RndError
from rnd.models import load_model, model_kind, model_sha256, save_checkpoint, sha256_file
from rnd.models.source import TorchScriptModel, state_dict_sha256

# torch 2.13 marks torch.jit as deprecated; TorchScript files are still what users bring
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")

FACTORY_MODULE = """
import torch
from torch import nn
from rnd.models.registry import build_from_arguments

NOT_CALLABLE = 3


def make():
    return build_from_arguments({arch!r}, {kwargs!r})


def seeded():  # no weights file: the factory builds the same weights every time
    torch.manual_seed(7)
    return make()


class Wide(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(784, 5)

    def forward(self, x):
        return self.fc(x.flatten(1))


def wide():
    return Wide()


def wide_with_attributes():
    m = Wide()
    m.input_shape = (1, 28, 28)
    m.num_classes = 5
    m.class_names = ["a", "b", "c", "d", "e"]
    return m.train()


def not_a_model():
    return "model"


def broken():
    raise RuntimeError("no GPU here")
"""


@pytest.fixture(scope="module")
def sources(tiny_model, tmp_path_factory) -> dict[str, Path]:
    """The tiny model three ways: a checkpoint, a traced TorchScript file with its sidecar, and a
    factory module (its weights: the checkpoint's safetensors)."""
    d = tmp_path_factory.mktemp("byo")
    save_checkpoint(tiny_model, d / "tiny", dataset="fashion-mnist")
    traced = torch.jit.trace(tiny_model, torch.rand(2, 1, 28, 28))
    torch.jit.save(traced, d / "net.pt")
    (d / "net.json").write_text(json.dumps({"input_shape": [1, 28, 28], "num_classes": 10}))
    torch.jit.save(traced, d / "bare.ts")  # no sidecar
    text = FACTORY_MODULE.format(arch=tiny_model.arch_name, kwargs=dict(tiny_model.arch_kwargs))
    (d / "byo_source_nets.py").write_text(textwrap.dedent(text))
    return {
        "dir": d,
        "checkpoint": d / "tiny",
        "torchscript": d / "net.pt",
        "weights": d / "tiny.safetensors",
    }


@pytest.fixture
def on_path(sources, monkeypatch):
    monkeypatch.syspath_prepend(str(sources["dir"]))
    return sources


@pytest.mark.parametrize(
    ("spec", "kind"),
    [
        ("pkg.mod:make", "factory"),
        ("mod:Class.build", "factory"),
        ("dir/mod:make", "checkpoint"),  # a path separator: never an import
        ("net.pt", "torchscript"),
        ("net.TS", "torchscript"),
        ("model.torchscript", "torchscript"),
        ("checkpoints/tiny", "checkpoint"),
        ("tiny.safetensors", "checkpoint"),
    ],
)
def test_spec_detection(spec, kind):
    assert model_kind(spec) == kind


def test_a_torchscript_archive_is_detected_by_content(sources, tmp_path):
    odd = tmp_path / "model.bin"
    odd.write_bytes(sources["torchscript"].read_bytes())
    assert model_kind(odd) == "torchscript"
    pickled = tmp_path / "module.pth"
    torch.save(nn.Linear(2, 2), pickled)  # a torch.save zip is not TorchScript
    assert model_kind(pickled) == "checkpoint"


def test_three_ways_give_the_same_model(on_path, fmnist_test):
    x, _ = fmnist_test.get(torch.arange(16))
    ck, ck_info = load_model(on_path["checkpoint"], device="cpu")
    ts, ts_info = load_model(on_path["torchscript"])
    fa, fa_info = load_model("byo_source_nets:make", weights=on_path["weights"])
    with torch.no_grad():
        ref = ck(x)
        assert torch.equal(ts(x), ref) and torch.equal(fa(x), ref)
    assert [i.kind for i in (ck_info, ts_info, fa_info)] == ["checkpoint", "torchscript", "factory"]
    for model, info in ((ck, ck_info), (ts, ts_info), (fa, fa_info)):
        assert not model.training
        assert info.input_shape == (1, 28, 28) and info.num_classes == 10
        assert model.input_shape == (1, 28, 28) and model.num_classes == 10  # what rnd reads
        seen: list[int] = []  # every kind takes a forward hook (a TorchScript module comes wrapped)
        handle = model.register_forward_hook(lambda _m, _i, out, seen=seen: seen.append(len(out)))
        with torch.no_grad():
            assert torch.equal(model(x), ref)
        handle.remove()
        assert seen == [16]
    assert isinstance(ts, TorchScriptModel) and isinstance(ts.script, torch.jit.ScriptModule)
    # sha256: of the safetensors file (checkpoint and factory weights: the same file), of the .pt
    assert ck_info.sha256 == fa_info.sha256 == sha256_file(on_path["weights"])
    assert ts_info.sha256 == sha256_file(on_path["torchscript"])
    assert ck_info.dataset == "fashion-mnist" and fa_info.dataset == "fashion-mnist"  # the rnd JSON
    assert ts_info.dataset is None
    assert "torchscript" in ts_info.describe() and "10 classes" in ts_info.describe()
    for spec, weights, info in (
        (on_path["checkpoint"], None, ck_info),
        (on_path["torchscript"], None, ts_info),
        ("byo_source_nets:make", on_path["weights"], fa_info),
    ):
        assert model_sha256(spec, weights) == info.sha256  # what a sweep plans with, without a load


def test_factory_without_weights_hashes_its_state_and_leaves_the_global_rng(on_path):
    before = torch.random.get_rng_state()
    model, info = load_model("byo_source_nets:seeded")
    assert torch.equal(torch.random.get_rng_state(), before)
    assert info.sha256 == state_dict_sha256(model) == load_model("byo_source_nets:seeded")[1].sha256
    other = load_model("byo_source_nets:make", weights=on_path["weights"])[0]
    assert state_dict_sha256(other) != info.sha256


def test_metadata_from_attributes_sidecar_and_fields(on_path):
    model, info = load_model("byo_source_nets:wide_with_attributes")
    assert not model.training and info.class_names == ("a", "b", "c", "d", "e") and info.num_classes == 5
    # no attributes: the fields give the shape, the class count is read from the output
    _, info = load_model("byo_source_nets:wide", meta={"input_shape": [1, 28, 28]})
    assert info.num_classes == 5
    _, info = load_model(on_path["dir"] / "bare.ts", meta={"input_shape": [1, 28, 28], "dataset": "x"})
    assert info.num_classes == 10 and info.dataset == "x"


@pytest.mark.parametrize(
    ("spec", "kwargs", "message"),
    [
        ("no_such_pkg_rnd.nets:make", {}, "cannot import 'no_such_pkg_rnd.nets'"),
        ("byo_source_nets:nope", {}, "byo_source_nets has no attribute 'nope'"),
        ("byo_source_nets:NOT_CALLABLE", {}, "is a int, not a callable"),
        ("byo_source_nets:not_a_model", {}, "returned a str, not a torch nn.Module"),
        ("byo_source_nets:broken", {}, "the factory raised RuntimeError: no GPU here"),
        ("byo_source_nets:wide", {}, "no input shape known"),
        (
            "byo_source_nets:wide",
            {"meta": {"input_shape": [1, 28, 28], "num_classes": 10}},
            "the model's output is (1, 5), expected (N, 10)",
        ),
        ("byo_source_nets:wide", {"meta": {"input_shape": [3, 32, 32]}}, "a forward of one zero image"),
        ("byo_source_nets:wide", {"meta": {"input_shape": [0, 28]}}, "input_shape must be"),
        ("byo_source_nets:wide", {"meta": {"colour": "red"}}, "unknown metadata colour"),
    ],
)
def test_bad_factories_are_one_clear_error(on_path, spec, kwargs, message):
    with pytest.raises(InputError) as info:
        load_model(spec, **kwargs)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_weights_that_do_not_fit(on_path, tmp_path):
    wrong = tmp_path / "wrong.safetensors"
    save_file({"fc.weight": torch.zeros(5, 784), "fc.bias": torch.zeros(5)}, str(wrong))
    with pytest.raises(InputError, match=r"do not fit byo_source_nets:make: tensors .*missing"):
        load_model("byo_source_nets:make", weights=wrong)
    state = {
        k: v.clone() for k, v in load_model("byo_source_nets:wide_with_attributes")[0].state_dict().items()
    }
    state["fc.weight"] = torch.zeros(5, 783)
    save_file(state, str(wrong))
    with pytest.raises(InputError, match=r"mis-shaped \(e.g. fc.weight \[5, 783\] vs \[5, 784\]\)"):
        load_model("byo_source_nets:wide_with_attributes", weights=wrong)
    (tmp_path / "text.safetensors").write_text("not tensors")
    with pytest.raises(InputError, match="not a safetensors file"):
        load_model("byo_source_nets:make", weights=tmp_path / "text.safetensors")
    with pytest.raises(InputError, match=r"weights are for a package\.module:factory"):
        load_model(on_path["torchscript"], weights=on_path["weights"])


class _Payload:
    """Unpickling this would create a file; torch.jit.load must never do it."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_a_file_that_is_not_torchscript_is_refused_without_unpickling(tmp_path):
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(InputError, match="is not a TorchScript file"):
        load_model(tmp_path / "text.pt")
    marker = tmp_path / "unpickled"
    torch.save({"x": _Payload(str(marker))}, tmp_path / "pickle.pt")  # a torch.save zip with a payload
    with pytest.raises(InputError, match="is not a TorchScript file"):
        load_model(tmp_path / "pickle.pt")
    assert not marker.exists()
    pickle.loads(pickle.dumps(_Payload(str(marker))))  # the payload works when something does unpickle
    assert marker.exists()
    with pytest.raises(InputError, match="not found"):
        load_model(tmp_path / "missing.pt")


def test_torchscript_without_metadata_and_bad_sidecars(sources, tmp_path):
    with pytest.raises(InputError, match="no input shape known"):
        load_model(sources["dir"] / "bare.ts")
    pt = tmp_path / "net.pt"
    pt.write_bytes(sources["torchscript"].read_bytes())
    (tmp_path / "net.json").write_text("{not json")
    with pytest.raises(InputError, match="is not valid JSON"):
        load_model(pt)
    (tmp_path / "net.json").write_text(json.dumps({"input_shape": [1, 28, 28], "num_classes": 3}))
    with pytest.raises(InputError, match=r"the model's output is \(1, 10\), expected \(N, 3\)"):
        load_model(pt)


def test_a_checkpoint_carries_its_own_metadata(sources):
    with pytest.raises(InputError, match="carries its own metadata"):
        load_model(sources["checkpoint"], meta={"num_classes": 10})
    with pytest.raises(RndError, match="not found"):
        load_model(sources["dir"] / "absent")


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cuda_without_a_gpu_is_an_input_error(sources):
    with pytest.raises(InputError, match="no CUDA GPU"):
        load_model(sources["checkpoint"], device="cuda")
