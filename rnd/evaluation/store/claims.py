"""Who computes a cell: the owner id of a process (`host:pid:start`), whether a claim's owner is
still alive (at once on this host, after `CLAIM_LEASE_S` without a heartbeat on another), and the
heartbeat thread that keeps a live process's claims fresh."""

from __future__ import annotations

import datetime as _dt
import os
import socket
import sqlite3
import threading
from pathlib import Path

from rnd.evaluation.store.files import BUSY_TIMEOUT_S
from rnd.sqlite import now

HEARTBEAT_S = 30.0


CLAIM_LEASE_S = 600.0  # a claim from another host is stale after this long without a heartbeat


def owner_id() -> str:
    """This process, as `host:pid:start`; `start` (the process start time) tells a live process
    from a later one that got the same pid."""
    return f"{socket.gethostname()}:{os.getpid()}:{_start_time(os.getpid())}"


def _start_time(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "?"
    return stat.rsplit(")", 1)[1].split()[19]  # field 22 (starttime), counted after the command name


def owner_alive(owner: str, claimed_at: str | None) -> bool:
    host, _, rest = owner.partition(":")
    pid_text, _, start = rest.partition(":")
    if host != socket.gethostname():
        if claimed_at is None:
            return False
        age = _dt.datetime.now(_dt.UTC) - _dt.datetime.fromisoformat(claimed_at)
        return age.total_seconds() < CLAIM_LEASE_S
    try:
        pid = int(pid_text)
        os.kill(pid, 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True  # alive, another user's
    return start in ("?", _start_time(pid))


class Heartbeat:
    """A daemon thread that refreshes `claimed_at` of this process's claims every `HEARTBEAT_S`, so
    that a claim outlives a long cell while a dead process's claims go stale."""

    def __init__(self, path: Path, owner: str) -> None:
        self.path, self.owner = path, owner
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rnd-store-heartbeat", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                con = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S)
                try:
                    with con:
                        con.execute(
                            "UPDATE cells SET claimed_at = ? WHERE claimed_by = ?", (now(), self.owner)
                        )
                finally:
                    con.close()
            except sqlite3.Error:
                continue  # try again next beat; a missed beat only shortens the lease

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
