"""The VGG family, and VGG-16 as the paper's CIFAR-10 model."""

import itertools

import pytest
import torch
from torch import nn

from rnd.errors import InputError
from rnd.models import ARCHITECTURES, MAX_PARAMETERS, build_model
from rnd.models.registry import check_arch_kwargs
from rnd.models.vgg import CONFIGS

#: kuangliu/pytorch-cifar's VGG('VGG16') has the same count: 13 convs with BN, 512 -> 10 head.
VGG16_CIFAR_PARAMETERS = 14_728_266


def _count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_vgg16_is_configuration_d_with_batchnorm_and_a_linear_head():
    assert "vgg16" in ARCHITECTURES
    model = build_model("vgg16", (3, 32, 32), 10, dataset="cifar10")
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [64, 64, 128, 128, 256, 256, 256, 512, 512, 512, 512, 512, 512]
    assert all(c.kernel_size == (3, 3) and c.padding == (1, 1) for c in convs)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == 13
    assert sum(isinstance(m, nn.MaxPool2d) for m in model.modules()) == 5
    assert CONFIGS["vgg16"].count("M") == 5
    assert isinstance(model.head, nn.Linear)
    assert (model.head.in_features, model.head.out_features) == (512, 10)
    # the hand count: conv weights + biases, BN scale + shift, head
    chans = [3, *(c.out_channels for c in convs)]
    expected = sum(9 * a * b + b + 2 * b for a, b in itertools.pairwise(chans)) + 512 * 10 + 10
    assert _count(model) == expected == VGG16_CIFAR_PARAMETERS < MAX_PARAMETERS


def test_vgg16_forward_on_cifar_shapes_and_its_stages():
    model = build_model("vgg16", (3, 32, 32), 10, dataset="cifar10").eval()
    with torch.no_grad():
        out = model(torch.rand(3, 3, 32, 32))
        assert out.shape == (3, 10) and torch.isfinite(out).all()
        assert model.embed(torch.rand(2, 3, 32, 32)).shape == (2, 512)
    assert list(model.feature_layers()) == [f"stage{k}" for k in range(1, 6)] + ["penultimate"]
    assert model.arch_name == "vgg16" and model.arch_kwargs["input_shape"] == [3, 32, 32]


def test_vgg16_passes_the_registry_checks_and_rejects_too_small_inputs():
    out = check_arch_kwargs("vgg16", {"input_shape": [3, 32, 32], "num_classes": 10})
    assert out["num_classes"] == 10
    with pytest.raises(InputError, match="width"):  # vgg has no width argument
        check_arch_kwargs("vgg16", {"width": 8})
    # 28x28 (Fashion-MNIST) still ends at 1x1: the pools round up (28-14-7-4-2-1)
    assert build_model("vgg16", (1, 28, 28), 10)(torch.rand(1, 1, 28, 28)).shape == (1, 10)
    with pytest.raises(InputError, match="too small") as info:
        build_model("vgg11", (3, 4, 4), 10)  # three floor pools: 4-2-1-0
    assert "\n" not in str(info.value)


def test_older_vgg_configs_keep_their_floor_pools():
    """vgg-small / vgg11 checkpoints trained before vgg16 answer as before (28x28 ends at 3x3)."""
    model = build_model("vgg11", (1, 28, 28), 10)
    assert all(not m.ceil_mode for m in model.modules() if isinstance(m, nn.MaxPool2d))
    assert model.body[:-2](torch.rand(1, 1, 28, 28)).shape[-2:] == (3, 3)
