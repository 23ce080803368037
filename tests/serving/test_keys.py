"""API keys and quotas on both stores, a real SQLite file and a real PostgreSQL server
(tests/postgres.py): secrets never stored, charges atomic across threads, processes and restarts, rate
limits that refuse and recover, bad input refused in one line. The contract's tests take `store` or
`target` and run on both; the file's and the server's own checks follow."""

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
from rnd.serving.keys import KEY_PREFIX, Charge, KeyStore, SQLiteKeyStore, StoreUnavailable, open_keys


@pytest.fixture
def store(target):
    s = open_keys(target)
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
    store = open_keys(path)
    secrets_ = [store.add(f"k{i}", budget=10, rate=5) for i in range(5)]
    store.charge("k0", 1)
    before_close = b"".join(p.read_bytes() for p in tmp_path.iterdir())  # the WAL too
    store.close()
    after_close = b"".join(p.read_bytes() for p in tmp_path.iterdir())
    for secret in secrets_:
        body = secret.removeprefix(KEY_PREFIX).encode()
        for blob in (before_close, after_close):
            assert body not in blob and body[:16] not in blob


def test_the_database_holds_no_key_text(pg_cluster):
    """PostgreSQL's own files (tables, WAL), after a checkpoint: no secret, no part of one."""
    store = open_keys(pg_cluster.create_database())
    secrets_ = [store.add(f"k{i}", budget=10, rate=5) for i in range(5)]
    store.charge("k0", 1)
    store.close()
    pg_cluster.sql("CHECKPOINT")
    blob = b"".join(p.read_bytes() for p in pg_cluster.data.rglob("*") if p.is_file())
    assert b"k0" in blob  # the names are there: the search can find what is written
    for secret in secrets_:
        body = secret.removeprefix(KEY_PREFIX).encode()
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


def test_64_threads_on_one_store_per_thread(target):
    """Each thread with its own KeyStore (its own connection): SQLite's lock alone keeps the quota."""
    path = target
    with open_keys(path) as s:
        s.add("t", budget=300)
    local = threading.local()
    opened: list[KeyStore] = []

    def one(_: int) -> str:
        if not hasattr(local, "store"):
            local.store = open_keys(path)
            opened.append(local.store)
        return local.store.charge("t", 1).reason or "ok"

    with ThreadPoolExecutor(16) as pool:
        outcome = Counter(pool.map(one, range(600)))
    for s in opened:
        s.close()
    assert outcome == {"ok": 300, "quota": 300}
    with open_keys(path) as s:
        assert s.list()[0]["used"] == 300


def _worker(path: str, n: int, start: Any, out: Any) -> None:
    store = open_keys(path)
    start.wait()
    out.put(dict(_charge_many(store, "p", n, threads=32)))
    store.close()


def test_two_processes_share_the_quota(target):
    path = target
    with open_keys(path) as s:
        s.add("p", budget=1000)
    ctx = mp.get_context("spawn")
    start, out = ctx.Event(), ctx.Queue()
    procs = [ctx.Process(target=_worker, args=(path, 1000, start, out)) for _ in range(2)]
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
    with open_keys(path) as s:
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


def test_restart_keeps_counts_and_keys(target):
    path = target
    store = open_keys(path)
    secret = store.add("s", budget=50, rate=1000)
    store.add("gone", budget=5)
    store.revoke("gone")
    for _ in range(30):
        assert store.charge("s", 1).ok
    store.close()
    with open_keys(path) as again:
        assert again.authorize(secret) == "s"
        assert {r["name"]: (r["used"], r["revoked"]) for r in again.list()} == {
            "s": (30, False),
            "gone": (0, True),
        }
        assert again.charge("s", 20).remaining == 0
        assert again.charge("s", 1).reason == "quota"


def test_file_is_in_wal_mode_with_a_schema_version(tmp_path):
    path = tmp_path / "keys.sqlite"
    open_keys(path).close()
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
        open_keys(path)
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
    with open_keys(path) as s:
        assert s.authorize(s.add("e", budget=1)) == "e"


def test_a_closed_store_says_so(target):
    s = open_keys(target)
    s.close()
    with pytest.raises(InputError, match="closed"):
        s.list()


# -- PostgreSQL: the server's own failures and bad input ---------------------------------------------


TABLES = "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"


