"""Live query progress: an attack reports the queries it has spent to whoever listens, so a long
run's time left is estimated from work done (queries against each cell's budget, images x
per-image budget) rather than from a count of cells whose costs differ a hundredfold.

    with listening(bar.update):   # called with the queries spent since the last report
        attack(oracle, x, y)

Nothing listens by default, and then an attack's loop does no extra work. The listener lives in a
context variable, so it reaches attacks run in this thread (a sweep's in-process runner) and no
others (a Ray task reports only when its cell ends).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

Listener = Callable[[int], object]

_listener: ContextVar[Listener | None] = ContextVar("rnd_query_listener", default=None)


@contextmanager
def listening(callback: Listener) -> Iterator[None]:
    """Within the block, attacks call `callback(n)` with the queries they spent since their last
    report (at most once per step of their loop)."""
    token = _listener.set(callback)
    try:
        yield
    finally:
        _listener.reset(token)


def listener() -> Listener | None:
    """The callback of the innermost `listening` block, or None."""
    return _listener.get()
