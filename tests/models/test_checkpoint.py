import json
import pickle

import pytest
import torch

from rnd.errors import CheckpointError, UnknownNameError
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
