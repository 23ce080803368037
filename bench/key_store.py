"""The key stores under load: charges/s of `SQLiteKeyStore` and `PostgresKeyStore` at 1, 16 and 64
concurrent clients (one store object shared by the threads, as in a server process), and images/s
of `rnd serve` without keys, with SQLite keys and with PostgreSQL keys, in one run.

    python bench/key_store.py [--seconds 3] [--clients 1,16,64] [--out docs/results/records/key-store.json]

PostgreSQL is a throwaway server of its own (tests/postgres.py: Debian's binaries, initdb, a free
loopback port, fsync off as in the tests). Charges: every client charges one image per call in a
loop, either all on one key (they queue on its lock) or each on its own key. Server: 16 clients
send one-image binary requests to `rnd serve` on the default checkpoint (RND nu 0.02, one torch
thread), each with its own key.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

from provenance import provenance  # noqa: E402

from rnd.oip import build_request  # noqa: E402
from rnd.serving.keys import open_keys  # noqa: E402
from tests.postgres import Cluster, free_port  # noqa: E402

CHECKPOINT = ROOT / "bench" / "audit-full" / "checkpoints" / "fashion-mnist-small-cnn"


def hammer(call: Callable[[int], None], clients: int, seconds: float) -> tuple[float, list[float]]:
    """`clients` threads, each calling `call(c)` in a loop for `seconds`: (calls/s, sorted latencies)."""
    latencies: list[list[float]] = [[] for _ in range(clients)]
    stop = threading.Event()

    def client(c: int) -> None:
        while not stop.is_set():
            t = time.perf_counter()
            call(c)
            latencies[c].append(time.perf_counter() - t)

    threads = [threading.Thread(target=client, args=(c,)) for c in range(clients)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    flat = sorted(x for lat in latencies for x in lat)
    return len(flat) / (time.perf_counter() - t0), flat


def charges(target: str, clients: int, seconds: float, shared: bool) -> dict[str, float]:
    """Charges/s and the median charge's latency with `clients` threads on one store object."""
    with open_keys(target) as setup:
        n = 1 if shared else clients
        start = len(setup.list())
        names = [f"k{start + i}" for i in range(n)]
        for name in names:
            setup.add(name, budget=10**12)
    store = open_keys(target)

    def charge(c: int) -> None:
        assert store.charge(names[0 if shared else c], 1).ok

    rate, lat = hammer(charge, clients, seconds)
    store.close()
    return {"charges_per_s": round(rate, 1), "p50_ms": round(lat[len(lat) // 2] * 1e3, 3)}


def server_rate(keys: str | None, seconds: float, clients: int) -> dict[str, float]:
    """images/s and p50 / p99 latency of `rnd serve` with `keys`, `clients` one-image clients."""
    secrets_ = [None] * clients
    if keys is not None:
        with open_keys(keys) as store:
            base = len(store.list())
            secrets_ = [store.add(f"s{base + c}", budget=10**9) for c in range(clients)]
    port = free_port()
    cmd = [sys.executable, "-c", "from rnd.cli import main; main()", "--threads", "1", "serve",
           str(CHECKPOINT), "--defense", "rnd:nu=0.02", "--port", str(port)]  # fmt: skip
    cmd += ["--keys", keys] if keys else []
    proc = subprocess.Popen(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("rnd serve did not start")
        time.sleep(0.2)
    x = np.random.default_rng(0).random((1, 1, 28, 28), dtype=np.float32)
    content, headers = build_request(x, binary=True)
    https = [
        httpx.Client(
            base_url=url, headers={**headers, **({} if k is None else {"authorization": f"Bearer {k}"})}
        )
        for k in secrets_
    ]

    def infer(c: int) -> None:
        r = https[c].post("/v2/models/fashion-mnist-small-cnn/infer", content=content)
        assert r.status_code == 200, r.text

    rate, flat = hammer(infer, clients, seconds)
    for http in https:
        http.close()
    proc.terminate()
    proc.wait(20)
    return {
        "images_per_s": round(rate, 1),
        "p50_ms": round(flat[len(flat) // 2] * 1e3, 2),
        "p99_ms": round(flat[int(len(flat) * 0.99)] * 1e3, 2),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--clients", default="1,16,64")
    ap.add_argument("--server-seconds", type=float, default=8.0)
    ap.add_argument("--server-clients", type=int, default=16)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    clients = [int(c) for c in args.clients.split(",")]
    cluster = Cluster()
    folder = Path(tempfile.mkdtemp(prefix="rnd-keybench-"))
    try:
        stores = {"sqlite": str(folder / "keys.sqlite"), "postgres": cluster.create_database()}
        rows = []
        for store, target in stores.items():
            for n in clients:
                for shared in (True, False):
                    r = charges(target, n, args.seconds, shared)
                    rows.append({"store": store, "clients": n, "keys": "one" if shared else "own", **r})
                    print(json.dumps(rows[-1]), flush=True)
        server = []
        for store, target in {"none": None, **stores}.items():
            r = server_rate(target, args.server_seconds, args.server_clients)
            server.append({"keys": store, "clients": args.server_clients, **r})
            print(json.dumps(server[-1]), flush=True)
    finally:
        cluster.remove()
    if args.out is not None:
        sha = hashlib.sha256((CHECKPOINT.with_suffix(".safetensors")).read_bytes()).hexdigest()
        doc = {
            **provenance(sha, "python bench/key_store.py " + " ".join(sys.argv[1:])),
            "postgres": "Debian's PostgreSQL 15, a throwaway cluster on loopback TCP, fsync off",
            "charges": rows,
            "server": server,
        }
        args.out.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
