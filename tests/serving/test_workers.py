"""`rnd serve --workers 2`: two server processes on one port share the key store, so a quota holds
across them (issue 15); each worker draws its own noise."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import threading

import httpx
import pytest
import torch

from rnd.models import build_model, save_checkpoint
from rnd.serving.factory import worker_seed
from rnd.serving.keys import SQLiteKeyStore
from tests.serving.test_quota_http import body, start_server


@pytest.mark.slow  # 960 requests on new connections (about 25 s); the default suite has two-worker
# quota tests in test_quota_images.py (SQLite) and test_quota_postgres.py (PostgreSQL)
def test_two_workers_share_one_quota(tmp_path):
    torch.manual_seed(0)
    save_checkpoint(build_model("small-cnn", width=4, hidden=16), tmp_path / "tiny", dataset="fashion-mnist")
    keys = tmp_path / "keys.sqlite"
    with SQLiteKeyStore(keys) as store:
        key = store.add("two", budget=500)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc, url = start_server(tmp_path / "tiny", keys, port, "--workers", "2", start_new_session=True)
    try:
        workers = subprocess.run(
            ["pgrep", "-P", str(proc.pid)], capture_output=True, text=True
        ).stdout.split()
        assert len(workers) >= 2  # uvicorn's supervisor and its worker processes
        statuses: list[int] = []
        lock = threading.Lock()

        def client(c: int) -> None:
            # a new connection per request, so the kernel spreads them over both workers
            for _ in range(60):
                r = httpx.post(
                    f"{url}/v2/models/tiny/infer", json=body(c), headers={"authorization": f"Bearer {key}"}
                )
                with lock:
                    statuses.append(r.status_code)

        threads = [threading.Thread(target=client, args=(c,)) for c in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    assert statuses.count(200) == 500 and statuses.count(429) == 460
    with SQLiteKeyStore(keys) as store:
        assert store.list()[0]["used"] == 500


def test_worker_seeds_differ_and_entropy_stays_entropy():
    assert worker_seed(None, 11) is None
    assert worker_seed(3, 11) != worker_seed(3, 12) and worker_seed(3, 11) == worker_seed(3, 11)
