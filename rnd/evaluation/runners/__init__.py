"""Runners: where cells run. `InProcessRunner` (the default) and `RayRunner` (one Ray task per
cell, on this machine or a cluster; Ray itself, the ray extra, is imported only when it runs)
implement `Runner` and register by name in `RUNNERS`.

May import: rnd.evaluation.cells, execute.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from rnd.errors import unknown_name
from rnd.evaluation.runners.base import OnError, OnResult, Runner, torch_threads
from rnd.evaluation.runners.inprocess import InProcessRunner
from rnd.evaluation.runners.ray import RayRunner

RUNNERS: dict[str, Callable[..., Runner]] = {
    "inprocess": InProcessRunner,
    "ray": RayRunner,
}


def make_runner(name: str, **kwargs: Any) -> Runner:
    """Build a registered runner by name ("inprocess", "ray")."""
    if name not in RUNNERS:
        raise unknown_name("runner", name, list(RUNNERS))
    return RUNNERS[name](**kwargs)


__all__ = [
    "RUNNERS",
    "InProcessRunner",
    "OnError",
    "OnResult",
    "RayRunner",
    "Runner",
    "make_runner",
    "torch_threads",
]
