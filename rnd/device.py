"""Where models run: one device choice for the whole process (`rnd --device ...`, or per command).

`resolve_device("cpu" | "cuda" | "cuda:N" | "auto")` checks the text and that the device exists
(InputError otherwise: `--device cuda` on a machine without a GPU is one clear line, exit 2);
`auto` is the first CUDA GPU when there is one, else the CPU. `default_device()` is what loaders,
oracles and defenses use when they are not told otherwise; `set_default_device` changes it.
"""

from __future__ import annotations

import torch

from rnd.errors import InputError

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
