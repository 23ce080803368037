"""The server's gate on an infer request, before the model sees it: the API key, the body cap and the
quota charge. No web framework here: the app (`rnd.serving.app`) calls these, runs the ones that touch
the key store off the event loop, and answers a `rnd.oip.Refusal` with its status, code and headers.

The contract, in the order the app applies it:

- Key (only with a key store): `Authorization: Bearer KEY`. No header, another scheme or an empty
  token is `no_key` (401); a key the store does not know, or has revoked, is `bad_key` (401).
- Body cap, before anything is parsed: a declared `Content-Length` that is not a whole number is
  `bad_request` (400), one over `max_body_bytes` is `body_too_large` (413); a body without one is
  counted while it is read and refused (413) as soon as it passes the cap.
- Charge: a quota is counted in images, not requests. A request of n images is charged n, atomically
  in the key store, before it is answered; a request over the remainder is refused whole (`quota`,
  429, nothing answered, nothing charged, `Retry-After` a day since waiting will not lift it). A rate
  limit refuses with `rate` (429) and `Retry-After` the seconds until the key's bucket holds enough
  (rounded up, at least 1). A key revoked between the key check and the charge is `bad_key` (401).
- `X-Quota-Remaining`: on every answer to a known, live key, the images the key has left (after the
  request's own charge when it was answered; unchanged when it was refused).
- A key store that cannot be reached (`StoreUnavailable`: a PostgreSQL server down or restarting,
  a lock held too long) refuses the request with `not_ready` (503, `Retry-After: 1`): no answer
  without a decided charge. The store reconnects by itself on a later request.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterable
from typing import Any, Protocol

from rnd.oip import QUOTA_HEADER, QUOTA_RETRY_AFTER_S, Code, Refusal, bearer_token, retry_after_header
from rnd.serving.keys.base import StoreUnavailable

#: Seconds a client is told to wait when the key store cannot be reached.
STORE_RETRY_AFTER_S = 1.0

#: TorchServe's default body cap (DESIGN section 7).
MAX_BODY_BYTES = 6_553_500


class Charge(Protocol):
    """A key store's decision on one request (`rnd.serving.keys.Charge`)."""

    ok: bool
    remaining: int | None
    retry_after: float | None
    reason: str | None


class Keys(Protocol):
    """What the guard needs from a key store (`rnd.serving.keys.KeyStore`; `remaining(key_id)`, a
    peek without charging, is optional)."""

    def authorize(self, token: str) -> Any: ...

    def charge(self, key_id: Any, images: int) -> Charge: ...


def store_reason(reason: str) -> Code:
    """The refusal code of a key store's refusal reason ("quota", "rate" or "revoked"; a store may
    say more, e.g. "quota exhausted")."""
    low = reason.lower()
    if "rate" in low:
        return Code.RATE
    if "revoked" in low:
        return Code.BAD_KEY
    return Code.QUOTA


def unavailable() -> Refusal:
    """The refusal of a request whose key or charge could not be decided (the store is unreachable)."""
    return Refusal.of(
        Code.NOT_READY, "the key store cannot be reached; retry shortly", retry_after=STORE_RETRY_AFTER_S
    )


