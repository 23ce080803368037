"""`rnd serve --workers 2 --keys postgresql://...` over real loopback HTTP against a real PostgreSQL
server (tests/postgres.py): the quota exact under 64 concurrent clients across two worker
processes, and a database restart under load refused cleanly (503, nothing answered uncharged)
and recovered from without restarting the server."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
import torch

from rnd.models import build_model, save_checkpoint
from rnd.serving.keys import open_keys
from tests.postgres import free_port
from tests.serving.test_quota_http import body, start_server


@pytest.fixture(scope="module")
def served(tmp_path_factory, pg_cluster) -> Iterator[tuple[str, str]]:
    """One `rnd serve --workers 2` on a PostgreSQL key store for the module: (its URL, the store's)."""
    folder = tmp_path_factory.mktemp("pg-served")
    torch.manual_seed(0)
    save_checkpoint(build_model("small-cnn", width=4, hidden=16), folder / "tiny", dataset="fashion-mnist")
    url = pg_cluster.create_database()
    with open_keys(url) as store:
        store.add("first", budget=1)  # a key store exists before the server starts
    proc, base = start_server(folder / "tiny", url, free_port(), "--workers", "2")
    yield base, url
    proc.terminate()
    proc.wait(20)


def test_two_workers_64_clients_exact_quota_on_postgres(served):
    base, url = served
    with open_keys(url) as store:
        key = store.add("load", budget=1000)
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    payloads = [body(i) for i in range(50)]

    def client(c: int) -> None:
        with httpx.Client(base_url=base, headers={"authorization": f"Bearer {key}"}, timeout=60) as http:
            for i in range(c, 2000, 64):
                r = http.post("/v2/models/tiny/infer", json=payloads[i % 50])
                with lock:
                    statuses[r.status_code] += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(64)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses == {200: 1000, 429: 1000}
    with open_keys(url) as store:
        assert {r["name"]: r["used"] for r in store.list()}["load"] == 1000


def test_database_restart_under_load_refuses_cleanly_and_recovers(served, pg_cluster):
    """16 clients send one-image requests; PostgreSQL is stopped (fast shutdown: connections cut) for
    about a second, then started again. Every answer is 200 or 503; the store has charged every
    answered image, and beyond that at most the requests refused meanwhile; the same server answers
    again within 10 s of the database's return."""
    base, url = served
    with open_keys(url) as store:
        key = store.add("heavy", budget=1_000_000)
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    stop = threading.Event()
    back: list[float] = []
    restarted = threading.Event()

    def client(c: int) -> None:
        with httpx.Client(base_url=base, headers={"authorization": f"Bearer {key}"}, timeout=30) as http:
            while not stop.is_set():
                r = http.post("/v2/models/tiny/infer", json=body(c))
                with lock:
                    statuses[r.status_code] += 1
                    if r.status_code == 503:
                        assert r.json()["code"] == "not_ready" and r.headers["retry-after"] == "1"
                    if r.status_code == 200 and restarted.is_set() and not back:
                        back.append(time.monotonic())
                if r.status_code == 503:
                    time.sleep(0.05)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(16)]
    try:
        for t in threads:
            t.start()
        deadline = time.monotonic() + 60
        while statuses[200] < 200 and time.monotonic() < deadline:
            time.sleep(0.01)
        pg_cluster.stop()
        time.sleep(1.0)
        with lock:
            refused_while_down = statuses[503]
        pg_cluster.start()
        up = time.monotonic()
        restarted.set()
        while not back and time.monotonic() < up + 30:
            time.sleep(0.01)
        time.sleep(0.5)  # some answers after the return
    finally:
        stop.set()
        for t in threads:
            t.join(30)
    with open_keys(url) as store:
        used = {r["name"]: r["used"] for r in store.list()}["heavy"]
    figures = {
        "statuses": dict(statuses),
        "charged": used,
        "refused_while_down": refused_while_down,
        "answering_again_s_after_start": round(back[0] - up, 2) if back else None,
    }
    print("database restart under load:", figures)  # pytest -s shows it
    assert set(statuses) <= {200, 503}, figures
    assert refused_while_down > 0 and back and back[0] - up < 10.0, figures
    assert statuses[200] <= used <= statuses[200] + statuses[503], figures
