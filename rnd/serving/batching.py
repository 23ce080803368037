"""Dynamic batching, "max batch, max wait" (as Triton, Ray Serve and LitServe do it).

Requests are queued; one worker thread owns the model and takes the first waiting request, then
every request that arrives within `max_wait_ms` of it (or until `max_batch` images are gathered),
runs them as one forward, and splits the answer back. A request larger than `max_batch` is run in
chunks of at most `max_batch`. The defense draws its noise per image from its own generator, so
merging requests changes nothing about the noise a client gets.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future

import torch
from torch import nn

from rnd._checks import check_int, check_positive

log = logging.getLogger(__name__)


class Batcher:
    """Merge concurrent requests into forwards of at most `max_batch` images.

    Args:
        model: the (defended) model, called only from the worker thread, returning logits.
        max_batch: largest forward, in images.
        max_wait_ms: how long the first request of a batch waits for others (0: take only what is
            already queued).
        on_batch: called with the size of every forward (metrics).
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        max_batch: int = 256,
        max_wait_ms: float = 2.0,
        on_batch: Callable[[int], None] | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        self.model = model.eval()
        self.max_batch = check_int(max_batch, "max_batch", minimum=1)
        self.max_wait = check_positive(max_wait_ms, "max_wait_ms", allow_zero=True) / 1000
        self.on_batch = on_batch
        if device is None:
            p = next(model.parameters(), None)
            device = p.device if p is not None else torch.device("cpu")
        self.device = torch.device(device)
        self._queue: queue.Queue[tuple[torch.Tensor, Future[torch.Tensor]] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._carry: tuple[torch.Tensor, Future[torch.Tensor]] | None = None  # owned by the worker
        self.forwards = 0

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        if not self.running:
            self._thread = threading.Thread(target=self._run, name="rnd-batcher", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(timeout)
            self._thread = None

    def submit(self, x: torch.Tensor) -> Future[torch.Tensor]:
        """Queue a batch of images (N, C, H, W); the future gives its (N, classes) logits."""
        fut: Future[torch.Tensor] = Future()
        if not self.running:
            fut.set_exception(RuntimeError("the batcher is not running"))
            return fut
        self._queue.put((x, fut))
        return fut

    def _gather(self, first: tuple[torch.Tensor, Future[torch.Tensor]]) -> tuple[list, bool]:
        """The requests of one batch, starting with `first`; True when the stop sentinel came."""
        items = [first]
        size = first[0].shape[0]
        deadline = time.monotonic() + self.max_wait
        while size < self.max_batch:
            try:
                wait = deadline - time.monotonic()
                item = self._queue.get(timeout=wait) if wait > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if item is None:
                return items, True
            if size + item[0].shape[0] > self.max_batch:
                self._carry = item  # does not fit: it starts the next batch
                break
            items.append(item)
            size += item[0].shape[0]
        return items, False

    def _run(self) -> None:
        stop = False
        while not stop:
            first, self._carry = (self._carry, None) if self._carry is not None else (self._queue.get(), None)
            if first is None:
                break
            items, stop = self._gather(first)
            try:
                self._forward(items)
            except Exception as exc:  # the worker must survive any one bad batch
                log.exception("batch of %d requests failed", len(items))
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(exc)

    @torch.inference_mode()
    def _forward(self, items: list[tuple[torch.Tensor, Future[torch.Tensor]]]) -> None:
        x = items[0][0] if len(items) == 1 else torch.cat([t for t, _ in items])
        outs = []
        for chunk in x.split(self.max_batch):
            outs.append(self.model(chunk.to(self.device)).float().cpu())
            self.forwards += 1
            if self.on_batch is not None:
                self.on_batch(chunk.shape[0])
        logits = outs[0] if len(outs) == 1 else torch.cat(outs)
        start = 0
        for t, fut in items:
            n = t.shape[0]
            fut.set_result(logits[start : start + n])
            start += n
