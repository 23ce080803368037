"""API keys and image quotas: what every key store guarantees, and the one decision they all make.

A key store holds, per key: its name (the key id), the sha256 of its secret (never the secret), the
budget in images and the images used so far, a rate limit in images/s (None: none) with its token
bucket (tokens, refilled_at in Unix seconds), revoked, created_at and revoked_at. Two stores
implement it: `SQLiteKeyStore` (one file, the embedded default) and `PostgresKeyStore` (a networked
database shared by hosts). Both answer the same calls with the same results (tests/serving/test_keys.py
runs every test on both).

Guarantees:

- A secret is shown once, by `add`, and stored only as its sha256. `authorize` looks the hash up and
  compares it with `hmac.compare_digest`, so timing does not depend on how much of a key is right.
- `charge` reads, decides (`decide`) and writes in ONE transaction under the database's lock on the
  key, so the quota holds across threads, workers, processes, hosts and restarts: an answered request
  has been charged, a refused one charges nothing.
- Rate limit R images/s: a token bucket of capacity max(R, 1) images. A request of n images passes
  when the bucket holds min(n, capacity) tokens and then takes n (the bucket may go below zero, so a
  request larger than the bucket is served and the long-run rate still holds); a refusal says how
  many seconds until enough tokens.
- Opening never writes to a database that is not an rnd key store (another database, a results
  database, a newer schema): it is refused untouched, in one line (`InputError`).
- A store that cannot be reached raises `StoreUnavailable` (an `InputError`): the CLI prints it in one
  line; the server refuses the request with 503 and tries the store again on the next request.
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import secrets
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Literal

from rnd.errors import InputError
from rnd.sqlite import now

SCHEMA_VERSION = 1
KIND = "rnd keys"
KEY_PREFIX = "rnd_"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
#: The largest budget a store holds (a signed 64-bit integer, both databases' INTEGER / BIGINT).
MAX_BUDGET = 2**63 - 1

Reason = Literal["", "quota", "rate", "revoked"]

#: The columns of a key, in order, as `dump` gives them and `load` takes them.
KEY_COLUMNS = (
    "name",
    "key_sha256",
    "budget",
    "used",
    "rate",
    "tokens",
    "refilled_at",
    "revoked",
    "created_at",
    "revoked_at",
)
#: What `_lookup` reads of a key (with the store's clock, `now`).
STATE_COLUMNS = ("name", "key_sha256", "budget", "used", "rate", "tokens", "refilled_at", "revoked")
#: Compared with when a token matches no row, so a miss costs the same as a hit.
_DUMMY_HASH = hashlib.sha256(b"no such key").hexdigest()


class StoreUnavailable(InputError):
    """The key store cannot be reached or did not answer (network, server down, lock timeout): nothing
    was decided. The server answers 503 and tries again on the next request."""


@dataclass(frozen=True)
class Charge:
    """The decision on one request: answer it (its images charged) or refuse it (nothing charged).

    Args:
        ok: answer the request.
        remaining: images left on the key after this decision.
        retry_after: seconds until a refused request could pass (rate), None when it never will
            (quota, revoked) or when `ok`.
        reason: "" when ok; "quota", "rate" or "revoked".
    """

    ok: bool
    remaining: int
    retry_after: float | None
    reason: Reason


@dataclass(frozen=True)
class Admission:
    """`KeyStore.admit`'s answer: the key id of a live key (None for anything else), what charging
    it one image would decide now (None when there is no key), and the images it has left now."""

    key_id: str | None
    peek: Charge | None
    remaining: int | None = None


@dataclass(frozen=True)
class Decision:
    """`decide`'s answer: the charge, and when it is ok the bucket's tokens to write with it."""

    charge: Charge
    tokens: float | None


def digest(token: str) -> str:
    """The stored form of a secret: its sha256, hex."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def new_secret() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def capacity(rate: float | None) -> float | None:
    """The token bucket's size: max(rate, 1) images (None without a rate)."""
    return None if rate is None else max(rate, 1.0)


