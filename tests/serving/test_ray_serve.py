"""`rnd serve --engine ray --replicas 2` (issue 15): two Ray Serve replicas behind Ray's HTTP proxy
share one key store, so a quota holds across them; status codes and headers come through the proxy;
SIGTERM shuts Serve and the local Ray down with no process left behind."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
import torch
from click.testing import CliRunner

from rnd.cli import main
from rnd.models import build_model, save_checkpoint
from rnd.serving.keys import SQLiteKeyStore
from tests.serving.test_quota_http import body, start_server

REPLICA = "ServeReplica:rnd:RndReplica"  # the process title Ray gives a replica of our deployment


def _session(sid: int) -> dict[int, str]:
    """pid -> command line of the live (not zombie) processes of session `sid`."""
    rows = subprocess.run(["ps", "-eo", "pid=,sid=,stat=,args="], capture_output=True, text=True).stdout
    out = {}
    for row in rows.splitlines():
        parts = row.split(None, 3)
        if len(parts) == 4 and parts[1] == str(sid) and not parts[2].startswith("Z"):
            out[int(parts[0])] = parts[3]
    return out


def _replica_metrics(url: str, tries: int = 30) -> dict[str, float]:
    """`rnd_images_total` of each replica that answers `/metrics` within `tries` calls, keyed by the
    replica's whole idle metrics text (its counters' creation times make it unique to the replica)."""
    seen: dict[str, float] = {}
    for _ in range(tries):
        text = httpx.get(f"{url}/metrics", timeout=10).text
        lines = [line for line in text.splitlines() if line.startswith("rnd_")]
        images = next(float(line.split()[-1]) for line in lines if line.startswith("rnd_images_total"))
        seen["\n".join(lines)] = images
    return seen


@pytest.mark.slow
def test_two_ray_replicas_share_one_quota_and_shut_down_cleanly(tmp_path):
    pytest.importorskip("ray.serve")
    torch.manual_seed(0)
    save_checkpoint(build_model("small-cnn", width=4, hidden=16), tmp_path / "tiny", dataset="fashion-mnist")
    keys = tmp_path / "keys.sqlite"
    with SQLiteKeyStore(keys) as store:
        key = store.add("load", budget=300)
        probe = store.add("probe", budget=10)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    extra = ("--engine", "ray", "--replicas", "2", "--defense", "rnd:nu=0.02")
    proc, url = start_server(tmp_path / "tiny", keys, port, *extra, start_new_session=True)
    infer = f"{url}/v2/models/tiny/infer"
    try:
        # (a) two replica processes of our deployment in the server's session
        deadline = time.monotonic() + 30
        while sum(REPLICA in cmd for cmd in _session(proc.pid).values()) < 2 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert sum(REPLICA in cmd for cmd in _session(proc.pid).values()) == 2

        # (c) refusals keep their status and headers through the proxy; a good request after them works
        auth = {"authorization": f"Bearer {probe}"}
        bad = httpx.post(infer, headers=auth, json={"inputs": [{"name": "input", "shape": [1]}]})
        assert bad.status_code in (400, 422) and bad.headers["x-quota-remaining"] == "9"  # metered
        big = httpx.post(infer, headers=auth, content=b"0" * 6_553_501)
        assert big.status_code == 413 and big.headers["x-quota-remaining"] == "9"  # refused unread
        assert httpx.post(infer, json=body(0)).status_code == 401
        good = httpx.post(infer, headers=auth, json=body(0))
        assert good.status_code == 200 and good.headers["x-quota-remaining"] == "8"
        assert len(good.json()["outputs"][0]["data"]) == 10

        # (b) 16 clients, 400 one-image requests, on a 300-image key
        statuses: list[int] = []
        lock = threading.Lock()

        def client(c: int) -> None:
            with httpx.Client(headers={"authorization": f"Bearer {key}"}, timeout=60) as http:
                for _ in range(25):
                    r = http.post(infer, json=body(c))
                    if r.status_code == 429:
                        assert float(r.headers["retry-after"]) > 0 and r.headers["x-quota-remaining"] == "0"
                    with lock:
                        statuses.append(r.status_code)

        threads = [threading.Thread(target=client, args=(c,)) for c in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert statuses.count(200) == 300 and statuses.count(429) == 100
        with SQLiteKeyStore(keys) as store:
            assert {r["name"]: r["used"] for r in store.list()} == {"load": 300, "probe": 2}

        # (a) both replicas answered: two distinct per-replica registries whose images add up
        per_replica = sorted(_replica_metrics(url).values())
        assert len(per_replica) == 2 and per_replica[0] > 0 and sum(per_replica) == 301

        # (d) SIGTERM to the server alone: it stops Serve and its Ray, and nothing of its session stays
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0
        deadline = time.monotonic() + 30
        while _session(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _session(proc.pid) == {}
    finally:
        for pid in _session(proc.pid):  # after a failed check: leave nothing running
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        proc.wait(20)


def test_engine_options_are_checked_before_anything_runs(tmp_path):
    run = CliRunner().invoke
    r = run(main, ["serve", str(tmp_path / "none"), "--replicas", "2"])
    assert r.exit_code == 2 and "--engine ray" in r.output
    r = run(main, ["serve", str(tmp_path / "none"), "--engine", "ray", "--workers", "2"])
    assert r.exit_code == 2 and "--replicas" in r.output
    r = run(main, ["serve", str(tmp_path / "none"), "--ray-proxy", "head"])
    assert r.exit_code == 2 and "--ray-proxy go with --engine ray" in r.output


def test_missing_ray_serve_says_what_to_install(tmp_path, monkeypatch):
    pytest.importorskip("fastapi")
    monkeypatch.setitem(sys.modules, "ray.serve", None)  # `import ray.serve` raises ImportError
    r = CliRunner().invoke(main, ["serve", str(tmp_path / "none"), "--engine", "ray"])
    assert r.exit_code == 2 and "pip install 'rnd-defense[ray]'" in r.output
