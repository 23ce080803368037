"""`rnd.serving.guard` on its own, with the real KeyStore and no web framework: the key check, the
body cap (declared and counted) and the charge in images, a request over the remainder refused whole."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from rnd.oip import QUOTA_HEADER, QUOTA_RETRY_AFTER_S, RETRY_AFTER, Code, Refusal, bearer
from rnd.serving.guard import Guard
from rnd.serving.keys import KeyStore, SQLiteKeyStore


@pytest.fixture
def store(tmp_path: Path) -> Iterator[KeyStore]:
    with SQLiteKeyStore(tmp_path / "keys.sqlite") as keys:
        yield keys


def test_without_keys_only_the_body_cap_applies() -> None:
    guard = Guard(None, max_body_bytes=10)
    assert guard.authorize(None) == (None, None) and guard.charge(None, 5) == ({}, None)
    assert guard.quota_headers(None) == {}
    refusal = guard.check_length("11")
    assert refusal is not None and refusal.code is Code.BODY_TOO_LARGE
    assert refusal.message == "body of 11 bytes is over the cap of 10; send fewer images"
    assert guard.check_length("10") is None and guard.check_length(None) is None
    bad = guard.check_length("12abc")
    assert bad is not None and (bad.code, bad.status) == (Code.BAD_REQUEST, 400)


def test_a_body_is_counted_while_it_is_read() -> None:
    guard = Guard(None, max_body_bytes=10)

    async def chunks(*parts: bytes) -> AsyncIterator[bytes]:
        for part in parts:
            yield part

    assert asyncio.run(guard.read_body(chunks(b"12345", b"67890"))) == b"1234567890"
    refusal = asyncio.run(guard.read_body(chunks(b"12345", b"678901")))
    assert not isinstance(refusal, bytes) and refusal.code is Code.BODY_TOO_LARGE


def test_keys(store: KeyStore) -> None:
    guard = Guard(store)
    secret = store.add("k", budget=10)
    assert guard.authorize(bearer(secret)["Authorization"]) == ("k", None)
    for header, code in ((None, Code.NO_KEY), ("Basic x", Code.NO_KEY), ("Bearer nope", Code.BAD_KEY)):
        key_id, refusal = guard.authorize(header)
        assert key_id is None and refusal is not None and (refusal.code, refusal.status) == (code, 401)
    store.revoke("k")
    assert guard.authorize(f"Bearer {secret}")[1].code is Code.BAD_KEY  # type: ignore[union-attr]


def test_a_quota_is_counted_in_images_and_a_request_over_the_remainder_is_refused_whole(
    store: KeyStore,
) -> None:
    guard = Guard(store)
    store.add("k", budget=8)
    assert guard.charge("k", 5) == ({QUOTA_HEADER: "3"}, None)
    headers, refusal = guard.charge("k", 4)
    assert refusal is not None and (refusal.code, refusal.status) == (Code.QUOTA, 429)
    assert refusal.message == "quota exhausted: 4 images asked, 3 left on this key"
    assert headers == {QUOTA_HEADER: "3", RETRY_AFTER: str(QUOTA_RETRY_AFTER_S)}
    assert store.remaining("k") == 3 and guard.quota_headers("k") == {QUOTA_HEADER: "3"}
    assert guard.charge("k", 3) == ({QUOTA_HEADER: "0"}, None)


def test_a_rate_limit_names_the_wait_and_a_revoked_key_gets_a_bare_401(store: KeyStore) -> None:
    guard = Guard(store)
    store.add("r", budget=100, rate=0.25)  # a bucket of one image, refilled in 4 s
    assert guard.charge("r", 1)[1] is None
    headers, refusal = guard.charge("r", 1)
    assert refusal is not None and refusal.code is Code.RATE and headers[RETRY_AFTER] == "4"
    assert refusal.message == "rate limit: 1 images refused; retry after 4 s"
    store.revoke("r")
    headers, refusal = guard.charge("r", 1)
    assert headers == {} and refusal is not None and (refusal.code, refusal.status) == (Code.BAD_KEY, 401)
    assert store.remaining("r") == 99


def test_admit_checks_the_key_and_one_image_of_quota_and_rate_before_any_body(store: KeyStore) -> None:
    """`admit`: the key and whether it could pay one image now, charging nothing; the quota header
    says what is left now (not after the image it peeked at)."""
    guard = Guard(store)
    secret = store.add("a", budget=3, rate=2.0)  # a bucket of 2 images
    auth = f"Bearer {secret}"
    assert guard.admit(auth) == ("a", None, {QUOTA_HEADER: "3"})
    assert guard.admit(auth) == ("a", None, {QUOTA_HEADER: "3"}) and store.remaining("a") == 3
    assert guard.charge("a", 2)[1] is None  # the bucket is empty now
    key_id, refusal, headers = guard.admit(auth)
    assert key_id == "a" and refusal is not None and refusal.code is Code.RATE
    assert headers[QUOTA_HEADER] == "1" and int(headers[RETRY_AFTER]) >= 1
    assert refusal.message.startswith("rate limit: refused; retry after")
    time.sleep(0.6)
    assert guard.charge("a", 1)[1] is None  # quota used up
    key_id, refusal, headers = guard.admit(auth)
    assert refusal is not None and refusal.code is Code.QUOTA and headers[QUOTA_HEADER] == "0"
    assert refusal.message == "quota exhausted: 0 images left on this key"
    assert guard.admit(None)[1].code is Code.NO_KEY  # type: ignore[union-attr]
    assert guard.admit("Bearer nope")[1].code is Code.BAD_KEY  # type: ignore[union-attr]
    store.revoke("a")
    assert guard.admit(auth)[:2] == (None, Refusal.of(Code.BAD_KEY, "invalid or revoked API key"))
