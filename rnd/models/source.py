"""Model sources: an rnd checkpoint, a TorchScript file, or the user's own factory, loaded one way.

`load_model(spec, weights=None, device=None)` returns (model in eval mode, `ModelInfo`) for any of:

1. an rnd checkpoint: `path/NAME` (or `NAME.safetensors`, `NAME.json`); its JSON carries the
   metadata and the sha256 of the weights, verified on load (`rnd.models.checkpoint`);
2. a TorchScript file `model.pt` / `model.ts` / `model.torchscript` (or any archive made with
   `torch.jit.save`), with its metadata in a sidecar `model.json` beside it;
3. `package.module:factory`, a Python callable (no arguments) returning an `nn.Module`, plus an
   optional `weights` file (safetensors, loaded with `load_state_dict(strict=True)`); metadata
   from the returned module's attributes `input_shape`, `num_classes`, `class_names`, or a
   sidecar JSON beside the weights file.

Spec detection (`model_kind`): `x:y` with a dotted module path on the left, a dotted attribute
on the right and no path separator is a factory; a file ending in .pt, .ts or .torchscript, or an
existing zip archive holding TorchScript's `constants.pkl`, is TorchScript; anything else is a
checkpoint path.

Metadata (sidecar JSON or the `meta` argument, from command-line options or config fields):
`input_shape` (e.g. [1, 28, 28]; required unless the module has it), `num_classes` (inferred from
the output when unknown), `dataset` (optional: the data set it was trained on), `class_names`
(optional). Explicit fields win over the sidecar, which wins over module attributes. The model
takes pixels in [0, 1] and does its own normalisation, as rnd's models do.

What a load executes: a checkpoint is safetensors plus JSON and never unpickles. `torch.jit.load`
does not unpickle arbitrary Python objects either: the archive's `data.pkl`/`constants.pkl` are
read by TorchScript's own C++ unpickler, which rebuilds only tensors, primitive containers and
TorchScript classes (no Python globals, no `__reduce__` calls); the model's code is TorchScript
source compiled and run by the TorchScript interpreter, which can call TorchScript builtins and
registered torch operators only, not arbitrary Python. A factory imports and runs the user's own
Python module, which is what naming it asks for.

A TorchScript module is returned inside `TorchScriptModel`, an ordinary `nn.Module` whose forward
calls it: forward hooks (progress counters, feature taps) and attributes work on it as on any
module, which TorchScript modules refuse.

`ModelInfo.sha256` identifies what was loaded (the `checkpoint_sha256` of a sweep cell):
checkpoint: the sha256 of its safetensors file (as recorded in its JSON); TorchScript: the sha256
of the file; factory: the sha256 of the weights file, or without one, of the module's state_dict
(`state_dict_sha256`: entries in sorted key order, each its key, dtype, shape and raw bytes), so a
factory without weights must build the same weights every time (seed or load them itself).
"""

from __future__ import annotations

import hashlib
import importlib
import json
import os
import re
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from rnd.device import default_device, prefer_channels_last, resolve_device
from rnd.errors import InputError
from rnd.models.checkpoint import (
    _state_mismatch,
    check_checkpoint_files,
    load_checkpoint,
    read_meta,
    sha256_file,
)

ModelKind = Literal["checkpoint", "torchscript", "factory"]
TORCHSCRIPT_SUFFIXES = (".pt", ".ts", ".torchscript")
#: The metadata fields a sidecar JSON (or a config / the command line) may give.
META_FIELDS = ("input_shape", "num_classes", "dataset", "class_names")
_NAME = r"[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*"
_FACTORY = re.compile(rf"^{_NAME}:{_NAME}$")


@dataclass(frozen=True)
class ModelInfo:
    """What rnd knows about a loaded model; `sha256` identifies it (see the module docstring)."""

    kind: ModelKind
    spec: str
    sha256: str
    input_shape: tuple[int, ...]
    num_classes: int
    class_names: tuple[str, ...] | None = None
    dataset: str | None = None
    weights: str | None = None

    def describe(self) -> str:
        """One line: what was loaded, its input and classes, the data set, the sha256."""
        source = self.spec if self.weights is None else f"{self.spec} with weights {self.weights}"
        shape = "x".join(str(s) for s in self.input_shape)
        trained = "" if self.dataset is None else f", trained on {self.dataset}"
        return (
            f"{self.kind} {source}: input {shape}, {self.num_classes} classes{trained}, "
            f"sha256 {self.sha256[:12]}..."
        )


