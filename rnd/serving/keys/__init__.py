"""API keys and image quotas for the server, behind one interface (`KeyStore`, in `base`): an SQLite
file on one host (`SQLiteKeyStore`, the default) or a PostgreSQL database shared by hosts
(`PostgresKeyStore`, the `postgres` extra). `open_keys` picks by what it is given."""

from __future__ import annotations

from pathlib import Path

from rnd.serving.keys.base import (
    KEY_PREFIX,
    Admission,
    Charge,
    KeyStore,
    StoreUnavailable,
    check_name,
)
from rnd.serving.keys.postgres import PostgresKeyStore, is_postgres_url, redact
from rnd.serving.keys.sqlite import SQLiteKeyStore

__all__ = [
    "KEY_PREFIX",
    "Admission",
    "Charge",
    "KeyStore",
    "PostgresKeyStore",
    "SQLiteKeyStore",
    "StoreUnavailable",
    "check_name",
    "is_postgres_url",
    "open_keys",
    "redact",
]


def open_keys(target: str | Path, *, create: bool = True) -> KeyStore:
    """The key store at `target`: a `postgresql://` (or `postgres://`) URL, else the path of an
    SQLite file. `create=False` refuses a target without a key store instead of creating one (what
    everything but `rnd keys add` and `rnd keys copy` wants)."""
    if is_postgres_url(target):
        return PostgresKeyStore(str(target), create=create)
    return SQLiteKeyStore(target, create=create)
