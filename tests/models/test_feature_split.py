"""The features / head split of rnd's models: named hidden layers, `embed` and `head`."""

from pathlib import Path

import pytest
import torch

from rnd.models import ARCHITECTURES, ResNet, build_model, load_checkpoint, save_checkpoint

DEFAULT_CHECKPOINT = Path.home() / ".cache/rnd/checkpoints/fashion-mnist-small-cnn"
SMALL = {"small-cnn": {"width": 4, "hidden": 16}, "resnet8": {"width": 4}, "resnet20": {"width": 4}}


def small(name, shape=(3, 32, 32)):
    return build_model(name, shape, 10, **SMALL.get(name, {})).eval()


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
@pytest.mark.parametrize("shape", [(1, 28, 28), (3, 32, 32)])
def test_head_of_embed_is_the_forward_and_layers_resolve(name, shape):
    model = small(name, shape)
    x = torch.rand(3, *shape)
    with torch.no_grad():
        assert torch.allclose(model.head(model.embed(x)), model(x), atol=1e-5)
        layers = model.feature_layers()
        assert list(layers)[-1] == "penultimate" and len(layers) >= 3
        seen: list[str] = []
        captured: dict[str, torch.Tensor] = {}

        def capture(name):
            def hook(_module, _inputs, out):
                seen.append(name)
                captured[name] = out.clone()

            return hook

        hooks = [model.get_submodule(path).register_forward_hook(capture(n)) for n, path in layers.items()]
        model(x)
        for h in hooks:
            h.remove()
    assert seen == list(layers)  # forward order, each named layer once
    assert torch.allclose(captured["penultimate"], model.embed(x), atol=1e-6)
    assert captured["penultimate"].shape == (3, model.head.in_features)


def test_stage_names_follow_the_architecture():
    assert list(build_model("small-cnn", width=4, hidden=16).feature_layers()) == [
        "stage1",
        "stage2",
        "penultimate",
    ]
    assert list(small("resnet8").feature_layers()) == [
        "stem",
        "stage1",
        "stage2",
        "stage3",
        "penultimate",
    ]
    # a stage without blocks has no name; vgg11's last conv stack ends without a pool
    assert list(ResNet(blocks=(0, 1, 1), width=4).feature_layers()) == [
        "stem",
        "stage2",
        "stage3",
        "penultimate",
    ]
    assert list(small("vgg11").feature_layers())[-2:] == ["stage4", "penultimate"]


@pytest.mark.parametrize("name", sorted(ARCHITECTURES))
def test_state_dict_keys_unchanged_and_checkpoints_round_trip(name, tmp_path):
    model = small(name)
    assert not any(k.startswith("pool.") for k in model.state_dict())  # the split adds no weights
    save_checkpoint(model, tmp_path / "m", dataset="cifar10")
    loaded, _ = load_checkpoint(tmp_path / "m")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
        assert torch.equal(loaded.embed(x), model.embed(x))


@pytest.mark.skipif(not DEFAULT_CHECKPOINT.with_suffix(".json").exists(), reason="no default checkpoint")
def test_default_checkpoint_still_loads_and_splits():
    model, meta = load_checkpoint(DEFAULT_CHECKPOINT)
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.allclose(model.head(model.embed(x)), model(x), atol=1e-5)
    assert meta.architecture == "small-cnn" and model.feature_layers()["penultimate"] == "body.8"