def model_kind(spec: str | Path) -> ModelKind:
    """Which of the three sources `spec` names (the rule is in the module docstring)."""
    text = str(spec)
    if "/" not in text and "\\" not in text and os.sep not in text and _FACTORY.match(text):
        return "factory"
    path = Path(text).expanduser()
    if path.suffix.lower() in TORCHSCRIPT_SUFFIXES:
        return "torchscript"
    if path.suffix not in (".safetensors", ".json") and path.is_file() and _is_torchscript_zip(path):
        return "torchscript"
    return "checkpoint"


def _is_torchscript_zip(path: Path) -> bool:
    """An archive written by `torch.jit.save` (it holds constants.pkl; a `torch.save` zip does not)."""
    try:
        with zipfile.ZipFile(path) as z:
            return any(n.endswith("/constants.pkl") or n == "constants.pkl" for n in z.namelist())
    except (zipfile.BadZipFile, OSError):
        return False


def state_dict_sha256(module: nn.Module) -> str:
    """sha256 of a module's state_dict: entries in sorted key order, each `key`, dtype, shape and
    the tensor's raw bytes (CPU, contiguous), separated by NUL bytes."""
    h = hashlib.sha256()
    state = module.state_dict()
    for key in sorted(state):
        t = state[key].detach().cpu().contiguous()
        h.update(f"{key}\0{t.dtype}\0{list(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def model_sha256(spec: str | Path, weights: str | Path | None = None) -> str:
    """`ModelInfo.sha256` of `spec` without loading it where that is possible (a checkpoint's
    recorded sha256, a file's hash); a factory without weights is built to hash its state."""
    kind = model_kind(spec)
    if kind == "checkpoint":
        _no_weights(spec, weights, kind)
        meta = read_meta(spec)
        if meta.sha256:
            return meta.sha256

        return sha256_file(check_checkpoint_files(spec)[0])
    if kind == "torchscript":
        _no_weights(spec, weights, kind)
        return sha256_file(_existing(spec, "TorchScript file"))
    if weights is not None:
        return sha256_file(_existing(weights, "weights file"))
    return load_model(spec, device="cpu")[1].sha256


def load_model(
    spec: str | Path,
    weights: str | Path | None = None,
    device: str | torch.device | None = None,
    *,
    meta: Mapping[str, Any] | None = None,
) -> tuple[nn.Module, ModelInfo]:
    """Load the model `spec` names (checkpoint, TorchScript file or `module:factory`) on `device`
    [default: `rnd.device.default_device()`], in eval mode, checked to answer one zero image of
    its input shape with (1, num_classes) logits. `weights`: a safetensors file for a factory;
    `meta`: metadata fields that win over the sidecar and the module's attributes.

    Raises InputError (or CheckpointError) with one line saying what is wrong and what to do."""
    where = f"model {spec}"
    dev = default_device() if device is None else resolve_device(device)
    given = check_meta(meta or {}, where)
    kind = model_kind(spec)
    text = str(spec)
    if kind == "checkpoint":
        _no_weights(spec, weights, kind)
        if given:
            raise InputError(
                f"{where} is an rnd checkpoint, which carries its own metadata; drop "
                f"{', '.join(sorted(given))}"
            )
        model, cmeta = load_checkpoint(spec, dev)
        sha, sidecar = cmeta.sha256, {"dataset": cmeta.dataset}
    elif kind == "torchscript":
        _no_weights(spec, weights, kind)
        path = _existing(spec, "TorchScript file")
        model = _load_torchscript(path, dev)
        sha, sidecar = sha256_file(path), read_sidecar(path.with_suffix(".json"))
    else:
        model = _build_factory(text)
        if weights is not None:
            wpath = _existing(weights, "weights file")
            _load_weights(model, wpath, text)
            sha, sidecar = sha256_file(wpath), read_sidecar(wpath.with_suffix(".json"))
        else:
            sha, sidecar = state_dict_sha256(model), {}
        model = model.to(dev)
    model.eval()
    fields = {k: v for k, v in _attributes(model).items() if v is not None}
    fields.update({k: v for k, v in sidecar.items() if v is not None})
    fields.update(given)
    if "input_shape" not in fields:
        raise InputError(
            f"{where}: no input shape known; give input_shape (e.g. [1, 28, 28]) in a sidecar JSON "
            f"beside the file, as a config field or with --input-shape, or set model.input_shape"
        )
    shape = tuple(int(s) for s in fields["input_shape"])
    classes = _check_output(model, shape, fields.get("num_classes"), dev, where)
    names = fields.get("class_names")
    if names is not None and len(names) != classes:
        raise InputError(f"{where}: {len(names)} class_names for {classes} classes; give one name per class")
    _set_attributes(model, shape, classes, names, where)
    if kind == "torchscript":
        model = TorchScriptModel(model, shape, classes, names)
    prefer_channels_last(model, shape, dev)  # the CPU's faster layout (rnd.device); values unchanged
    info = ModelInfo(
        kind=kind,
        spec=text,
        sha256=sha,
        input_shape=shape,
        num_classes=classes,
        class_names=None if names is None else tuple(names),
        dataset=fields.get("dataset"),
        weights=None if weights is None else str(weights),
    )
    return model, info


# -- metadata ---------------------------------------------------------------------------------------
def model_label(spec: str, kind: str) -> str:
    """A model's label in cells and reports: a factory's function name, a file's stem."""
    return spec.rpartition(":")[2] if kind == "factory" else Path(spec).stem


def check_meta(raw: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Validated metadata fields (see META_FIELDS); InputError naming the bad one."""
    unknown = sorted(set(raw) - set(META_FIELDS))
    if unknown:
        raise InputError(f"{where}: unknown metadata {', '.join(unknown)}; known: {', '.join(META_FIELDS)}")
    out: dict[str, Any] = {}
    if raw.get("input_shape") is not None:
        shape = raw["input_shape"]
        if (
            not isinstance(shape, list | tuple)
            or not 1 <= len(shape) <= 4
            or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0 for s in shape)
        ):
            raise InputError(
                f"{where}: input_shape must be 1 to 4 positive integers (C, H, W), got {shape!r}"
            )
        out["input_shape"] = tuple(shape)
    if raw.get("num_classes") is not None:
        n = raw["num_classes"]
        if isinstance(n, bool) or not isinstance(n, int) or n < 2:
            raise InputError(f"{where}: num_classes must be an integer >= 2, got {n!r}")
        out["num_classes"] = n
    if raw.get("dataset") is not None:
        if not isinstance(raw["dataset"], str):
            raise InputError(f"{where}: dataset must be a data set name, got {raw['dataset']!r}")
        out["dataset"] = raw["dataset"]
    if raw.get("class_names") is not None:
        names = raw["class_names"]
        if not isinstance(names, list | tuple) or not all(isinstance(s, str) for s in names):
            raise InputError(f"{where}: class_names must be a list of strings, got {names!r}")
        out["class_names"] = tuple(names)
    return out


def read_sidecar(path: Path) -> dict[str, Any]:
    """The metadata fields of a sidecar JSON ({} when there is none). An rnd checkpoint's JSON
    (beside its safetensors, used as a factory's weights) gives its data set only."""
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InputError(f"metadata {path} is not valid JSON: {exc}; fix or remove it") from exc
    if not isinstance(raw, dict):
        raise InputError(f"metadata {path} must be a JSON object with {', '.join(META_FIELDS)}")
    if raw.get("format") == "rnd-checkpoint":
        raw = {"dataset": raw.get("dataset")}
    return check_meta(raw, f"metadata {path}")


def _attributes(model: nn.Module) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("input_shape", "num_classes", "class_names"):
        try:
            value = getattr(model, name, None)
        except Exception:  # a TorchScript attribute of a type Python cannot see
            value = None
        if value is not None:
            out[name] = list(value) if isinstance(value, tuple | list) else value
    return check_meta(out, "the model's attributes") if out else {}


def _set_attributes(model: nn.Module, shape: tuple[int, ...], classes: int, names: Any, where: str) -> None:
    """Make `input_shape`, `num_classes` (and `class_names`) readable on the model, as rnd's own
    models have them (the oracle, defenses and checks read them)."""
    for name, value in (("input_shape", shape), ("num_classes", classes), ("class_names", names)):
        if value is None:
            continue
        current = getattr(model, name, None)
        if (
            current is not None
            and (tuple(current) if isinstance(current, list | tuple) else current) == value
        ):
            continue
        try:
            setattr(model, name, value)
        except (AttributeError, RuntimeError, TypeError) as exc:
            raise InputError(
                f"{where}: its attribute {name} = {current!r} disagrees with the metadata's {value!r} "
                f"and cannot be changed ({exc}); make them agree"
            ) from exc


def _check_output(
    model: nn.Module, shape: tuple[int, ...], classes: int | None, device: torch.device, where: str
) -> int:
    """Forward one zero image; the number of classes (checked against `classes` when given)."""
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, *shape, device=device))
    except Exception as exc:  # the user's model: any failure means the metadata does not fit it
        lines = [ln.strip() for ln in str(exc).strip().splitlines() if ln.strip()] or [type(exc).__name__]
        # TorchScript's message starts with a banner and a traceback; its last line says what failed
        first = lines[-1] if lines[0].startswith("The following operation failed") else lines[0]
        raise InputError(
            f"{where}: a forward of one zero image of shape {(1, *shape)} failed ({first}); check input_shape"
        ) from exc
    got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    expected = "num_classes" if classes is None else str(classes)
    if not isinstance(out, torch.Tensor) or out.dim() != 2 or out.shape[0] != 1 or out.shape[1] < 2:
        raise InputError(f"the model's output is {got}, expected (N, {expected}); {where} must return logits")
    if classes is not None and out.shape[1] != classes:
        raise InputError(
            f"the model's output is {got}, expected (N, {classes}); fix num_classes or the model ({where})"
        )
    return int(out.shape[1])


# -- the three loaders ------------------------------------------------------------------------------
def _existing(path: str | Path, what: str) -> Path:
    p = Path(path).expanduser()
    if not p.is_file():
        raise InputError(f"{what} {p} not found; check the path")
    return p


def _no_weights(spec: str | Path, weights: str | Path | None, kind: str) -> None:
    if weights is not None:
        raise InputError(
            f"model {spec} is a {kind}, which holds its own weights; weights are for a "
            "package.module:factory model"
        )


class TorchScriptModel(nn.Module):
    """A loaded TorchScript module as a plain `nn.Module`: `forward(x) = script(x)`, with
    `input_shape`, `num_classes` (and `class_names`) as Python attributes. TorchScript modules
    take no forward hooks; this module does."""

    def __init__(
        self, script: nn.Module, input_shape: tuple[int, ...], num_classes: int, class_names: Any = None
    ) -> None:
        super().__init__()
        self.script = script
        self.input_shape = tuple(input_shape)
        self.num_classes = int(num_classes)
        if class_names is not None:
            self.class_names = list(class_names)
        self.train(script.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.script(x)


def _load_torchscript(path: Path, device: torch.device) -> nn.Module:
    try:
        return torch.jit.load(str(path), map_location=device)
    except (RuntimeError, ValueError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(
            f"{path} is not a TorchScript file ({first.split('. ')[0][:120]}); save one with "
            "torch.jit.save(torch.jit.script(model), path), or give an rnd checkpoint"
        ) from exc


def _build_factory(spec: str) -> nn.Module:
    """Import `module`, follow the dotted attribute, call it (the global RNG is left untouched)."""
    module_name, _, attr = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except Exception as exc:  # the user's module: ImportError, or whatever its import raises
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(
            f"model {spec}: cannot import {module_name!r} ({type(exc).__name__}: {first}); check the "
            "module path and that its folder is on PYTHONPATH"
        ) from exc
    for i, part in enumerate(attr.split(".")):
        if not hasattr(obj, part):
            owner = ".".join([module_name, *attr.split(".")[:i]])
            raise InputError(f"model {spec}: {owner} has no attribute {part!r}; check the factory name")
        obj = getattr(obj, part)
    if not callable(obj):
        raise InputError(f"model {spec}: {attr} is a {type(obj).__name__}, not a callable returning a model")
    try:
        with torch.random.fork_rng(devices=[]):
            model = obj()
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"model {spec}: the factory raised {type(exc).__name__}: {first}") from exc
    if not isinstance(model, nn.Module):
        raise InputError(
            f"model {spec}: the factory returned a {type(model).__name__}, not a torch nn.Module"
        )
    return model


def _load_weights(model: nn.Module, path: Path, spec: str) -> None:
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise InputError(
            f"weights {path} are not a safetensors file ({exc}); save them with "
            "safetensors.torch.save_file(model.state_dict(), path)"
        ) from exc
    mismatch = _state_mismatch(model.state_dict(), state)
    if mismatch:
        raise InputError(f"weights {path} do not fit {spec}: tensors {mismatch}; give the matching weights")
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise InputError(f"weights {path} do not fit {spec}: {first}") from exc


__all__ = [
    "META_FIELDS",
    "ModelInfo",
    "ModelKind",
    "check_meta",
    "load_model",
    "model_kind",
    "model_sha256",
    "read_sidecar",
    "state_dict_sha256",
]
