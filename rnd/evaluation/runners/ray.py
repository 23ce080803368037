"""The Ray runner: one Ray task per sweep cell, on a local Ray instance or on a cluster.

Each task runs `rnd.evaluation.execute.execute_cell` (a pure function of the cell, seeded from it) in
a Ray worker process with `threads_per_worker` torch threads, so a cell gives the same numbers as
in the in-process runner. Results come back to the driver as they finish (`ray.wait`) and are
handed to `on_result` there: the driver alone writes the results database, workers never touch it.
At most `workers` tasks are in flight at a time.

Retries (per task):

- a worker process that dies (killed, out of memory) is restarted and the cell rerun, up to
  `retries` times (Ray's `max_retries`);
- a transient error raised by the cell (`TRANSIENT_ERRORS`: OS / I/O errors, MemoryError,
  timeouts) is retried the same number of times (Ray's `retry_exceptions`);
- rnd's own errors (`RndError`: bad input, a changed checkpoint, missing data) are deterministic:
  they are reported through `on_error` at once, never retried.

Ray is an optional dependency (the ``ray`` extra) and is imported only when a runner runs.
On a cluster every node needs the same rnd installed and the checkpoints and data at the same paths.
"""

from __future__ import annotations

import itertools
import logging
import os
import pickle
import socket
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from rnd.errors import InputError, RndError
from rnd.evaluation.cells import Cell, CellResult
from rnd.evaluation.execute import execute_cell
from rnd.evaluation.runners.base import OnError, OnResult
from rnd.extras import find_spec, install_hint

log = logging.getLogger(__name__)

#: Exceptions raised inside a cell that a rerun may cure; anything else (except rnd's own errors,
#: which are never retried) is reported after the first attempt.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (OSError, MemoryError, TimeoutError)

INSTALL_HINT = f"the Ray runner needs Ray: {install_hint('ray')} (or use --runner inprocess)"


def import_ray() -> Any:
    """Import Ray, or raise InputError saying how to install it."""
    try:
        import ray
    except ImportError as exc:
        raise InputError(INSTALL_HINT) from exc
    return ray


@dataclass(frozen=True)
class _CellFailure:
    """An rnd error raised by a cell, returned (not raised) so that Ray does not retry it."""

    error: BaseException


def _picklable(exc: BaseException) -> BaseException:
    try:
        pickle.loads(pickle.dumps(exc))
    except Exception:  # an exception that cannot cross processes: keep its type name and message
        return RndError(f"{type(exc).__name__}: {exc}")
    return exc


def _run_cell(execute: Callable[[Cell], CellResult], cell: Cell, threads: int) -> CellResult | _CellFailure:
    """The body of a Ray task (runs in a worker process)."""
    import torch

    torch.set_num_threads(threads)
    try:
        return execute(cell)
    except RndError as exc:
        return _CellFailure(_picklable(exc))


def check_address(address: str, timeout: float = 5.0) -> None:
    """Fail fast, with InputError, on a cluster address that is malformed or does not answer
    (Ray itself retries an unreachable address for minutes). "auto" and "local" are Ray's own."""
    if address in ("auto", "local"):
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not host or not port.isdigit():
        raise InputError(f"Ray address {address!r}: expected HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise InputError(
            f"cannot reach the Ray cluster at {address} ({exc}); check the address (the head node's "
            "port, 6379 by default; 10001 for ray://) or leave the address out to start a local Ray"
        ) from exc


def _original(ray: Any, exc: BaseException) -> BaseException:
    """The cell's own exception behind a RayTaskError; Ray's error (worker died, ...) otherwise."""
    if isinstance(exc, ray.exceptions.RayTaskError) and isinstance(exc.cause, BaseException):
        return exc.cause
    return exc


