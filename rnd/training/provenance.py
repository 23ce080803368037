"""Where the attacker's surrogates come from, and how close each stands to the target.

A transfer attack's success says as much about its surrogate as about the defense, so a report
names every surrogate: its architecture, what it was trained on (the public training split, or N
labels the target answered), its size, its test accuracy, its *agreement* with the target (the
fraction of test images on which the two models' clean predictions agree), the queries it cost
(0 for a surrogate trained on public data) and its checkpoint's sha256.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from rnd.data.base import ImageDataset
from rnd.errors import InputError
from rnd.models import load_model, read_meta
from rnd.models.predict import predict
from rnd.training.substitute import SUBSTITUTE_KIND


@dataclass(frozen=True)
class SurrogateProvenance:
    """One surrogate, described against one target on `test_images` images of a test split."""

    spec: str
    architecture: str
    data: str
    parameters: int
    test_accuracy: float
    agreement: float
    queries: int
    sha256: str
    test_images: int
    train_seconds: float | None = None

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


#: (field, header) of the provenance table, in order.
PROVENANCE_COLUMNS: list[tuple[str, str]] = [
    ("spec", "surrogate"),
    ("architecture", "architecture"),
    ("data", "trained on"),
    ("parameters", "parameters"),
    ("test_accuracy", "test acc %"),
    ("agreement", "agreement %"),
    ("queries", "queries"),
    ("train_seconds", "train s"),
    ("sha256", "sha256"),
]


def _described(spec: str, kind: str) -> tuple[str, str, int, float | None]:
    """(architecture, data, queries, training seconds) from a checkpoint's metadata; a model of
    another kind (TorchScript, factory) says only its kind, with data unknown and 0 queries."""
    if kind != "checkpoint":
        return kind, "unknown (not an rnd checkpoint)", 0, None
    meta = read_meta(spec)
    seconds = meta.metrics.get("train_seconds")
    seconds = float(seconds) if isinstance(seconds, int | float) else None
    if meta.recipe.get("kind") == SUBSTITUTE_KIND:
        labels, queries = int(meta.metrics.get("target_labels", 0)), int(meta.metrics.get("queries", 0))
        return meta.architecture, f"{labels} target labels", queries, seconds
    subset = meta.recipe.get("train_images")
    split = f"first {subset} of {meta.dataset} train" if subset else f"{meta.dataset} train split"
    return meta.architecture, split, 0, seconds


def surrogate_provenance(
    specs: Sequence[str | Path],
    target: nn.Module,
    test: ImageDataset,
    n: int | None = None,
    batch_size: int = 500,
) -> list[SurrogateProvenance]:
    """Describe each surrogate spec (anything `rnd.models.load_model` takes) against `target` on the
    first `n` images of `test` (all by default): accuracy and agreement use the clean models."""
    if not specs:
        raise InputError("name at least one surrogate to describe")
    idx = torch.arange(len(test) if n is None else min(n, len(test)))
    x, y = test.get(idx)
    target_pred = predict(target, x, batch_size)
    out = []
    for spec in specs:
        model, info = load_model(str(spec))
        if tuple(info.input_shape) != tuple(x.shape[1:]):
            shape = "x".join(map(str, info.input_shape))
            raise InputError(f"surrogate {spec} takes {shape} inputs, the test images are not that shape")
        arch, data, queries, seconds = _described(str(spec), info.kind)
        pred = predict(model, x, batch_size)
        out.append(
            SurrogateProvenance(
                spec=str(spec),
                architecture=arch,
                data=data,
                parameters=sum(p.numel() for p in model.parameters()),
                test_accuracy=int((pred == y).sum()) / len(idx),
                agreement=int((pred == target_pred).sum()) / len(idx),
                queries=queries,
                sha256=info.sha256,
                test_images=len(idx),
                train_seconds=seconds,
            )
        )
    return out


def provenance_rows(items: Sequence[SurrogateProvenance], short_sha: bool = True) -> list[list[str]]:
    """The table's cells as strings, in `PROVENANCE_COLUMNS` order (percentages to 0.01)."""
    rows = []
    for p in items:
        rows.append(
            [
                p.spec,
                p.architecture,
                p.data,
                f"{p.parameters:,}",
                f"{100 * p.test_accuracy:.2f}",
                f"{100 * p.agreement:.2f}",
                str(p.queries),
                "-" if p.train_seconds is None else f"{p.train_seconds:.0f}",
                p.sha256[:12] + "..." if short_sha else p.sha256,
            ]
        )
    return rows
