"""API keys and quotas on a real SQLite file: secrets never stored, charges atomic across threads,
processes and restarts, rate limits that refuse and recover, bad input refused in one line."""

from __future__ import annotations

import multiprocessing as mp
import sqlite3
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from rnd.errors import InputError
from rnd.evaluation.store import ResultsStore
from rnd.serving.keys import KEY_PREFIX, Charge, KeyStore, SQLiteKeyStore


@pytest.fixture
def store(tmp_path):
    s = SQLiteKeyStore(tmp_path / "keys.sqlite")
    yield s
    s.close()


def test_add_authorize_charge_round_trip(store):
    secret = store.add("alice", budget=10)
    assert secret.startswith(KEY_PREFIX) and len(secret) > 40
    assert store.authorize(secret) == "alice"
    assert store.charge("alice", 3) == Charge(ok=True, remaining=7, retry_after=None, reason="")
    assert store.charge("alice", 7) == Charge(ok=True, remaining=0, retry_after=None, reason="")
    assert store.charge("alice", 1) == Charge(ok=False, remaining=0, retry_after=None, reason="quota")
    (row,) = store.list()
    assert row["name"] == "alice" and row["budget"] == 10 and row["used"] == 10 and row["remaining"] == 0
    assert row["rate"] is None and row["revoked"] is False and row["created_at"]
    assert secret not in repr(row)


def test_a_request_over_the_remaining_quota_is_refused_whole(store):
    store.add("bob", budget=5)
    assert store.charge("bob", 4).remaining == 1
    refused = store.charge("bob", 2)
    assert not refused.ok and refused.reason == "quota" and refused.remaining == 1
    assert store.list()[0]["used"] == 4  # the refusal charged nothing
    assert store.charge("bob", 1) == Charge(True, 0, None, "")


def test_two_keys_are_distinct_and_each_has_its_own_quota(store):
    a, b = store.add("a", budget=2), store.add("b", budget=3)
    assert a != b
    assert store.authorize(a) == "a" and store.authorize(b) == "b"
    store.charge("a", 2)
    assert store.charge("b", 3).ok
    assert {r["name"]: r["used"] for r in store.list()} == {"a": 2, "b": 3}


def test_wrong_and_revoked_keys_are_refused(store):
    secret = store.add("carol", budget=100)
    for wrong in ["", "rnd_", secret[:-1], secret + "x", secret.upper(), "Bearer " + secret, None, 42]:
        assert store.authorize(wrong) is None, wrong
    store.revoke("carol")
    assert store.authorize(secret) is None
    assert store.charge("carol", 1) == Charge(False, 100, None, "revoked")
    store.revoke("carol")  # twice changes nothing
    assert store.list()[0]["revoked"] is True and store.list()[0]["used"] == 0


def test_the_file_holds_no_key_text(tmp_path):
    path = tmp_path / "keys.sqlite"
    store = SQLiteKeyStore(path)
    secrets_ = [store.add(f"k{i}", budget=10, rate=5) for i in range(5)]
    store.charge("k0", 1)
    before_close = b"".join(p.read_bytes() for p in tmp_path.iterdir())  # the WAL too
    store.close()
    after_close = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    for secret in secrets_:
        body = secret.removeprefix(KEY_PREFIX).encode()
        for blob in (before_close, after_close):
            assert body not in blob and body[:16] not in blob


def _charge_many(store: KeyStore, key: str, n: int, threads: int) -> Counter:
    def one(_: int) -> str:
        c = store.charge(key, 1)
        assert c.ok == (c.reason == "")
        return c.reason or "ok"

    with ThreadPoolExecutor(threads) as pool:
        return Counter(pool.map(one, range(n)))


def test_64_threads_never_overspend_the_budget(store):
    store.add("t", budget=1000)
    outcome = _charge_many(store, "t", 2000, threads=64)
    assert outcome == {"ok": 1000, "quota": 1000}
    assert store.list()[0]["used"] == 1000


def test_64_threads_on_one_store_per_thread(tmp_path):
    """Each thread with its own KeyStore (its own connection): SQLite's lock alone keeps the quota."""
    path = tmp_path / "keys.sqlite"
    with SQLiteKeyStore(path) as s:
        s.add("t", budget=300)
    local = threading.local()
    opened: list[KeyStore] = []

    def one(_: int) -> str:
        if not hasattr(local, "store"):
            local.store = SQLiteKeyStore(path)
            opened.append(local.store)
        return local.store.charge("t", 1).reason or "ok"

    with ThreadPoolExecutor(16) as pool:
        outcome = Counter(pool.map(one, range(600)))
    for s in opened:
        s.close()
    assert outcome == {"ok": 300, "quota": 300}
    with SQLiteKeyStore(path) as s:
        assert s.list()[0]["used"] == 300


def _worker(path: str, n: int, start: Any, out: Any) -> None:
    store = SQLiteKeyStore(path)
    start.wait()
    out.put(dict(_charge_many(store, "p", n, threads=32)))
    store.close()


def test_two_processes_share_the_quota(tmp_path):
    path = tmp_path / "keys.sqlite"
    with SQLiteKeyStore(path) as s:
        s.add("p", budget=1000)
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(str(path), 1000, start, out)) for _ in range(2)]
    for p in procs:
        p.start()
    start.set()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    total = Counter()
    for r in results:
        total.update(r)
    assert total == {"ok": 1000, "quota": 1000}
    with SQLiteKeyStore(path) as s:
        assert s.list()[0]["used"] == 1000