def test_postgres_bad_urls_are_one_line_and_echo_no_password(pg_cluster):
    url = pg_cluster.create_database()
    port = pg_cluster.port
    cases = [
        (url.replace(pg_cluster.password, "wrong-password"), InputError, "password authentication failed"),
        (pg_cluster.url("no_such_db"), InputError, 'database "no_such_db" does not exist'),
        (
            f"postgresql://rnd:pw@127.0.0.1:{port + 1 if port < 65535 else 1}/x",
            StoreUnavailable,
            "unreachable",
        ),
        ("postgresql://rnd:pw@127.0.0.1:notaport/x", InputError, "not a valid PostgreSQL URL"),
    ]
    for bad, kind, match in cases:
        with pytest.raises(kind, match=match) as err:
            open_keys(bad)
        text = str(err.value)
        assert "\n" not in text and "wrong-password" not in text and pg_cluster.password not in text
        assert ":***@" in text
    assert pg_cluster.sql(TABLES, url.rsplit("/", 1)[1]) == "0"
    open_keys(url).close()  # the good URL still opens


def test_postgres_foreign_and_newer_databases_are_refused_untouched(pg_cluster):
    other = pg_cluster.create_database()
    db = other.rsplit("/", 1)[1]
    pg_cluster.sql("CREATE TABLE orders (id int)", db)
    with pytest.raises(InputError, match="not an rnd key store") as err:
        open_keys(other)
    assert "\n" not in str(err.value)
    assert (
        pg_cluster.sql("SELECT string_agg(tablename, ',') FROM pg_tables WHERE schemaname = 'public'", db)
        == "orders"
    )
    newer = pg_cluster.create_database()
    db = newer.rsplit("/", 1)[1]
    open_keys(newer).close()
    pg_cluster.sql("UPDATE schema_info SET value = '99' WHERE name = 'schema_version'", db)
    with pytest.raises(InputError, match="schema version 99"):
        open_keys(newer)
    assert pg_cluster.sql("SELECT value FROM schema_info WHERE name = 'schema_version'", db) == "99"
    empty = pg_cluster.create_database()
    with pytest.raises(InputError, match="holds no rnd key store"):
        open_keys(empty, create=False)
    assert (
        pg_cluster.sql("SELECT count(*) FROM pg_tables WHERE schemaname = 'public'", empty.rsplit("/", 1)[1])
        == "0"
    )


def test_postgres_schema_is_created_once_by_stores_opening_together(pg_cluster):
    url = pg_cluster.create_database()
    with ThreadPoolExecutor(8) as pool:
        stores = list(pool.map(lambda _: open_keys(url), range(8)))
    stores[0].add("one", budget=5)
    assert all([r["name"] for r in s.list()] == ["one"] for s in stores)
    for s in stores:
        s.close()


def test_postgres_restart_refuses_cleanly_then_recovers_without_reopening(pg_cluster):
    url = pg_cluster.create_database()
    store = open_keys(url)
    secret = store.add("r", budget=100)
    assert store.charge("r", 10).ok
    pg_cluster.stop()
    try:
        with pytest.raises(StoreUnavailable) as err:
            store.charge("r", 1)
        assert "\n" not in str(err.value) and pg_cluster.password not in str(err.value)
        with pytest.raises(StoreUnavailable):
            store.authorize(secret)
    finally:
        pg_cluster.start()
    assert store.authorize(secret) == "r"  # the same store object: new connections
    assert store.charge("r", 5) == Charge(True, 85, None, "")
    assert store.list()[0]["used"] == 15
    store.close()


def test_sqlite_keys_copied_into_postgres_keep_secrets_counts_and_states(tmp_path, pg_cluster):
    with open_keys(tmp_path / "keys.sqlite") as src:
        a = src.add("a", budget=100, rate=3)
        b = src.add("b", budget=50)
        src.charge("a", 3)
        src.charge("b", 20)
        src.revoke("b")
        rows = src.dump()
    url = pg_cluster.create_database()
    with open_keys(url) as dst:
        dst.add("c", budget=1)
        dst.load(rows)
        assert dst.authorize(a) == "a" and dst.authorize(b) is None  # b was revoked
        listed = {r["name"]: (r["budget"], r["used"], r["rate"], r["revoked"]) for r in dst.list()}
        assert listed == {"a": (100, 3, 3.0, False), "b": (50, 20, None, True), "c": (1, 0, None, False)}
        assert dst.charge("a", 1).reason == "rate"  # the bucket came along: 3 taken, nearly empty
        with pytest.raises(InputError, match=r"'a'.*nothing was copied"):
            dst.load(rows)
        assert len(dst.list()) == 3
