"""The cheap attacks on `rnd serve` of issue 33, on the code before the hardening and on this
checkout, side by side in one run: what each costs the server (CPU seconds, peak memory) and what a
good client sees meanwhile (answers, median and worst latency).

    git worktree add /tmp/wt-before 469aeb8      # the last commit before the hardening
    python bench/server_attacks.py --before /tmp/wt-before [--out docs/results/records/server-attacks.json]

Each attack runs against a fresh `rnd serve` of the default checkpoint (RND nu 0.02, one torch
thread, SQLite keys), while one good client sends a one-image request on a new connection every
50 ms:

- header: one keyless request whose single header is 32 MB;
- slow: with the server's open-file limit at 256, 400 keyless connections that send one byte of a
  request head every half second, for 8 s;
- spent: a key with no quota left sends 20 bodies of 6 MB of JSON;
- deep: one keyed request of JSON nested 50,000 deep (its status);
- json: one keyed 6 MB JSON body of about 3 million short numbers (the server's peak RSS after it).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "bench")]

from provenance import provenance  # noqa: E402

CHECKPOINT = ROOT / "bench" / "audit-full" / "checkpoints" / "fashion-mnist-small-cnn"
INFER = "/v2/models/fashion-mnist-small-cnn/infer"
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`rnd serve` of `code` (a checkout; its `rnd` package is imported) with SQLite keys."""

    def __init__(self, code: Path, keys: Path, nofile: int | None = None) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(code), "OMP_NUM_THREADS": "1"}
        cmd = [sys.executable, "-c", "from rnd.cli import main; main()", "--threads", "1", "serve",
               str(CHECKPOINT), "--defense", "rnd:nu=0.02", "--port", str(self.port),
               "--keys", str(keys)]  # fmt: skip

        def limit() -> None:
            if nofile is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))

        # cwd: `python -c` puts the working folder first on sys.path, before PYTHONPATH
        self.proc = subprocess.Popen(cmd, env=env, cwd=code, stderr=subprocess.PIPE, preexec_fn=limit)
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/v2/health/ready", timeout=2).status_code == 200:
                    return
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(
                    self.proc.stderr.read().decode()[-2000:] if self.proc.stderr else "no server"
                )
            time.sleep(0.2)

    def cpu(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK

    def peak_rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> str:
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        return self.proc.stderr.read().decode() if self.proc.stderr else ""


def body(n: int = 1) -> bytes:
    x = np.random.default_rng(0).random((n, 1, 28, 28), dtype=np.float32)
    spec = {"name": "input", "shape": [n, 1, 28, 28], "datatype": "FP32", "data": x.ravel().tolist()}
    return json.dumps({"inputs": [spec]}).encode()


class Good:
    """One good client on new connections every 50 ms while an attack runs."""

    def __init__(self, url: str, key: str) -> None:
        self.url, self.key = url, key
        self.lat: list[float] = []
        self.failed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._body = body()

    def _run(self) -> None:
        headers = {"authorization": f"Bearer {self.key}", "content-type": "application/json"}
        while not self._stop.is_set():
            t = time.perf_counter()
            try:
                ok = (
                    httpx.post(self.url + INFER, content=self._body, headers=headers, timeout=30).status_code
                    == 200
                )
            except httpx.HTTPError:
                ok = False
            self.lat.append(time.perf_counter() - t)
            self.failed += not ok
            time.sleep(0.05)

    def __enter__(self) -> Good:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def summary(self) -> dict[str, float | int]:
        lat = self.lat or [float("nan")]
        return {
            "good_requests": len(self.lat),
            "good_failed": self.failed,
            "good_p50_ms": round(statistics.median(lat) * 1e3, 1),
            "good_max_ms": round(max(lat) * 1e3, 1),
        }


def send(port: int, payload: bytes, timeout: float = 60.0) -> str:
    """Send `payload` on a new connection; the status line that came back (or what happened)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                s.sendall(payload)
            answer = s.recv(200)
        return answer.split(b"\r\n", 1)[0].decode(errors="replace") or "closed"
    except OSError as exc:
        return type(exc).__name__


def attack(name: str, server: Server, good_key: str, spent_key: str) -> dict[str, object]:
    cpu0 = server.cpu()
    t0 = time.perf_counter()
    out: dict[str, object] = {}
    with Good(server.url, good_key) as good:
        time.sleep(0.5)
        if name == "header":
            head = f"POST {INFER} HTTP/1.1\r\nhost: x\r\nx-big: ".encode()
            out["answer"] = send(server.port, head + b"a" * (32 << 20) + b"\r\n\r\n")
        elif name == "slow":
            socks = []
            for _ in range(400):
                try:
                    s = socket.create_connection(("127.0.0.1", server.port), timeout=5)
                    s.sendall(b"P")
                    socks.append(s)
                except OSError:
                    break
            for _ in range(16):
                for s in socks:
                    with contextlib.suppress(OSError):
                        s.sendall(b"O")
                time.sleep(0.5)
            out["slow_connections_opened"] = len(socks)
            for s in socks:
                s.close()
        elif name == "spent":
            big = body(100)
            big = big[:-2] + b" " * (6_000_000 - len(big)) + big[-2:]
            codes = []
            for _ in range(20):
                with contextlib.suppress(httpx.HTTPError):
                    r = httpx.post(server.url + INFER, content=big, timeout=60,
                                   headers={"authorization": f"Bearer {spent_key}"})  # fmt: skip
                    codes.append(r.status_code)
            out["answers"] = sorted(set(codes))
        elif name == "deep":
            deep = b'{"inputs": ' + b"[" * 50_000 + b"]" * 50_000 + b"}"
            r = httpx.post(server.url + INFER, content=deep, timeout=60,
                           headers={"authorization": f"Bearer {good_key}"})  # fmt: skip
            out["answer"] = r.status_code
        elif name == "json":
            flat = b"[" + b"0," * 2_999_999 + b"0]"
            doc = (
                b'{"inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": '
                + flat
                + b"}]}"
            )
            r = httpx.post(server.url + INFER, content=doc, timeout=60,
                           headers={"authorization": f"Bearer {good_key}"})  # fmt: skip
            out["answer"] = r.status_code
        time.sleep(0.5)
    out.update(good.summary())
    out["seconds"] = round(time.perf_counter() - t0, 2)
    out["server_cpu_s"] = round(server.cpu() - cpu0, 2)
    out["server_peak_rss_mb"] = round(server.peak_rss_mb(), 1)
    return out


def run(code: Path, attacks: list[str]) -> dict[str, dict[str, object]]:
    sys.path.insert(0, str(code))
    results = {}
    for name in attacks:
        folder = Path(tempfile.mkdtemp(prefix="rnd-attack-"))
        keys = folder / "keys.sqlite"
        env = {**os.environ, "PYTHONPATH": str(code)}
        add = [sys.executable, "-c", "from rnd.cli import main; main()", "keys", "add"]
        good = subprocess.run([*add, "good", "--budget", "1000000000", "--db", str(keys)], env=env, cwd=code,
                              capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
        spent = subprocess.run([*add, "spent", "--budget", "1", "--db", str(keys)], env=env, cwd=code,
                               capture_output=True, text=True, check=True).stdout.strip()  # fmt: skip
        server = Server(code, keys, nofile=256 if name == "slow" else None)
        httpx.post(
            server.url + INFER, content=body(), headers={"authorization": f"Bearer {spent}"}
        )  # its 1 image
        try:
            results[name] = attack(name, server, good, spent)
        finally:
            stderr = server.stop()
        results[name]["server_log_errors"] = sum(
            "ERROR" in line or "Traceback" in line for line in stderr.splitlines()
        )
        print(code.name, name, json.dumps(results[name]), flush=True)
    return results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--before", type=Path, required=True, help="a checkout of the code before the hardening")
    ap.add_argument("--attacks", default="header,slow,spent,deep,json")
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    attacks = args.attacks.split(",")
    before = run(args.before.resolve(), attacks)
    after = run(ROOT, attacks)
    rev = subprocess.run(["git", "-C", str(args.before), "rev-parse", "--short", "HEAD"], capture_output=True,
                         text=True).stdout.strip()  # fmt: skip
    if args.out is not None:
        sha = hashlib.sha256(CHECKPOINT.with_suffix(".safetensors").read_bytes()).hexdigest()
        doc = {
            **provenance(sha, "python bench/server_attacks.py " + " ".join(sys.argv[1:])),
            "before_commit": rev,
            "attacks": {name: {"before": before[name], "after": after[name]} for name in attacks},
        }
        args.out.write_text(json.dumps(doc, indent=1) + "\n")


if __name__ == "__main__":
    main()
