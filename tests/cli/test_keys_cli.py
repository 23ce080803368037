"""`rnd keys add | list | revoke` end to end on a real key database: the key printed once and never
again, the table without keys, and bad input as one line with exit status 2."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from rnd.cli import main
from rnd.serving.keys import KEY_PREFIX, SQLiteKeyStore, open_keys


def rnd(*args: str):
    return CliRunner().invoke(main, ["keys", *args])


@pytest.fixture
def db(tmp_path):
    return tmp_path / "keys.sqlite"


def test_add_prints_the_key_once_and_it_works(db):
    result = rnd("add", "alice", "--budget", "100", "--rate", "5", "--db", str(db))
    assert result.exit_code == 0, result.output
    (secret,) = result.stdout.splitlines()  # stdout: the key alone, ready for $(...)
    assert secret.startswith(KEY_PREFIX)
    assert "will not be shown again" in result.stderr and secret not in result.stderr
    with SQLiteKeyStore(db) as store:
        assert store.authorize(secret) == "alice"
        assert store.charge("alice", 3).remaining == 97
    listed = rnd("list", "--db", str(db))
    assert listed.exit_code == 0 and secret not in listed.output
    assert secret.removeprefix(KEY_PREFIX) not in db.read_bytes().decode("latin-1")


def test_list_shows_a_table_and_json_without_keys(db):
    secrets_ = [rnd("add", n, "--budget", "10", "--db", str(db)).stdout.strip() for n in ("a", "b")]
    with SQLiteKeyStore(db) as store:
        store.charge("a", 4)
    assert rnd("revoke", "b", "--db", str(db)).exit_code == 0
    table = rnd("list", "--db", str(db))
    assert table.exit_code == 0, table.output
    header, row_a, row_b = table.output.splitlines()
    assert header.split() == ["name", "budget", "used", "remaining", "rate/s", "state", "created"]
    assert row_a.split()[:6] == ["a", "10", "4", "6", "-", "active"]
    assert row_b.split()[:6] == ["b", "10", "0", "10", "-", "revoked"]
    rows = json.loads(rnd("list", "--db", str(db), "--json").output)
    assert [(r["name"], r["used"], r["revoked"]) for r in rows] == [("a", 4, False), ("b", 0, True)]
    for secret in secrets_:
        assert secret not in table.output and secret not in json.dumps(rows)


def test_revoke_refuses_the_key(db):
    secret = rnd("add", "carol", "--budget", "10", "--db", str(db)).stdout.strip()
    result = rnd("revoke", "carol", "--db", str(db))
    assert result.exit_code == 0 and "revoked" in result.output
    with SQLiteKeyStore(db) as store:
        assert store.authorize(secret) is None


def test_an_empty_database_says_how_to_add_a_key(db):
    SQLiteKeyStore(db).close()
    result = rnd("list", "--db", str(db))
    assert result.exit_code == 0 and "rnd keys add" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "x", "--budget", "0"], "--budget"),
        (["add", "x", "--budget", "ten"], "--budget"),
        (["add", "x", "--budget", "5", "--rate", "-1"], "--rate"),
        (["add", "bad name", "--budget", "5"], "key name"),
        (["add", "dup", "--budget", "5"], "exists already"),
        (["revoke", "nobody"], "no key named 'nobody'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(db, args, message):
    assert rnd("add", "dup", "--budget", "3", "--db", str(db)).exit_code == 0
    result = rnd(*args, "--db", str(db))
    assert result.exit_code == 2, result.output
    assert message in result.output
    with SQLiteKeyStore(db) as store:
        assert [(r["name"], r["used"]) for r in store.list()] == [("dup", 0)]


def test_bad_databases_are_one_line_and_exit_2(tmp_path):
    missing = rnd("list", "--db", str(tmp_path / "missing.sqlite"))
    assert missing.exit_code == 2 and "no rnd key database" in missing.output
    assert not (tmp_path / "missing.sqlite").exists()
    folder = rnd("add", "x", "--budget", "5", "--db", str(tmp_path))
    assert folder.exit_code == 2 and "not a file" in folder.output
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n")
    for args in (["add", "x", "--budget", "5"], ["list"], ["revoke", "x"]):
        result = rnd(*args, "--db", str(text))
        assert result.exit_code == 2 and "not an SQLite database" in result.output
        assert len(result.output.strip().splitlines()) == 1
    assert text.read_text() == "not a database\n"
    no_db = rnd("add", "x", "--budget", "5")
    assert no_db.exit_code == 2 and "--db" in no_db.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["add", "bad name", "--budget", "5"], "key name"),
        (["add", "x", "--budget", str(2**63)], "--budget"),
        (["add", "x", "--budget", "5", "--rate", "0"], "--rate"),
        (["list"], "no rnd key database"),
        (["revoke", "x"], "no rnd key database"),
        (["copy", "{db}", "{db}.copy"], "no rnd key database"),
    ],
)
def test_nothing_is_written_before_the_input_is_checked(tmp_path, args, message):
    db = tmp_path / "keys.sqlite"
    args = [a.format(db=db) for a in args]
    result = rnd(*args) if args[0] == "copy" else rnd(*args, "--db", str(db))
    assert result.exit_code == 2 and message in result.output, result.output
    assert list(tmp_path.iterdir()) == []


def test_keys_on_postgres_end_to_end_and_copied_from_sqlite(tmp_path, pg_cluster):
    url = pg_cluster.create_database()
    added = rnd("add", "alice", "--budget", "100", "--rate", "5", "--db", url)
    assert added.exit_code == 0, added.output
    secret = added.stdout.strip()
    assert pg_cluster.password not in added.output
    listed = rnd("list", "--db", url)
    assert listed.exit_code == 0 and listed.output.splitlines()[1].split()[:6] == [
        "alice", "100", "0", "100", "5", "active",
    ]  # fmt: skip
    db = tmp_path / "keys.sqlite"
    old = rnd("add", "bob", "--budget", "10", "--db", str(db)).stdout.strip()
    with SQLiteKeyStore(db) as store:
        store.charge("bob", 7)
    copied = rnd("copy", str(db), url)
    assert copied.exit_code == 0 and "copied 1 keys (7 images used in all)" in copied.output
    assert pg_cluster.password not in copied.output and ":***@" in copied.output
    again = rnd("copy", str(db), url)
    assert again.exit_code == 2 and "nothing was copied" in again.output
    assert rnd("revoke", "alice", "--db", url).exit_code == 0
    with open_keys(url) as store:
        assert store.authorize(old) == "bob" and store.authorize(secret) is None
        assert {r["name"]: (r["used"], r["revoked"]) for r in store.list()} == {
            "alice": (0, True),
            "bob": (7, False),
        }
    bad = rnd("list", "--db", url.replace(pg_cluster.password, "nope"))
    assert bad.exit_code == 2 and "password authentication failed" in bad.output
    assert len(bad.output.strip().splitlines()) == 1
    empty = rnd("list", "--db", pg_cluster.create_database())
    assert empty.exit_code == 2 and "holds no rnd key store" in empty.output
    foreign = pg_cluster.create_database()
    db_name = foreign.rsplit("/", 1)[1]
    pg_cluster.sql("CREATE TABLE orders (id int)", db_name)
    for args in (["add", "x", "--budget", "5", "--db", foreign], ["copy", str(db), foreign]):
        refused = rnd(*args)
        assert refused.exit_code == 2 and "not an rnd key store" in refused.output, refused.output
        assert len(refused.output.strip().splitlines()) == 1
    tables = "SELECT string_agg(tablename, ',') FROM pg_tables WHERE schemaname = 'public'"
    assert pg_cluster.sql(tables, db_name) == "orders"  # nothing written
