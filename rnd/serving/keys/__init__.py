"""API keys and image quotas for the server, behind one interface (`KeyStore`, in `base`): an SQLite
file on one host (`SQLiteKeyStore`, the default) or a PostgreSQL database shared by hosts
(`PostgresKeyStore`, the `postgres` extra). `open_keys` picks by what it is given."""

from __future__ import annotations

from pathlib import Path

from rnd.serving.keys.base import (
    KEY_PREFIX,
    Charge,
    KeyStore,
    StoreUnavailable,
    check_name,
)
from rnd.serving.keys.sqlite import SQLiteKeyStore

__all__ = [
    "KEY_PREFIX",
    "Charge",
    "KeyStore",
    "SQLiteKeyStore",
    "StoreUnavailable",
    "check_name",
    "open_keys",
]


def open_keys(target: str | Path) -> KeyStore:
    """The key store at `target`: a path to an SQLite file (created when absent)."""
    return SQLiteKeyStore(target)
