import json
import pickle

import pytest
import torch

from rnd.errors import CheckpointError, InputError, UnknownNameError
from rnd.models import ARCHITECTURES, build_model, load_checkpoint, read_meta, save_checkpoint


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_architectures_forward(name, shape):
    model = build_model(name, shape, 10)
    assert model(torch.rand(2, *shape)).shape == (2, 10)
    assert model.input_shape == shape and model.num_classes == 10


def test_unknown_model():
    with pytest.raises(UnknownNameError, match="small-cnn"):
        build_model("alexnet")


def test_roundtrip(tmp_path):
    model = build_model("small-cnn", dataset="fashion-mnist", width=4, hidden=8)
    meta = save_checkpoint(
        model, tmp_path / "m", dataset="fashion-mnist", recipe={"kind": "x"}, metrics={"a": 1}
    )
    loaded, meta2 = load_checkpoint(tmp_path / "m.safetensors")
    x = torch.rand(3, 1, 28, 28)
    assert torch.allclose(loaded(x), model.eval()(x))
    assert meta2.sha256 == meta.sha256 and meta2.recipe == {"kind": "x"}
    assert json.loads((tmp_path / "m.json").read_text())["architecture"] == "small-cnn"
    assert not list(tmp_path.glob("*.tmp"))


@pytest.fixture
def saved(tmp_path):
    model = build_model("small-cnn", width=4, hidden=8)
    save_checkpoint(model, tmp_path / "m", dataset="fashion-mnist")
    return tmp_path / "m"


def test_wrong_sha(saved):
    weights = saved.with_suffix(".safetensors")
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(saved)


def test_truncated_with_updated_sha(saved):
    weights = saved.with_suffix(".safetensors")
    weights.write_bytes(weights.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="sha256"):
        load_checkpoint(saved)
    # even with metadata claiming the truncated hash, loading fails cleanly
    meta = json.loads(saved.with_suffix(".json").read_text())
    import hashlib

    meta["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    saved.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(saved)


def test_pickle_is_never_loaded(saved, tmp_path):
    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('unpickled!')",))

    weights = saved.with_suffix(".safetensors")
    weights.write_bytes(pickle.dumps(Boom()))
    meta = json.loads(saved.with_suffix(".json").read_text())
    import hashlib

    meta["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
    saved.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError):
        load_checkpoint(saved)


def test_missing_and_bad_metadata(saved, tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nothing")
    saved.with_suffix(".json").write_text("{not json")
    with pytest.raises(CheckpointError, match="JSON"):
        read_meta(saved)
    saved.with_suffix(".json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(CheckpointError, match="not an rnd checkpoint"):
        read_meta(saved)


def test_unknown_architecture_in_metadata(saved):
    meta = json.loads(saved.with_suffix(".json").read_text())
    meta["architecture"] = "mystery-net"
    saved.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="mystery-net"):
        load_checkpoint(saved)


def test_weights_of_other_architecture(saved):
    meta = json.loads(saved.with_suffix(".json").read_text())
    meta["arch_kwargs"]["width"] = 16
    saved.with_suffix(".json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="does not fit"):
        load_checkpoint(saved)


def test_load_does_not_touch_global_rng(saved):
    torch.manual_seed(11)
    expected = torch.rand(3)
    torch.manual_seed(11)
    load_checkpoint(saved)
    assert torch.equal(torch.rand(3), expected)


# -- absurd or damaged metadata: one CheckpointError line naming the file and the way out ----------
def _set_meta(saved, **fields):
    path = saved.with_suffix(".json")
    meta = json.loads(path.read_text())
    kwargs = fields.pop("arch_kwargs", {})
    meta.update(fields)
    if isinstance(kwargs, dict) and isinstance(meta["arch_kwargs"], dict):
        meta["arch_kwargs"].update(kwargs)
    else:
        meta["arch_kwargs"] = kwargs
    path.write_text(json.dumps(meta))


def _assert_one_line(info, *words):
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    for word in words:
        assert word in message, message


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"num_classes": -3}, ["num_classes must be in [2, 100000], got -3"]),
        ({"num_classes": 0}, ["num_classes", "got 0"]),
        ({"num_classes": "10"}, ["num_classes must be an integer"]),
        ({"num_classes": True}, ["num_classes must be an integer"]),
        ({"input_shape": [28, 28]}, ["input_shape must be a list of 3 integers"]),
        ({"input_shape": [1, 28, -28]}, ["input_shape[2]"]),
        ({"input_shape": [1, 28.0, 28]}, ["input_shape[1] must be an integer"]),
        ({"width": 10**9}, ["width must be in [1, 4096]"]),
        ({"width": 4096, "hidden": 65536}, ["parameters", "GB of float32", "above the cap of 100,000,000"]),
        ({"input_shape": [1, 4096, 4096], "hidden": 128}, ["above the cap"]),
        ({"mystery": 1}, ["no argument(s) mystery", "it takes: input_shape"]),
        ({"blocks": [3, 3, 3]}, ["no argument(s) blocks"]),  # resnet's, not small-cnn's
        ({"std": [0.0]}, ["std must hold positive finite numbers"]),
        ({"mean": [0.1, 0.2]}, ["mean must be a list of 1 numbers"]),
        ([1, 2], ["field 'arch_kwargs' must be a dict"]),
    ],
)
def test_absurd_architecture_arguments_are_refused_before_building(saved, kwargs, words):
    _set_meta(saved, arch_kwargs=kwargs)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(saved)
    _assert_one_line(info, str(saved.with_suffix(".json")), *words, "restore the file, or retrain")


