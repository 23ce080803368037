"""Quotas under concurrency, over real loopback HTTP with the real key stores (issue 15; PostgreSQL
since issue 33): 64 clients on a key of 1,000 images send 2,000 one-image requests; exactly 1,000
are answered, 1,000 refused with 429 and Retry-After, and the store says 1,000. A refused or invalid
request charges nothing and still carries the remaining quota."""

from __future__ import annotations

import threading

import httpx
import numpy as np
import torch

from rnd.defenses import build_defense
from rnd.models import build_model
from rnd.serving.app import create_app
from rnd.serving.keys import SQLiteKeyStore, open_keys
from tests.serving.test_server import Served


def body(seed: int) -> dict:
    x = np.random.default_rng(seed).random((1, 1, 28, 28), dtype=np.float32)
    return {
        "inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": x.ravel().tolist()}]
    }


def test_64_clients_2000_requests_on_a_1000_image_budget(tmp_path):
    """On SQLite; the same load on PostgreSQL, across two workers, is test_quota_postgres.py's."""
    torch.manual_seed(0)
    model = build_model("small-cnn", width=4, hidden=16).eval()
    store = open_keys(tmp_path / "keys.sqlite")
    key = store.add("load", budget=1000)
    app = create_app(model, build_defense("rnd:nu=0.02", model, seed=0), name="tiny", keys=store)
    statuses: list[int] = []
    lock = threading.Lock()
    with Served(app) as served:
        headers = {"authorization": f"Bearer {key}"}
        payloads = [body(i % 50) for i in range(50)]

        def client(c: int) -> None:
            with httpx.Client(base_url=served.url, headers=headers, timeout=60) as http:
                for i in range(c, 2000, 64):
                    r = http.post("/v2/models/tiny/infer", json=payloads[i % 50])
                    if r.status_code == 429:
                        assert float(r.headers["retry-after"]) > 0 and r.headers["x-quota-remaining"] == "0"
                    with lock:
                        statuses.append(r.status_code)

        threads = [threading.Thread(target=client, args=(c,)) for c in range(64)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        bad = served.client.post(
            "/v2/models/tiny/infer", headers=headers, json={"inputs": [{"name": "input", "shape": [1]}]}
        )
        # the used-up key is refused before its body is read: 429, not a parse error
        assert bad.status_code == 429 and bad.json()["code"] == "quota"
        assert bad.headers["x-quota-remaining"] == "0" and bad.headers["connection"] == "close"
    assert len(statuses) == 2000
    assert statuses.count(200) == 1000 and statuses.count(429) == 1000
    (row,) = store.list()
    assert row["used"] == 1000 and store.remaining("load") == 0
    store.close()


def start_server(checkpoint, keys, port: int, *extra: str, start_new_session: bool = False):
    import subprocess
    import sys
    import time

    cmd = [sys.executable, "-c", "from rnd.cli import main; main()", "serve", str(checkpoint)]
    proc = subprocess.Popen(
        [*cmd, "--port", str(port), "--keys", str(keys), "--seed", "1", *extra],
        stderr=subprocess.PIPE,
        start_new_session=start_new_session,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        assert proc.poll() is None and time.monotonic() < deadline, (
            proc.stderr.read().decode() if proc.stderr else ""
        )
        time.sleep(0.1)


def test_sigkill_under_load_never_answers_uncharged_images(tmp_path):
    """SIGKILL of `rnd serve` while 8 clients send one-image requests: the store has charged at least
    every answered image, and at most the requests in flight more; after a restart the counts are
    kept and the key still works."""
    import signal
    import socket
    import time

    from rnd.models import save_checkpoint

    torch.manual_seed(0)
    save_checkpoint(build_model("small-cnn", width=4, hidden=16), tmp_path / "tiny", dataset="fashion-mnist")
    keys = tmp_path / "keys.sqlite"
    with SQLiteKeyStore(keys) as store:
        key = store.add("load", budget=100_000)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc, url = start_server(tmp_path / "tiny", keys, port)
    answered = 0
    lock = threading.Lock()
    stop = threading.Event()

    def client(c: int) -> None:
        nonlocal answered
        with httpx.Client(base_url=url, headers={"authorization": f"Bearer {key}"}, timeout=10) as http:
            while not stop.is_set():
                try:
                    r = http.post("/v2/models/tiny/infer", json=body(c))
                except httpx.HTTPError:
                    return  # the server died under us
                if r.status_code == 200:
                    with lock:
                        answered += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 30
        while answered < 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        stop.set()
        for t in threads:
            t.join(15)
        if proc.poll() is None:
            proc.kill()
    with SQLiteKeyStore(keys) as store:
        used = store.list()[0]["used"]
    assert answered >= 200 and answered <= used <= answered + 8  # at most one request in flight per client
    proc, url = start_server(tmp_path / "tiny", keys, port)
    try:
        r = httpx.post(
            f"{url}/v2/models/tiny/infer", json=body(0), headers={"authorization": f"Bearer {key}"}
        )
        assert r.status_code == 200 and int(r.headers["x-quota-remaining"]) == 100_000 - used - 1
    finally:
        proc.terminate()
        proc.wait(10)