def check_name(name: object) -> str:
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise InputError(
            f"key name {name!r} is not valid; use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


def check_budget(budget: object) -> int:
    if isinstance(budget, bool) or not isinstance(budget, int) or not 1 <= budget <= MAX_BUDGET:
        raise InputError(f"budget must be a whole number of images from 1 to {MAX_BUDGET}, got {budget!r}")
    return budget


def check_rate(rate: object) -> float | None:
    if rate is None:
        return None
    if isinstance(rate, bool) or not isinstance(rate, int | float) or not math.isfinite(rate):
        raise InputError(f"rate must be a finite number of images per second, got {rate!r}")
    if rate <= 0:
        raise InputError(f"rate must be > 0 images per second (or no rate limit), got {rate!r}")
    return float(rate)


def check_images(images: object) -> int:
    if isinstance(images, bool) or not isinstance(images, int) or images < 1:
        raise InputError(f"images to charge must be a whole number >= 1, got {images!r}")
    return images


def no_key(name: str) -> InputError:
    return InputError(f"no key named {name!r}; `rnd keys list` shows the keys")


def decide(
    *,
    budget: int,
    used: int,
    rate: float | None,
    tokens: float | None,
    refilled_at: float | None,
    revoked: bool,
    images: int,
    now: float,
) -> Decision:
    """Whether a key in this state may have `images` more images answered at time `now` (seconds).

    Revoked first, then the quota (a request over the remainder is refused whole), then the token
    bucket: refilled by `(now - refilled_at) * rate` up to `capacity(rate)` (a clock set back refills
    nothing); it must hold min(images, capacity) tokens, and then gives `images`."""
    remaining = budget - used
    if revoked:
        return Decision(Charge(False, remaining, None, "revoked"), None)
    if images > remaining:
        return Decision(Charge(False, remaining, None, "quota"), None)
    if rate is not None:
        cap = max(rate, 1.0)
        elapsed = max(0.0, now - (refilled_at if refilled_at is not None else now))
        tokens = min(cap, (tokens if tokens is not None else cap) + elapsed * rate)
        need = min(float(images), cap)
        if tokens < need:
            return Decision(Charge(False, remaining, (need - tokens) / rate, "rate"), None)
        tokens -= images
    return Decision(Charge(True, remaining - images, None, ""), tokens)


def decide_row(row: Any, images: int, now: float, *, revoked: bool | None = None) -> Decision:
    """`decide` for a key's row as a store reads it (budget, used, rate, tokens, refilled_at,
    revoked); `revoked` overrides the row's."""
    return decide(
        budget=int(row["budget"]),
        used=int(row["used"]),
        rate=None if row["rate"] is None else float(row["rate"]),
        tokens=row["tokens"],
        refilled_at=row["refilled_at"],
        revoked=bool(row["revoked"]) if revoked is None else revoked,
        images=images,
        now=now,
    )


def public_row(row: Any) -> dict[str, Any]:
    """What `list` shows of a key (never the secret nor its hash)."""
    return {
        "name": row["name"],
        "budget": int(row["budget"]),
        "used": int(row["used"]),
        "remaining": int(row["budget"] - row["used"]),
        "rate": None if row["rate"] is None else float(row["rate"]),
        "revoked": bool(row["revoked"]),
        "created_at": row["created_at"],
    }


def check_dump(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows as `dump` gives them, checked before any is written: every column, valid names and
    counts, no name twice."""
    seen: set[str] = set()
    for row in rows:
        missing = [c for c in KEY_COLUMNS if c not in row]
        if missing:
            raise InputError(f"a key row lacks {', '.join(missing)}; copy keys with `rnd keys copy`")
        name = check_name(row["name"])
        if name in seen:
            raise InputError(f"key {name!r} appears twice in the keys to copy")
        seen.add(name)
        check_budget(row["budget"])
        check_rate(row["rate"])
        used = row["used"]
        if isinstance(used, bool) or not isinstance(used, int) or not 0 <= used <= row["budget"]:
            raise InputError(f"key {name!r}: used {used!r} is not between 0 and its budget")
    return rows


class KeyStore(ABC):
    """A key store: keys, their budgets and rate limits, and the atomic charge of a request.

    Example:
        >>> store = open_keys(tmp / "keys.sqlite")     # or "postgresql://user@host/db"
        >>> secret = store.add("alice", budget=1000, rate=50)
        >>> key_id = store.authorize(secret)          # "alice"
        >>> store.charge(key_id, 64)                   # Charge(ok=True, remaining=936, ...)
    """

    #: Where the keys are, for messages: a path, or a URL without its password.
    location: str

    # -- what a store implements --------------------------------------------------------------------

    @abstractmethod
    def _insert(self, row: dict[str, Any]) -> None:
        """Insert one key row (all of `KEY_COLUMNS`); InputError when the name exists."""

    @abstractmethod
    def _revoke(self, name: str, at: str) -> None:
        """Mark key `name` revoked at `at` unless it is already; InputError (`no_key`) when absent."""

    @abstractmethod
    def _rows(self, columns: tuple[str, ...]) -> list[dict[str, Any]]:
        """`columns` of every key, oldest first (created_at, then name)."""

    @abstractmethod
    def _counts(self, name: str) -> tuple[int, int] | None:
        """(budget, used) of key `name`, None when absent."""

    @abstractmethod
    def _lookup(self, key_sha256: str) -> dict[str, Any] | None:
        """The key with this hash (`STATE_COLUMNS` and `now`, the store's clock in Unix seconds),
        None when absent: one read."""

    @abstractmethod
    def _charge(self, name: str, images: int) -> Charge:
        """Read key `name`, `decide`, write the charge when ok: one transaction, the key locked."""

    @abstractmethod
    def _load(self, rows: list[dict[str, Any]]) -> None:
        """Insert `rows` in one transaction: all or, on any conflict (InputError), none."""

    @abstractmethod
    def close(self) -> None:
        """Release the store's connections (a closed store refuses every call)."""

    # -- the calls ----------------------------------------------------------------------------------

    def add(self, name: str, budget: int, rate: float | None = None) -> str:
        """Create key `name` allowed `budget` images (at most `rate` images/s) and return its
        secret: the only time it exists in clear."""
        check_name(name)
        check_budget(budget)
        rate = check_rate(rate)
        secret = new_secret()
        self._insert(
            {
                "name": name,
                "key_sha256": digest(secret),
                "budget": budget,
                "used": 0,
                "rate": rate,
                "tokens": capacity(rate),
                "refilled_at": time.time(),
                "revoked": False,
                "created_at": now(),
                "revoked_at": None,
            }
        )
        return secret

    def revoke(self, name: str) -> None:
        """Revoke key `name` for good (revoking it again changes nothing)."""
        self._revoke(name, now())

    def list(self) -> list[dict[str, Any]]:
        """Every key, oldest first: name, budget, used, remaining, rate, revoked, created_at (never
        the secret nor its hash)."""
        columns = ("name", "budget", "used", "rate", "revoked", "created_at")
        return [public_row(r) for r in self._rows(columns)]

    def remaining(self, key_id: str) -> int:
        """Images left on key `key_id`, without charging it (the server's quota header on refusals)."""
        counts = self._counts(key_id)
        if counts is None:
            raise InputError(f"no key named {key_id!r}")
        return int(counts[0] - counts[1])

    def authorize(self, token: str) -> str | None:
        """The key id (its name) of a live key whose secret is `token`; None for anything else."""
        return self.admit(token).key_id

    def admit(self, token: str) -> Admission:
        """`authorize`, and what charging one image would decide now, in one read and without
        charging: the server refuses a key that could not pay for one image before it reads the
        request's body."""
        if not isinstance(token, str) or not token:
            return Admission(None, None)
        wanted = digest(token)
        found = self._lookup(wanted)
        stored = found["key_sha256"] if found is not None else _DUMMY_HASH
        if not hmac.compare_digest(stored.encode(), wanted.encode()) or found is None or found["revoked"]:
            return Admission(None, None)
        peek = decide_row(found, 1, found["now"], revoked=False).charge
        return Admission(str(found["name"]), peek, int(found["budget"]) - int(found["used"]))

    def charge(self, key_id: str, images: int) -> Charge:
        """Decide whether key `key_id` may have `images` more images answered, and charge them if
        so, atomically (one transaction)."""
        return self._charge(key_id, check_images(images))

    def dump(self) -> list[dict[str, Any]]:
        """Every key with all its columns, hashes and buckets included (for `rnd keys copy`; never
        shown)."""
        return self._rows(KEY_COLUMNS)

    def load(self, rows: list[dict[str, Any]]) -> None:
        """Add keys as `dump` gave them (their hashes, used counts, buckets and states kept), in one
        transaction: a name that exists here already refuses them all."""
        self._load(check_dump(rows))

    def __enter__(self) -> KeyStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
