"""Checkpoints: weights in safetensors plus a JSON of metadata; loading never unpickles.

`NAME.safetensors` holds the tensors; `NAME.json` holds the architecture and its arguments, the data
set, the training recipe, metrics, the parent checkpoint, and the sha256 of the weights file, which
is verified on every load. Both files are written to temporary names and renamed into place, so an
interrupted save never leaves a half-written checkpoint under the final name.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from rnd._version import __version__
from rnd.device import default_device
from rnd.errors import CheckpointError, RndError
from rnd.models.registry import build_from_arguments

FORMAT = "rnd-checkpoint"
FORMAT_VERSION = 1


@dataclass
class CheckpointMeta:
    """What a checkpoint's JSON records."""

    architecture: str
    arch_kwargs: dict[str, Any]
    dataset: str
    sha256: str = ""
    recipe: dict[str, Any] = field(default_factory=dict)
    metrics: dict[str, Any] = field(default_factory=dict)
    parent: dict[str, Any] | None = None
    rnd_version: str = ""
    created: str = ""
    format: str = FORMAT
    format_version: int = FORMAT_VERSION


def checkpoint_paths(path: str | Path) -> tuple[Path, Path]:
    """(weights, metadata) paths for `path` given with or without the .safetensors suffix."""
    p = Path(path).expanduser()
    if p.suffix in (".safetensors", ".json"):
        p = p.with_suffix("")
    return p.with_name(p.name + ".safetensors"), p.with_name(p.name + ".json")


def check_checkpoint_files(path: str | Path) -> tuple[Path, Path]:
    """(weights, metadata) paths of `path` after checking both exist; the error names the missing one."""
    weights, meta_path = checkpoint_paths(path)
    missing = [p for p in (weights, meta_path) if not p.is_file()]
    base = weights.with_suffix("")
    if len(missing) == 2:
        raise CheckpointError(
            f"checkpoint {base} not found (neither {weights.name} nor {meta_path.name} exists); "
            f"check the path, or train one with `rnd train --out {base}`"
        )
    if missing:
        kind = "weights" if missing[0] == weights else "metadata"
        present = meta_path if missing[0] == weights else weights
        raise CheckpointError(
            f"checkpoint {kind} {missing[0]} is missing (only {present.name} is there); restore the "
            f"file, or retrain with `rnd train --out {base}`"
        )
    return weights, meta_path


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _atomic_write(path: Path, write: Any) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_checkpoint(
    model: nn.Module,
    path: str | Path,
    *,
    dataset: str,
    recipe: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    parent: dict[str, Any] | None = None,
) -> CheckpointMeta:
    """Save a model built by `rnd.models.build_model` to `path` (.safetensors + .json)."""
    arch = getattr(model, "arch_name", None)
    kwargs = getattr(model, "arch_kwargs", None)
    if arch is None or kwargs is None:
        raise CheckpointError("only models built with rnd.models.build_model can be saved")
    weights, meta_path = checkpoint_paths(path)
    weights.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    _atomic_write(weights, lambda tmp: save_file(state, tmp))
    meta = CheckpointMeta(
        architecture=arch,
        arch_kwargs=dict(kwargs),
        dataset=dataset,
        sha256=sha256_file(weights),
        recipe=dict(recipe or {}),
        metrics=dict(metrics or {}),
        parent=parent,
        rnd_version=__version__,
        created=_dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    )

    def write_json(tmp: str) -> None:
        Path(tmp).write_text(json.dumps(meta.__dict__, indent=2, sort_keys=True) + "\n")

    _atomic_write(meta_path, write_json)
    return meta


def read_meta(path: str | Path) -> CheckpointMeta:
    """Read and validate a checkpoint's JSON metadata (does not touch the weights)."""
    weights, meta_path = checkpoint_paths(path)
    if not meta_path.is_file():
        raise CheckpointError(
            f"checkpoint metadata {meta_path} not found (expected beside {weights.name}); restore it, "
            f"or retrain with `rnd train --out {weights.with_suffix('')}`"
        )
    try:
        raw = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"checkpoint metadata {meta_path} is not valid JSON: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path} is not an rnd checkpoint (format != {FORMAT!r})")
    if raw.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{meta_path} has format version {raw.get('format_version')}, this rnd reads {FORMAT_VERSION}"
        )
    known = set(CheckpointMeta.__dataclass_fields__)
    try:
        meta = CheckpointMeta(**{k: v for k, v in raw.items() if k in known})
    except TypeError as exc:
        raise CheckpointError(f"{meta_path} lacks required fields: {exc}") from exc
    for name, kind in (("architecture", str), ("arch_kwargs", dict), ("dataset", str), ("sha256", str)):
        if not isinstance(getattr(meta, name), kind):
            raise CheckpointError(
                f"{meta_path} is damaged: field {name!r} must be a {kind.__name__}, got "
                f"{getattr(meta, name)!r}; restore the file, or retrain"
            )
    return meta


def _state_mismatch(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor]) -> str:
    """A one-line summary of how `found` differs from `expected` in keys and shapes ('' if it fits)."""
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shaped = [k for k in expected if k in found and found[k].shape != expected[k].shape]
    parts = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shaped)):
        if not keys:
            continue
        shown = [
            f"{k} {list(found[k].shape)} vs {list(expected[k].shape)}" if label == "mis-shaped" else k
            for k in keys[:2]
        ]
        more = ", ..." if len(keys) > 2 else ""
        parts.append(f"{len(keys)} {label} (e.g. {', '.join(shown)}{more})")
    return "; ".join(parts)


def load_checkpoint(
    path: str | Path, device: str | torch.device | None = None
) -> tuple[nn.Module, CheckpointMeta]:
    """Load a checkpoint after checking its sha256; returns (model in eval mode, metadata) on
    `device` (default: `rnd.device.default_device()`, what `rnd --device` chose)."""
    if device is None:
        device = default_device()
    weights, meta_path = check_checkpoint_files(path)
    meta = read_meta(path)
    digest = sha256_file(weights)
    if digest != meta.sha256:
        raise CheckpointError(
            f"{weights} is corrupted or was replaced: sha256 {digest[:12]}... does not match the "
            f"metadata's {meta.sha256[:12]}...; retrain or restore the file"
        )
    try:
        state = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"cannot read {weights}: {exc}") from exc
    try:
        # initialising layers draws from torch's global RNG; restore it (weights are loaded next)
        with torch.random.fork_rng(devices=[]):
            model = build_from_arguments(meta.architecture, meta.arch_kwargs)
    except (RndError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{meta_path} asks for an architecture rnd will not build: {exc}; restore the file, or retrain"
        ) from exc
    mismatch = _state_mismatch(model.state_dict(), state)
    if mismatch:
        raise CheckpointError(
            f"{weights} does not fit architecture {meta.architecture!r} of {meta_path.name}: tensors "
            f"{mismatch}; restore the matching pair of files, or retrain"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{weights} does not fit architecture {meta.architecture!r}: {first}") from exc
    return model.to(device).eval(), meta
