"""uvicorn's h11 protocol with the connection-level limits uvicorn lacks (`rnd.serving.limits`):

- a request head must arrive within `header_timeout_s` of the connection opening or of the previous
  answer (uvicorn has no such timeout: a client that sends one header byte a second holds a
  connection, and a descriptor, for as long as it likes); then 408 and close;
- the request line and headers are capped at `max_header_bytes`, counted as they arrive (431 and
  close; h11's own incomplete-event cap, set to the same size, covers only a head it must buffer,
  and the httptools parser uvicorn picks by default has none: a 128 MB header was parsed whole);
- at most `max_connections` connections per process: at the cap, the connection that has waited
  longest for its request head is closed to make room (a slow-connection flood cannot lock a good
  client out); the new one is refused only when every other connection is busy with a request.

The limits of a process are set once with `GuardedH11Protocol.configure(limits)`, before it serves
(by `rnd serve`, or by each `--workers` process when it builds its app).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, ClassVar

from uvicorn.protocols.http.h11_impl import H11Protocol

from rnd.serving.limits import ServerLimits

log = logging.getLogger(__name__)

_TIMEOUT_408 = b"HTTP/1.1 408 Request Timeout\r\ncontent-length: 0\r\nconnection: close\r\n\r\n"
_HEAD_431 = (
    b"HTTP/1.1 431 Request Header Fields Too Large\r\ncontent-type: application/json\r\n"
    b"content-length: 69\r\nconnection: close\r\n\r\n"
    b'{"error":"request head over the size cap","code":"headers_too_large"}'
)


class GuardedH11Protocol(H11Protocol):
    """One HTTP/1.1 connection, with a header timeout and a share of the connection cap."""

    limits: ClassVar[ServerLimits] = ServerLimits()
    max_connections: ClassVar[int] = limits.connections()
    #: Connections closed by each limit in this process (tests and logs).
    closed: ClassVar[dict[str, int]] = {"header_timeout": 0, "head_too_large": 0, "evicted": 0, "refused": 0}

    @classmethod
    def configure(cls, limits: ServerLimits) -> None:
        cls.limits = limits
        cls.max_connections = limits.connections()  # once: not a getrlimit per connection

    @classmethod
    def uvicorn_options(cls, limits: ServerLimits) -> dict[str, Any]:
        """What `uvicorn.run` / `uvicorn.Config` take to serve with these limits."""
        cls.configure(limits)
        return {"http": cls, "h11_max_incomplete_event_size": limits.max_header_bytes}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._head_since: float | None = None  # waiting for a request head since (loop time)
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_bytes = 0  # bytes of the awaited request head received so far
        self._head_tail = b""  # its last 3 bytes

    # -- waiting for a request head -------------------------------------------------------------

    def _await_head(self) -> None:
        self._head_since = self.loop.time()
        self._head_bytes, self._head_tail = 0, b""
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(self.limits.header_timeout_s, self._head_timed_out)

    def _got_head(self) -> None:
        self._head_since = None
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _busy(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._head_since is None or self._busy() or self.transport.is_closing():
            return
        type(self).closed["header_timeout"] += 1
        self._drop(_TIMEOUT_408 if self._head_bytes else b"")  # an idle kept-alive one: just closed

    def _drop(self, answer: bytes = b"") -> None:
        self._got_head()
        if answer and not self._busy():
            self.transport.write(answer)
        self.transport.close()

    # -- the protocol's events ------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._await_head()
        if len(self.connections) > self.max_connections:
            self._make_room()

    def _make_room(self) -> None:
        waiting = [
            c
            for c in self.connections
            if isinstance(c, GuardedH11Protocol) and c._head_since is not None and c is not self
        ]
        if waiting:
            oldest = min(waiting, key=lambda c: c._head_since or 0.0)
            type(self).closed["evicted"] += 1
            oldest._drop()
        else:
            type(self).closed["refused"] += 1
            self._drop()

    def data_received(self, data: bytes) -> None:
        if self._head_since is None and not self._busy():
            self._await_head()  # the first bytes of a kept-alive connection's next request
        if self._head_since is not None:
            # h11 caps only a head it must buffer: one that arrives whole in one read is counted here.
            # The blank line that ends a head may straddle two reads: the last 3 bytes are kept.
            window = self._head_tail + data
            end = window.find(b"\r\n\r\n")
            size = self._head_bytes - len(self._head_tail) + (len(window) if end < 0 else end + 4)
            if size > self.limits.max_header_bytes:
                type(self).closed["head_too_large"] += 1
                self._drop(_HEAD_431)
                return
            self._head_bytes, self._head_tail = size, window[-3:]
        cycle = self.cycle
        super().data_received(data)
        if self.cycle is not cycle and self.cycle is not None:
            self._got_head()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self._busy():
            self._await_head()

    def connection_lost(self, exc: Exception | None) -> None:
        self._got_head()
        super().connection_lost(exc)