@dataclass
class RayRunner:
    """Runs each cell as a Ray task and streams the results back to the driver.

    Args:
        address: a Ray cluster address (``"auto"``, ``"ray://head:10001"``, ...); None starts a
            local Ray instance on this machine (unless Ray is already initialised in this process).
        workers: the most tasks in flight at a time; None: this machine's CPU count (local) or the
            cluster's CPUs divided by `threads_per_worker`.
        threads_per_worker: torch CPU threads in each task (and the CPUs each task reserves).
        retries: reruns of a cell whose worker died or that raised a transient error.
        execute: the function a task runs on a cell (default `execute_cell`; tests wrap it).

    `run` starts Ray when it is not running (and only when there are cells to run) and shuts it
    down at the end. As a context manager the runner checks, on entering, that a cluster address
    answers (so ``with runner: run_sweep(plan, db, runner=runner)`` fails before the database is
    opened), and keeps the Ray it starts up for every `run` inside the block, shutting it down
    on leaving. Ray started by someone else is never shut down.
    """

    address: str | None = None
    workers: int | None = None
    threads_per_worker: int = 1
    retries: int = 2
    execute: Callable[[Cell], CellResult] = execute_cell
    name: str = "ray"
    _session: bool = field(default=False, init=False, repr=False)  # inside `with runner:`
    _owned: bool = field(default=False, init=False, repr=False)  # Ray started here, kept for the block

    def __post_init__(self) -> None:
        if find_spec("ray") is None:  # fail before a sweep opens its database
            raise InputError(INSTALL_HINT)
        if self.workers is not None and (isinstance(self.workers, bool) or self.workers < 1):
            raise InputError(f"workers must be a positive integer or None, got {self.workers!r}")
        if isinstance(self.threads_per_worker, bool) or self.threads_per_worker < 1:
            raise InputError(
                f"threads_per_worker must be a positive integer, got {self.threads_per_worker!r}"
            )
        if isinstance(self.retries, bool) or self.retries < 0:
            raise InputError(f"retries must be a non-negative integer, got {self.retries!r}")

    def __enter__(self) -> RayRunner:
        import_ray()
        if self.address is not None:
            check_address(self.address)
        self._session = True
        return self

    def __exit__(self, *exc: object) -> None:
        self._session = False
        if self._owned:
            self._owned = False
            import_ray().shutdown()

    def _start(self, ray: Any) -> bool:
        """Initialise Ray unless it already is; returns whether this call started it."""
        if ray.is_initialized():
            return False
        common = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
        try:
            if self.address is not None:
                check_address(self.address)
                ray.init(address=self.address, **common)
            else:
                workers = self.workers or os.cpu_count() or 1
                # Light on a small shared machine: logical CPUs for exactly `workers` tasks, and a
                # small object store (results are a few kB per cell).
                ray.init(
                    num_cpus=workers * self.threads_per_worker, object_store_memory=128 * 1024**2, **common
                )
        except (ConnectionError, ValueError, RuntimeError) as exc:
            where = f"the Ray cluster at {self.address}" if self.address else "a local Ray instance"
            raise InputError(f"cannot start or reach {where}: {exc}") from exc
        log.info("Ray started (%s): %s CPUs", self.address or "local", ray.cluster_resources().get("CPU"))
        return True

    def _capacity(self, ray: Any) -> int:
        if self.workers is not None:
            return self.workers
        cpus = ray.cluster_resources().get("CPU", 1)
        return max(1, int(cpus) // self.threads_per_worker)

    def run(self, cells: Iterable[Cell], on_result: OnResult, on_error: OnError) -> None:
        """Submit one task per cell (at most `workers` in flight, each cell taken from `cells` only
        when there is room for it) and report each as it finishes."""
        ray = import_ray()
        pending = iter(cells)
        first = next(pending, None)
        if first is None:
            return
        started = self._start(ray)
        if started and self._session:  # keep it up for the rest of the `with` block
            self._owned, started = True, False
        try:
            task = ray.remote(_run_cell).options(
                num_cpus=self.threads_per_worker,
                max_retries=self.retries,
                retry_exceptions=list(TRANSIENT_ERRORS),
            )
            self._stream(ray, task, itertools.chain([first], pending), on_result, on_error)
        finally:
            if started:
                ray.shutdown()

    def _stream(
        self, ray: Any, task: Any, cells: Iterator[Cell], on_result: OnResult, on_error: OnError
    ) -> None:
        capacity = self._capacity(ray)
        execute = ray.put(self.execute)
        pending = cells
        in_flight: dict[Any, Cell] = {}

        def submit() -> None:
            for cell in pending:
                in_flight[task.remote(execute, cell, self.threads_per_worker)] = cell
                if len(in_flight) >= capacity:
                    return

        submit()
        try:
            while in_flight:
                ready, _ = ray.wait(list(in_flight), num_returns=1)
                for ref in ready:
                    cell = in_flight.pop(ref)
                    try:
                        out = ray.get(ref)
                    except ray.exceptions.RayError as exc:
                        on_error(cell, _original(ray, exc))
                    else:
                        if isinstance(out, _CellFailure):
                            on_error(cell, out.error)
                        else:
                            on_result(out)
                submit()
        finally:
            for ref in in_flight:  # the driver stopped early (an exception, Ctrl-C): drop the rest
                ray.cancel(ref, force=True)
