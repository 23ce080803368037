"""What a runner is: it only executes cells; the driver (`rnd.evaluation.drive.run_sweep`) owns
the database and the progress bar, so every runner streams results into the same store the same
way:

    runner.run(cells, on_result, on_error)

calls `on_result(CellResult)` as each cell finishes (in any order) and `on_error(cell, exc)` for a
cell that raised after its retries. `cells` is a lazy iterable: taking a cell from it claims that
cell in the database (so that concurrent sweeps share the work), so a runner takes the next cell
only when it has room to start it, never the whole list up front.

May import: rnd.evaluation.cells.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import contextmanager
from typing import Protocol

import torch

from rnd.evaluation.cells import Cell, CellResult

OnResult = Callable[[CellResult], None]


OnError = Callable[[Cell, BaseException], None]


class Runner(Protocol):
    """Executes cells and reports each outcome through the callbacks (the driver stores them)."""

    name: str

    def run(self, cells: Iterable[Cell], on_result: OnResult, on_error: OnError) -> None: ...


@contextmanager
def torch_threads(n: int | None):
    """Temporarily set torch's CPU threads (None: leave as is)."""
    if n is None:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)
