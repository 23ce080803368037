"""The server's limits against clients that cost it without paying: each one's default, and why.

Where they act (docs/reference/http.md lists them for clients):

- On the connection, before any request exists (`rnd.serving.protocol.GuardedH11Protocol`, the
  uvicorn engine): `max_header_bytes` (h11's incomplete-event cap: the request line and headers
  together; beyond it, 400 and the connection closed), `header_timeout_s` (a connection that has
  not sent a whole request head in that time, new or kept alive, gets 408 and is closed),
  `max_connections` (per server process; at the cap, the connection that has waited longest for
  its request head is closed to make room, so a flood of slow connections cannot lock a good client
  out; only when every connection is busy with a request is the new one refused).
- In the app, for every engine (`rnd.serving.app`): `max_headers` (431), `body_timeout_s` (the
  whole body must arrive within it, else 408 and the connection closed), the body cap
  (`max_body_bytes`, 413), and the JSON bounds: `max_json_depth` and `max_json_values` (numbers
  in a JSON body; the binary-tensor extension is the way to send more), checked on the raw bytes
  before the body is parsed (400), so a parse never holds more than about 32 bytes per value.
"""

from __future__ import annotations

import resource
from dataclasses import asdict, dataclass
from typing import Any

from rnd._checks import check_int
from rnd.errors import InputError

#: Connections per server process at most, whatever the open-file limit allows.
MAX_CONNECTIONS_CAP = 1000


def default_max_connections() -> int:
    """min(1000, half the soft open-file limit): the rest of the descriptors stay for the model,
    the key store and the logs, so a flood of connections never makes the server fail to open them."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_CONNECTIONS_CAP
    return max(8, min(MAX_CONNECTIONS_CAP, soft // 2))


@dataclass(frozen=True)
class ServerLimits:
    """The server's limits (defaults in brackets).

    Args:
        max_header_bytes: the request line and headers together [16,384, h11's default; nginx and
            Node.js allow 8-16 KiB].
        max_headers: header lines per request [100].
        header_timeout_s: seconds to send a whole request head, from connect or from the previous
            answer [10].
        body_timeout_s: seconds to send a whole body once the head is in [60: 6.5 MB at 1 Mbit/s].
        max_connections: open connections per server process [`default_max_connections()`].
        max_json_depth: nesting of a JSON body [16: an infer request needs 7 at most].
        max_json_values: numbers in a JSON body [None: `max_batch` images' worth, set by the app].
    """

    max_header_bytes: int = 16_384
    max_headers: int = 100
    header_timeout_s: float = 10.0
    body_timeout_s: float = 60.0
    max_connections: int | None = None
    max_json_depth: int = 16
    max_json_values: int | None = None

    def __post_init__(self) -> None:
        check_int(self.max_header_bytes, "max_header_bytes", minimum=1024)
        check_int(self.max_headers, "max_headers", minimum=8)
        check_int(self.max_json_depth, "max_json_depth", minimum=8)
        for name in ("max_connections", "max_json_values"):
            value = getattr(self, name)
            if value is not None:
                check_int(value, name, minimum=1)
        for name in ("header_timeout_s", "body_timeout_s"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 3600:
                raise InputError(f"{name} must be a number of seconds in (0, 3600], got {value!r}")

    def connections(self) -> int:
        return self.max_connections if self.max_connections is not None else default_max_connections()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, doc: dict[str, Any] | None) -> ServerLimits:
        return cls(**(doc or {}))