class Guard:
    """Key check, body cap and quota charge for one app.

    Args:
        keys: the key store; None serves without keys or quotas (every check but the body cap passes).
        max_body_bytes: the largest request body accepted.

    `authorize`, `quota_headers` and `charge` call the key store (a database): run them off the
    event loop.
    """

    def __init__(self, keys: Keys | None, max_body_bytes: int = MAX_BODY_BYTES) -> None:
        self.keys = keys
        self.max_body_bytes = max_body_bytes
        self._last_left: dict[Any, int] = {}  # per key id: what was left after this app's last charge

    def authorize(self, authorization: str | None) -> tuple[Any, Refusal | None]:
        """(key id, None) for a live key; (None, the 401 refusal) otherwise; (None, None) without a
        key store. `authorization` is the request's `Authorization` header, if any."""
        if self.keys is None:
            return None, None
        token = bearer_token(authorization)
        if token is None:
            return None, Refusal.of(Code.NO_KEY, "missing API key: send 'Authorization: Bearer KEY'")
        try:
            key_id = self.keys.authorize(token)
        except StoreUnavailable:
            return None, unavailable()
        if key_id is None:
            return None, Refusal.of(Code.BAD_KEY, "invalid or revoked API key")
        return key_id, None

    def admit(self, authorization: str | None) -> tuple[Any, Refusal | None, dict[str, str]]:
        """`authorize`, then, before the body is read, whether the key could pay for one image now:
        (key id, None, quota headers) for a key that may go on; (key id or None, the 401 / 429 / 503
        refusal, its headers) otherwise. One read of the store when it can `admit` (both rnd stores);
        a store that cannot is asked `authorize` only."""
        if self.keys is None:
            return None, None, {}
        admit = getattr(self.keys, "admit", None)
        if admit is None:
            key_id, refusal = self.authorize(authorization)
            return key_id, refusal, {}
        token = bearer_token(authorization)
        if token is None:
            return None, Refusal.of(Code.NO_KEY, "missing API key: send 'Authorization: Bearer KEY'"), {}
        try:
            admission = admit(token)
        except StoreUnavailable:
            refusal = unavailable()
            return None, refusal, refusal.headers()
        if admission.key_id is None:
            return None, Refusal.of(Code.BAD_KEY, "invalid or revoked API key"), {}
        peek = admission.peek
        headers = {QUOTA_HEADER: str(int(admission.remaining))}  # now, not after the peeked image
        if peek.ok:
            return admission.key_id, None, headers
        refusal = self._refusal(peek, None)
        return admission.key_id, refusal, {**headers, **refusal.headers()}

    def quota_headers(self, key_id: Any) -> dict[str, str]:
        """`X-Quota-Remaining` for a key, without charging it (when the store can tell, else the figure
        after this app's last charge); empty without a key."""
        if key_id is None:
            return {}
        left = self._last_left.get(key_id)
        peek = getattr(self.keys, "remaining", None)
        if peek is not None:
            # the header is informative: a failed peek falls back to the last charge's figure
            with contextlib.suppress(Exception):
                left = peek(key_id)
        return {} if left is None else {QUOTA_HEADER: str(int(left))}

    def check_length(self, content_length: str | None) -> Refusal | None:
        """The refusal of a declared body size that is not a whole number (400) or over the cap (413)."""
        if content_length is None:
            return None
        if not content_length.strip().isdigit():
            return Refusal.of(Code.BAD_REQUEST, "Content-Length is not an integer")
        if int(content_length) > self.max_body_bytes:
            return Refusal.of(
                Code.BODY_TOO_LARGE,
                f"body of {int(content_length)} bytes is over the cap of {self.max_body_bytes}; "
                "send fewer images",
            )
        return None

    async def read_body(self, chunks: AsyncIterable[bytes]) -> bytes | Refusal:
        """The body, read chunk by chunk; the 413 refusal as soon as it passes the cap."""
        parts, size = [], 0
        async for chunk in chunks:
            size += len(chunk)
            if size > self.max_body_bytes:
                return Refusal.of(
                    Code.BODY_TOO_LARGE,
                    f"body over the cap of {self.max_body_bytes} bytes; send fewer images",
                )
            parts.append(chunk)
        return b"".join(parts)

    def charge(self, key_id: Any, images: int) -> tuple[dict[str, str], Refusal | None]:
        """Charge `images` to the key: (headers, None) when the request may be answered, (headers,
        refusal) when it is refused whole. The headers hold `X-Quota-Remaining` (and `Retry-After` on
        a 429); a key revoked since `authorize` gets a bare 401."""
        if self.keys is None:
            return {}, None
        try:
            charge = self.keys.charge(key_id, images)
        except StoreUnavailable:
            refusal = unavailable()
            return refusal.headers(), refusal
        headers: dict[str, str] = {}
        if charge.remaining is not None:
            self._last_left[key_id] = int(charge.remaining)
            headers[QUOTA_HEADER] = str(int(charge.remaining))
        if charge.ok:
            return headers, None
        refusal = self._refusal(charge, images)
        if refusal.code is Code.BAD_KEY:
            return {}, refusal
        return {**headers, **refusal.headers()}, refusal

    @staticmethod
    def _refusal(charge: Charge, images: int | None) -> Refusal:
        """The refusal of a store's "no" to `images` images (None: to any, before the body is read)."""
        code = store_reason(charge.reason or "quota")
        if code is Code.BAD_KEY:
            return Refusal.of(Code.BAD_KEY, "invalid or revoked API key")
        after = charge.retry_after if charge.retry_after is not None else QUOTA_RETRY_AFTER_S
        asked = "" if images is None else f"{images} images "
        if code is Code.RATE:
            message = f"rate limit: {asked}refused; retry after {retry_after_header(after)} s"
        elif images is None:
            message = f"quota exhausted: {charge.remaining} images left on this key"
        else:
            message = f"quota exhausted: {images} images asked, {charge.remaining} left on this key"
        return Refusal.of(code, message, retry_after=after)
