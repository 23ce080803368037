"""The default runner: cells one after another in this process, through `execute_cell`."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from rnd.errors import RndError
from rnd.evaluation.cells import Cell
from rnd.evaluation.execute import execute_cell
from rnd.evaluation.runners.base import OnError, OnResult, torch_threads


@dataclass
class InProcessRunner:
    """Runs cells one after another in this process (the default runner).

    Args:
        threads: torch CPU threads while running (None: keep the current setting).
        stop_on_error: re-raise a cell's exception instead of reporting it and going on.
    """

    threads: int | None = None
    stop_on_error: bool = False
    name: str = "inprocess"

    def run(self, cells: Iterable[Cell], on_result: OnResult, on_error: OnError) -> None:
        with torch_threads(self.threads):
            for cell in cells:
                try:
                    result = execute_cell(cell)
                except (RndError, RuntimeError, ValueError) as exc:
                    if self.stop_on_error:
                        raise
                    on_error(cell, exc)
                    continue
                on_result(result)
