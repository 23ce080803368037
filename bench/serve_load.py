"""Load on `rnd serve` over loopback: requests/s, images/s and p50 / p99 latency, against the
in-process forward of the same defended model at the same batch, in one run.

    python bench/serve_load.py [--seconds 5] [--clients 1,8,64] [--threads 1] [--checkpoint CK]

Starts two servers in their own processes (`rnd serve` on the default checkpoint with RND nu 0.02:
dynamic batching on, max batch 256 / 2 ms, and off, max batch 1), then for each setting runs
`clients` client threads for `seconds`: single-image and 64-image requests, binary and JSON tensors.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import torch

from rnd.defenses import build_defense
from rnd.models import load_checkpoint, read_meta
from rnd.oip import build_request

CHECKPOINT = Path("~/.cache/rnd/checkpoints/fashion-mnist-small-cnn").expanduser()
SPEC = "rnd:nu=0.02"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(max_batch: int, threads: int) -> tuple[subprocess.Popen, str]:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-c", "from rnd.cli import main; main()", "--threads", str(threads), "serve"]
    cmd += [
        str(CHECKPOINT),
        "--defense",
        SPEC,
        "--port",
        str(port),
        "--max-batch",
        str(max_batch),
        "--seed",
        "0",
    ]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.1)
    proc.kill()
    raise SystemExit("rnd serve did not start")


def input_shape() -> tuple[int, ...]:
    return tuple(read_meta(CHECKPOINT).arch_kwargs.get("input_shape", (1, 28, 28)))


def load(url: str, clients: int, images: int, binary: bool, seconds: float) -> dict[str, float]:
    x = np.random.default_rng(0).random((images, *input_shape()), dtype=np.float32)
    body, headers = build_request(x, binary=binary)
    lat: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + seconds

    def client() -> None:
        mine = []
        with httpx.Client(base_url=url, timeout=60) as http:
            while time.monotonic() < stop:
                t0 = time.perf_counter()
                r = http.post(f"/v2/models/{CHECKPOINT.name}/infer", content=body, headers=headers)
                if r.status_code != 200:
                    raise SystemExit(f"status {r.status_code}: {r.text[:200]}")
                mine.append(time.perf_counter() - t0)
        with lock:
            lat.extend(mine)

    t0 = time.perf_counter()
    ts = [threading.Thread(target=client) for _ in range(clients)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    wall = time.perf_counter() - t0
    a = np.array(lat) * 1000
    return {
        "req/s": len(lat) / wall,
        "img/s": len(lat) * images / wall,
        "p50 ms": float(np.percentile(a, 50)),
        "p99 ms": float(np.percentile(a, 99)),
    }


def in_process(batch: int, seconds: float, threads: int) -> float:
    torch.set_num_threads(threads)
    model, _ = load_checkpoint(CHECKPOINT)
    defended = build_defense(SPEC, model.eval(), seed=0)
    x = torch.rand(batch, *input_shape())
    n, t0 = 0, time.perf_counter()
    with torch.inference_mode():
        while time.perf_counter() - t0 < seconds:
            defended(x).softmax(1)
            n += batch
    return n / (time.perf_counter() - t0)


def main() -> None:
    global CHECKPOINT
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--clients", default="1,8,64")
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads of the servers and the in-process run"
    )
    p.add_argument(
        "--checkpoint",
        type=Path,
        default=CHECKPOINT,
        help="the served checkpoint (a bigger model shows batching where the forward, not HTTP, dominates)",
    )
    args = p.parse_args()
    CHECKPOINT = args.checkpoint.expanduser()
    clients = [int(c) for c in args.clients.split(",")]
    servers = {"on": start(256, args.threads), "off": start(1, args.threads)}
    try:
        base = {b: in_process(b, args.seconds, args.threads) for b in (1, 64)}
        print(f"in-process defended forward ({SPEC}): batch 1 {base[1]:.0f}, batch 64 {base[64]:.0f} img/s")
        print(f"{'batching':>8} {'clients':>7} {'images':>6} {'tensors':>7} {'req/s':>8} {'img/s':>8} "
              f"{'p50 ms':>7} {'p99 ms':>7} {'vs in-process':>13}")  # fmt: skip
        for mode, (_, url) in servers.items():
            for c in clients:
                for images in (1, 64):
                    for binary in (True, False):
                        if images == 64 and c == 64:
                            continue  # 4,096 images in flight: not a setting that says more
                        m = load(url, c, images, binary, args.seconds)
                        ratio = m["img/s"] / base[64 if images == 64 else 1]
                        kind = "binary" if binary else "JSON"
                        print(
                            f"{mode:>8} {c:>7} {images:>6} {kind:>7} {m['req/s']:>8.1f} {m['img/s']:>8.0f} "
                            f"{m['p50 ms']:>7.1f} {m['p99 ms']:>7.1f} {ratio:>13.2f}"
                        )
    finally:
        for proc, _ in servers.values():
            proc.send_signal(signal.SIGTERM)
            proc.wait(10)


if __name__ == "__main__":
    main()