def test_rate_limit_refuses_then_recovers(store):
    store.add("r", budget=1000, rate=20.0)  # bucket of 20 images, 20 images/s
    assert store.charge("r", 20).ok  # the full bucket
    refused = store.charge("r", 5)
    assert not refused.ok and refused.reason == "rate" and refused.remaining == 980
    assert 0 < refused.retry_after <= 5 / 20 + 0.01
    assert store.list()[0]["used"] == 20  # nothing charged
    time.sleep(refused.retry_after + 0.02)
    assert store.charge("r", 5).ok


def test_a_request_larger_than_the_bucket_passes_and_pays_for_it(store):
    store.add("big", budget=1000, rate=10.0)
    assert store.charge("big", 64).ok  # a full bucket lets a 64-image batch through...
    refused = store.charge("big", 1)
    assert refused.reason == "rate" and refused.retry_after > 5  # ...and the debt waits 5.4 s


def test_slow_rates_have_a_bucket_of_one_image(store):
    store.add("slow", budget=10, rate=0.5)
    assert store.charge("slow", 1).ok
    refused = store.charge("slow", 1)
    assert refused.reason == "rate" and 1.9 < refused.retry_after <= 2.0


def test_quota_is_reported_before_rate(store):
    store.add("q", budget=2, rate=1.0)
    assert store.charge("q", 2).ok
    assert store.charge("q", 1) == Charge(False, 0, None, "quota")


def test_restart_keeps_counts_and_keys(tmp_path):
    path = tmp_path / "keys.sqlite"
    store = SQLiteKeyStore(path)
    secret = store.add("s", budget=50, rate=1000)
    store.add("gone", budget=5)
    store.revoke("gone")
    for _ in range(30):
        assert store.charge("s", 1).ok
    store.close()
    with SQLiteKeyStore(path) as again:
        assert again.authorize(secret) == "s"
        assert {r["name"]: (r["used"], r["revoked"]) for r in again.list()} == {
            "s": (30, False),
            "gone": (0, True),
        }
        assert again.charge("s", 20).remaining == 0
        assert again.charge("s", 1).reason == "quota"


def test_file_is_in_wal_mode_with_a_schema_version(tmp_path):
    path = tmp_path / "keys.sqlite"
    SQLiteKeyStore(path).close()
    con = sqlite3.connect(path)
    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    info = dict(con.execute("SELECT name, value FROM schema_info").fetchall())
    assert info["kind"] == "rnd keys" and info["schema_version"] == "1"
    con.close()


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda s: s.add("x", budget=0), "budget"),
        (lambda s: s.add("x", budget=-3), "budget"),
        (lambda s: s.add("x", budget=1.5), "budget"),
        (lambda s: s.add("x", budget=10, rate=-1), "rate"),
        (lambda s: s.add("x", budget=10, rate=0), "rate"),
        (lambda s: s.add("x", budget=10, rate=float("nan")), "rate"),
        (lambda s: s.add("", budget=10), "name"),
        (lambda s: s.add("has space", budget=10), "name"),
        (lambda s: s.add("dup", budget=10), "exists already"),
        (lambda s: s.revoke("nobody"), "no key named"),
        (lambda s: s.charge("nobody", 1), "no key named"),
        (lambda s: s.charge("dup", 0), "images"),
    ],
)
def test_bad_input_is_refused_in_one_line(store, call, match):
    store.add("dup", budget=10)
    with pytest.raises(InputError, match=match) as err:
        call(store)
    assert "\n" not in str(err.value)
    assert [r["name"] for r in store.list()] == ["dup"] and store.list()[0]["used"] == 0


def _untouched(path: Path) -> str:
    before = path.read_bytes()
    with pytest.raises(InputError) as err:
        SQLiteKeyStore(path)
    assert "\n" not in str(err.value)
    assert path.read_bytes() == before
    return str(err.value)


def test_bad_paths_are_refused_untouched(tmp_path):
    with pytest.raises(InputError, match="not a file"):
        SQLiteKeyStore(tmp_path)
    text = tmp_path / "notes.txt"
    text.write_text("hello, not a database\n")
    assert "not an SQLite database" in _untouched(text)
    other = tmp_path / "other.sqlite"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE t (x)")
    con.commit()
    con.close()
    assert "not an rnd key database" in _untouched(other)
    results = tmp_path / "results.sqlite"
    ResultsStore(results).close()
    assert "not an rnd key database" in _untouched(results)
    newer = tmp_path / "newer.sqlite"
    SQLiteKeyStore(newer).close()
    con = sqlite3.connect(newer)
    con.execute("UPDATE schema_info SET value = '99' WHERE name = 'schema_version'")
    con.commit()
    con.close()
    assert "schema version 99" in _untouched(newer)


def test_an_empty_file_becomes_a_key_database(tmp_path):
    path = tmp_path / "empty.sqlite"
    path.touch()
    with SQLiteKeyStore(path) as s:
        assert s.authorize(s.add("e", budget=1)) == "e"


def test_a_closed_store_says_so(tmp_path):
    s = SQLiteKeyStore(tmp_path / "k.sqlite")
    s.close()
    with pytest.raises(InputError, match="closed"):
        s.list()
