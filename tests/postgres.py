"""A throwaway PostgreSQL server for the tests: Debian's `postgresql` binaries, a cluster made with
`initdb` in a temporary folder, started with `pg_ctl` on a free loopback port, removed afterwards. As
root, the server runs as the `postgres` user (initdb refuses root). No mock: the key store's tests
talk to a real server over TCP with a password."""

from __future__ import annotations

import contextlib
import glob
import os
import secrets
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest

USER = "rnd"


def binaries() -> Path:
    """The newest `/usr/lib/postgresql/N/bin` with initdb; skip the test without one (or fail when
    RND_REQUIRE_POSTGRES is set, as in CI, which installs it)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parent.parent.name)
    )
    if not found:
        message = "needs Debian's postgresql (scripts/install.sh dev installs it)"
        if os.environ.get("RND_REQUIRE_POSTGRES"):
            pytest.fail(message)
        pytest.skip(message)
    return Path(found[-1]).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Cluster:
    """One PostgreSQL server of its own: `url(db)` for a database of it, `create_database()` for a
    fresh one, `stop()` / `start()` / `restart()` / `kill()` to test failures."""

    def __init__(self) -> None:
        self.bin = binaries()
        self.root = Path(tempfile.mkdtemp(prefix="rnd-pg-"))
        self.data = self.root / "data"
        self.password = secrets.token_hex(12)
        self.port = free_port()
        self._as_root = os.geteuid() == 0
        pwfile = self.root / "pw"
        pwfile.write_text(self.password + "\n")
        if self._as_root:
            shutil.chown(self.root, "postgres", "postgres")
            shutil.chown(pwfile, "postgres", "postgres")
        self._run(
            "initdb", "-D", str(self.data), "-U", USER, "--pwfile", str(pwfile), "--auth-local=trust",
            "--auth-host=scram-sha-256", "-E", "UTF8", "--no-sync",
        )  # fmt: skip
        pwfile.unlink()
        self.start()
        self._databases = 0

    def _run(self, tool: str, *args: str) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin / tool), *args]
        if self._as_root:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        return subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> None:
        options = (
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c max_connections=200 -c shared_buffers=16MB"
        )
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "log"), "-o", options, "-w", "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def url(self, database: str = "postgres", password: str | None = None) -> str:
        pw = self.password if password is None else password
        return f"postgresql://{USER}:{pw}@127.0.0.1:{self.port}/{database}"

    def sql(self, statement: str, database: str = "postgres") -> str:
        """Run one statement with psql (the server's own client), as the test's superuser."""
        out = self._run(
            "psql", "-h", str(self.root), "-p", str(self.port), "-U", USER, "-d", database, "-v",
            "ON_ERROR_STOP=1", "-At", "-c", statement,
        )  # fmt: skip
        return out.stdout.strip()

    def create_database(self) -> str:
        """A fresh empty database; its URL."""
        self._databases += 1
        name = f"t{self._databases}"
        self.sql(f"CREATE DATABASE {name}")
        return self.url(name)

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)
