"""Where models run: one device choice for the whole process (`rnd --device ...`, or per command).

`resolve_device("cpu" | "cuda" | "cuda:N" | "auto")` checks the text and that the device exists
(InputError otherwise: `--device cuda` on a machine without a GPU is one clear line, exit 2);
`auto` is the first CUDA GPU when there is one, else the CPU. `default_device()` is what loaders,
oracles and defenses use when they are not told otherwise; `set_default_device` changes it.
"""

from __future__ import annotations

import logging
import weakref
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from rnd.errors import InputError

log = logging.getLogger(__name__)

DEVICE_CHOICES = "cpu, cuda, cuda:N or auto"
_DEFAULT = torch.device("cpu")


def resolve_device(text: str | torch.device) -> torch.device:
    """The torch device named by `text` (see the module docstring); InputError when it is not one
    this machine has."""
    if isinstance(text, torch.device):
        text = str(text)
    name = str(text).strip().lower()
    if name == "auto":
        return torch.device("cuda:0") if torch.cuda.is_available() else torch.device("cpu")
    if name == "cpu":
        return torch.device("cpu")
    kind, _, index = name.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise InputError(f"unknown device {text!r}; choose {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        raise InputError(f"--device {text}: no CUDA GPU is available on this machine; use --device cpu")
    i = int(index) if index else 0
    if i >= torch.cuda.device_count():
        raise InputError(
            f"--device {text}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
            f"cuda:0..cuda:{torch.cuda.device_count() - 1}"
        )
    return torch.device("cuda", i)


def default_device() -> torch.device:
    """The process-wide device (the CPU unless `set_default_device` said otherwise)."""
    return _DEFAULT


def set_default_device(text: str | torch.device) -> torch.device:
    """Check `text` (`resolve_device`) and make it the process-wide device; returns it."""
    global _DEFAULT
    _DEFAULT = resolve_device(text)
    return _DEFAULT


#: Where `prefer_channels_last` (`rnd.models.load_model`, the commands' loader) uses the layout.
#: CPU: on. oneDNN's convolutions run markedly faster with channels-last weights for the small CNN
#: (bench/layout_speedup.py: batch 64-256, 1 and 2 threads, idle cores) and about as fast for
#: EfficientNet-Lite0 (batch 1 and 8, no loss); the logits differ from the contiguous layout's by
#: float rounding (summation order), so seeded CPU numbers moved once when the commands took it up.
#: CUDA: off (not measured yet).
AUTO_CHANNELS_LAST: dict[str, bool] = {"cpu": True, "cuda": False}
#: Models whose check failed: not tried (nor warned about) again by later oracles.
_CONTIGUOUS_ONLY: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def wrapped_models(model: nn.Module) -> Iterator[nn.Module]:
    """`model`, then the modules it wraps along `.model` / `.module` (a defense's classifier, a
    wrapper's network), at most 8 deep."""
    for _ in range(8):
        yield model
        inner = getattr(model, "model", None) or getattr(model, "module", None)
        if not isinstance(inner, nn.Module):
            return
        model = inner


def network_of(model: nn.Module) -> nn.Module:
    """The classifier a defense wraps: the innermost module along `.model` / `.module`."""
    *_, inner = wrapped_models(model)
    return inner


def use_channels_last(model: nn.Module, input_shape: Sequence[int], device: torch.device) -> bool:
    """Put the 4-D parameters and buffers of `model` (convolution weights) in channels-last layout,
    in place: the values are unchanged, only their order in memory. One forward of the network
    behind the defenses (`network_of`: it draws no noise and records no query) on two zero images
    checks the layout; when it fails (a `.view` of a feature map, an operator without channels-last
    support), the contiguous layout is restored with one warning, and later calls leave that
    model alone. Returns whether `model` is channels-last now; a model with no 4-D tensor is left
    as it is (False)."""
    tensors = [t for t in (*model.parameters(), *model.buffers()) if t.dim() == 4]
    if not tensors or model in _CONTIGUOUS_ONLY:
        return False
    if all(t.is_contiguous(memory_format=torch.channels_last) for t in tensors) and not all(
        t.is_contiguous() for t in tensors
    ):
        return True  # done before (by the loader, or an earlier oracle on this model)
    model.to(memory_format=torch.channels_last)
    try:
        with torch.inference_mode():
            network_of(model)(torch.zeros(2, *input_shape, device=device))
    except Exception as exc:  # whatever the model's own code raises on the new layout
        model.to(memory_format=torch.contiguous_format)
        _CONTIGUOUS_ONLY.add(model)
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        name = type(exc).__name__
        log.warning("the model fails in channels-last layout (%s: %s); kept contiguous", name, first)
        return False
    return True


def prefer_channels_last(
    model: nn.Module, input_shape: Sequence[int], device: torch.device | str | None = None
) -> bool:
    """`use_channels_last` where `AUTO_CHANNELS_LAST` says it pays for the device type (default:
    that of the model's parameters); returns whether `model` is channels-last now."""
    if device is None:
        p = next(model.parameters(), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    return AUTO_CHANNELS_LAST.get(device.type, False) and use_channels_last(model, input_shape, device)
