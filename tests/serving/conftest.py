"""The key store every test of the store's contract runs on: SQLite and PostgreSQL."""

from __future__ import annotations

import pytest


@pytest.fixture(params=["sqlite", "postgres"])
def target(request: pytest.FixtureRequest, tmp_path) -> str:
    """Where a fresh key store lives: an SQLite path, or the URL of a fresh database of the session's
    PostgreSQL server (tests/postgres.py)."""
    if request.param == "sqlite":
        return str(tmp_path / "keys.sqlite")
    return request.getfixturevalue("pg_cluster").create_database()