def test_non_string_architecture_is_refused(saved):
    _set_meta(saved, architecture=["small-cnn"])
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(saved)
    _assert_one_line(info, "field 'architecture' must be a str")


def test_parameter_cap_applies_to_every_build(saved, monkeypatch):
    from rnd.models import registry

    monkeypatch.setattr(registry, "MAX_PARAMETERS", 1000)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(saved)
    _assert_one_line(info, "above the cap of 1,000")
    with pytest.raises(InputError, match="above the cap of 1,000"):
        build_model("vgg11", (3, 32, 32), 10)


def test_build_model_checks_its_arguments():
    with pytest.raises(InputError, match="num_classes"):
        build_model("small-cnn", (1, 28, 28), 0)
    with pytest.raises(InputError, match="no argument"):
        build_model("vgg11", config="vgg-small")
    model = build_model("resnet8", (3, 32, 32), 10, width=4)  # defaults and valid values still build
    assert model.arch_kwargs == {"input_shape": [3, 32, 32], "num_classes": 10, "width": 4}


def test_missing_metadata_or_weights_names_the_missing_file(saved):
    weights, meta = saved.with_suffix(".safetensors"), saved.with_suffix(".json")
    kept = meta.read_bytes()
    meta.unlink()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(saved)
    _assert_one_line(info, f"checkpoint metadata {meta} is missing", "only m.safetensors", "rnd train --out")
    meta.write_bytes(kept)
    weights.unlink()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(saved)
    _assert_one_line(info, f"checkpoint weights {weights} is missing", "only m.json", "restore")
    meta.unlink()
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(saved)
    _assert_one_line(info, "not found", "neither m.safetensors nor m.json")


def _resave_weights(saved, state):
    import hashlib

    from safetensors.torch import save_file

    weights = saved.with_suffix(".safetensors")
    save_file(state, str(weights))
    _set_meta(saved, sha256=hashlib.sha256(weights.read_bytes()).hexdigest())


def test_state_dict_mismatch_is_summarised_in_one_line(saved):
    from safetensors.torch import load_file

    state = load_file(str(saved.with_suffix(".safetensors")))
    extra = {**state, "extra.a": torch.zeros(1), "extra.b": torch.zeros(1), "extra.c": torch.zeros(1)}
    del extra["body.0.weight"]
    _resave_weights(saved, extra)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(saved)
    _assert_one_line(
        info, "1 missing (e.g. body.0.weight)", "3 unexpected (e.g. extra.a, extra.b, ...)", "matching pair"
    )
    _resave_weights(saved, state)
    _set_meta(saved, arch_kwargs={"width": 16})
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(saved)
    _assert_one_line(info, "5 mis-shaped (e.g. body.0.weight [4, 1, 3, 3] vs [16, 1, 3, 3]")
    assert "size mismatch" not in str(info.value)  # not torch's multi-line diff


def test_every_architecture_argument_is_validated():
    """A new architecture argument needs a check in check_arch_kwargs (type, range) before use."""
    from rnd.models.registry import VALIDATED_ARGUMENTS, arch_arguments

    for name in ARCHITECTURES:
        assert set(arch_arguments(name)) <= VALIDATED_ARGUMENTS, name
