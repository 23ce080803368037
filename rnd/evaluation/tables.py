"""Plain-text and markdown tables from lists of dataclasses or dicts."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any


def _cell(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "-"
        return f"{v:.4g}" if abs(v) < 1e4 else f"{v:.0f}"
    return str(v)


def as_rows(items: Sequence[Any]) -> list[dict[str, Any]]:
    return [dataclasses.asdict(i) if dataclasses.is_dataclass(i) else dict(i) for i in items]


def format_table(
    items: Sequence[Any], columns: Sequence[tuple[str, str]] | None = None, markdown: bool = False
) -> str:
    """Render rows as an aligned text table (or markdown). `columns` = [(key, header), ...]."""
    rows = as_rows(items)
    if columns is None:
        columns = [(k, k) for k in (rows[0] if rows else {})]
    cells = [[_cell(r.get(k, "")) for k, _ in columns] for r in rows]
    heads = [h for _, h in columns]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, h in enumerate(heads)]
    if markdown:
        line = lambda vals: "| " + " | ".join(v.ljust(w) for v, w in zip(vals, widths, strict=True)) + " |"  # noqa: E731
        sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
        return "\n".join([line(heads), sep, *(line(c) for c in cells)])
    line = lambda vals: "  ".join(v.rjust(w) for v, w in zip(vals, widths, strict=True))  # noqa: E731
    return "\n".join([line(heads), "  ".join("-" * w for w in widths), *(line(c) for c in cells)])
