"""Quotas under concurrency, over real loopback HTTP with the real KeyStore (issue 15): 64 clients
on a key of 1,000 images send 2,000 one-image requests; exactly 1,000 are answered, 1,000 refused
with 429 and Retry-After, and the store says 1,000. A refused or invalid request charges nothing
and still carries the remaining quota."""

from __future__ import annotations

import threading

import httpx
import numpy as np
import torch

from rnd.defenses import build_defense
from rnd.models import build_model
from rnd.serving.app import create_app
from rnd.serving.keys import KeyStore
from tests.serving.test_server import Served


def body(seed: int) -> dict:
    x = np.random.default_rng(seed).random((1, 1, 28, 28), dtype=np.float32)
    return {
        "inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": x.ravel().tolist()}]
    }


def test_64_clients_2000_requests_on_a_1000_image_budget(tmp_path):
    torch.manual_seed(0)
    model = build_model("small-cnn", width=4, hidden=16).eval()
    store = KeyStore(tmp_path / "keys.sqlite")
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
        assert bad.status_code in (400, 422) and bad.headers["x-quota-remaining"] == "0"
    assert len(statuses) == 2000
    assert statuses.count(200) == 1000 and statuses.count(429) == 1000
    (row,) = store.list()
    assert row["used"] == 1000 and store.remaining("load") == 0
    store.close()
