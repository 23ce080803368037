"""The inference server over real loopback HTTP (uvicorn on an ephemeral port), and RemoteOracle."""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import numpy as np
import pytest
import torch
import uvicorn
from torch import nn

from rnd.attacks import make_attack
from rnd.defenses import build_defense
from rnd.errors import BudgetExceededError, InputError
from rnd.models import build_model
from rnd.oracle import Oracle, QueryOracle, RemoteOracle
from rnd.serving.app import create_app

SHAPE = (1, 28, 28)
NAME = "tiny"


class Served:
    """uvicorn serving `app` on 127.0.0.1 in a background thread."""

    def __init__(self, app: Any, lifespan: str = "on") -> None:
        config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan=lifespan)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.app = app

    def __enter__(self) -> Served:
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)
        port = self.server.servers[0].sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.client = httpx.Client(base_url=self.url, timeout=30)
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.close()
        self.server.should_exit = True
        self.thread.join(10)

    def metric(self, name: str, labels: str = "") -> float:
        text = self.client.get("/metrics").text
        m = re.search(rf"^{re.escape(name)}{re.escape(labels)} (\S+)$", text, re.M)
        return float(m.group(1)) if m else 0.0


@dataclass
class FakeCharge:
    ok: bool
    remaining: int | None
    retry_after: float | None = None
    reason: str | None = None


class FakeKeys:
    """A key store with one key and a budget in images (the KeyStore interface)."""

    def __init__(self, budget: int) -> None:
        self.left = {"k1": budget}
        self.lock = threading.Lock()

    def authorize(self, token: str) -> str | None:
        return "k1" if token == "secret" else None

    def charge(self, key_id: str, images: int) -> FakeCharge:
        with self.lock:
            if self.left[key_id] < images:
                return FakeCharge(False, self.left[key_id], 3.0, "quota exhausted")
            self.left[key_id] -= images
            return FakeCharge(True, self.left[key_id])

    def remaining(self, key_id: str) -> int:
        return self.left[key_id]


@pytest.fixture(scope="module")
def model() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_model("small-cnn", width=4, hidden=16).eval()


def serve(model: nn.Module, spec: str = "rnd:nu=0.02", **kw: Any) -> Served:
    return Served(create_app(model, build_defense(spec, model, seed=0), name=NAME, **kw))


@pytest.fixture(scope="module")
def rnd_server(model: nn.Module) -> Iterator[Served]:
    with serve(model, max_wait_ms=20.0) as s:
        yield s


def images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).random((n, *SHAPE), dtype=np.float32)


def json_body(x: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {
        "inputs": [{"name": "input", "shape": list(x.shape), "datatype": "FP32", "data": x.ravel().tolist()}],
        **extra,
    }


def binary_request(
    x: np.ndarray, size: int | None = None, header_len: int | None = None
) -> tuple[bytes, dict]:
    raw = x.astype("<f4").tobytes()
    head = {
        "inputs": [
            {
                "name": "input",
                "shape": list(x.shape),
                "datatype": "FP32",
                "parameters": {"binary_data_size": len(raw) if size is None else size},
            }
        ],
        "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
    }
    h = json.dumps(head).encode()
    n = len(h) if header_len is None else header_len
    return h + raw, {"Inference-Header-Content-Length": str(n), "content-type": "application/octet-stream"}


def decode(r: httpx.Response) -> np.ndarray:
    n = r.headers.get("inference-header-content-length")
    if n is None:
        out = r.json()["outputs"][0]
        return np.asarray(out["data"]).reshape(out["shape"])
    out = json.loads(r.content[: int(n)])["outputs"][0]
    dtype = "<i8" if out["datatype"] == "INT64" else "<f4"
    return np.frombuffer(r.content[int(n) :], dtype=dtype).reshape(out["shape"])


INFER = f"/v2/models/{NAME}/infer"


# -- basics -----------------------------------------------------------------------------------------
def test_health_and_metadata(rnd_server: Served) -> None:
    c = rnd_server.client
    assert c.get("/v2/health/live").status_code == 200
    assert c.get("/v2/health/ready").status_code == 200
    meta = c.get(f"/v2/models/{NAME}").json()
    assert meta["name"] == NAME and meta["platform"] == "rnd"
    assert meta["inputs"] == [{"name": "input", "datatype": "FP32", "shape": [-1, *SHAPE]}]
    assert meta["outputs"][0]["shape"] == [-1, 10]
    assert c.get("/v2/models/other").status_code == 404


def test_json_and_binary_give_probabilities(rnd_server: Served) -> None:
    x = images(3)
    r = rnd_server.client.post(INFER, json=json_body(x))
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    p = decode(r)
    assert p.shape == (3, 10) and np.allclose(p.sum(1), 1, atol=1e-5)
    body, headers = binary_request(x)
    r = rnd_server.client.post(INFER, content=body, headers=headers)
    assert r.status_code == 200, r.text
    q = decode(r)
    assert q.shape == (3, 10) and q.dtype == np.float32 and np.allclose(q.sum(1), 1, atol=1e-5)


def test_rnd_answers_the_same_image_differently(rnd_server: Served) -> None:
    x = images(1)
    a, b = (decode(rnd_server.client.post(INFER, json=json_body(x))) for _ in range(2))
    assert not np.array_equal(a, b)


def test_owner_output_labels_and_topk(model: nn.Module) -> None:
    x = images(4)
    with serve(model, "none", output="labels") as s:
        assert s.client.get(f"/v2/models/{NAME}").json()["outputs"][0]["datatype"] == "INT64"
        r = s.client.post(INFER, json=json_body(x))
        labels = decode(r)
        assert r.json()["outputs"][0]["datatype"] == "INT64" and labels.shape == (4,)
        with torch.inference_mode():
            assert labels.tolist() == model(torch.from_numpy(x)).argmax(1).tolist()
    with serve(model, "none", output="topk", k=3) as s:
        body, headers = binary_request(x)
        p = decode(s.client.post(INFER, content=body, headers=headers))
        assert p.shape == (4, 10) and ((p > 0).sum(1) == 3).all()


# -- refusals ---------------------------------------------------------------------------------------
def _bad_requests() -> list[tuple[str, int, dict[str, Any]]]:
    x = images(2)
    good = json_body(x)
    bad: list[tuple[str, int, dict[str, Any]]] = []

    def js(why: str, status: int, doc: Any) -> None:
        bad.append(
            (
                why,
                status,
                {"content": json.dumps(doc).encode(), "headers": {"content-type": "application/json"}},
            )
        )

    def with_input(**change: Any) -> dict[str, Any]:
        return {"inputs": [{**good["inputs"][0], **change}]}

    js("not an object", 400, [1, 2, 3])
    js("no inputs", 400, {"outputs": []})
    js("empty inputs", 400, {"inputs": []})
    js("two inputs", 400, {"inputs": good["inputs"] * 2})
    js("input not an object", 400, {"inputs": [5]})
    js("wrong input name", 422, with_input(name="x"))
    js("datatype FP64", 422, with_input(datatype="FP64"))
    js("datatype missing", 422, with_input(datatype=None))
    js("shape 3-D", 422, with_input(shape=[2, 28, 28]))
    js("shape wrong image", 422, with_input(shape=[2, 3, 28, 28]))
    js("N = 0", 422, {"inputs": [{**good["inputs"][0], "shape": [0, *SHAPE], "data": []}]})
    js("shape not ints", 422, with_input(shape=["2", 1, 28, 28]))
    js("data too short", 422, with_input(data=good["inputs"][0]["data"][:-1]))
    js("data not numbers", 422, with_input(data=["a"] * (2 * 784)))
    js("no data", 400, {"inputs": [{k: v for k, v in good["inputs"][0].items() if k != "data"}]})
    js("pixels > 1", 422, json_body(x * 3))
    js("pixels < 0", 422, json_body(x - 0.5))
    js("unknown output", 400, {**good, "outputs": [{"name": "logits"}]})
    bad.append(("not JSON", 400, {"content": b"{nope", "headers": {"content-type": "application/json"}}))
    nan = json.dumps(good).replace(str(good["inputs"][0]["data"][0]), "NaN", 1).encode()
    bad.append(("NaN", 422, {"content": nan}))
    inf = json.dumps(good).replace(str(good["inputs"][0]["data"][0]), "Infinity", 1).encode()
    bad.append(("inf", 422, {"content": inf}))
    body, h = binary_request(x)
    bad.append(("binary truncated", 400, {"content": body[:-10], "headers": h}))
    bad.append(("binary padded", 400, {"content": body + b"\0\0\0\0", "headers": h}))
    bad.append(
        (
            "header length past the body",
            400,
            {"content": body, "headers": {**h, "Inference-Header-Content-Length": str(len(body) + 5)}},
        )
    )
    bad.append(
        (
            "header length cuts the JSON",
            400,
            {"content": body, "headers": {**h, "Inference-Header-Content-Length": "20"}},
        )
    )
    bad.append(
        (
            "header length not a number",
            400,
            {"content": body, "headers": {**h, "Inference-Header-Content-Length": "abc"}},
        )
    )
    body2, h2 = binary_request(x, size=100)
    bad.append(("binary_data_size lies", 400, {"content": body2, "headers": h2}))
    nanx = x.copy()
    nanx[0, 0, 0, 0] = np.nan
    body3, h3 = binary_request(nanx)
    bad.append(("binary NaN", 422, {"content": body3, "headers": h3}))
    body4, h4 = binary_request(x[:, :, :, :27].copy())
    bad.append(("binary wrong shape", 422, {"content": body4, "headers": h4}))
    return bad


def test_malformed_requests_get_4xx_and_the_server_keeps_serving(rnd_server: Served) -> None:
    c = rnd_server.client
    good = json_body(images(1))
    cases = _bad_requests()
    assert len(cases) >= 20
    for why, status, kw in cases:
        r = c.post(INFER, **kw)
        assert r.status_code == status, (why, r.status_code, r.text)
        reason = r.json()["error"]
        assert reason and "\n" not in reason, why
        assert c.post(INFER, json=good).status_code == 200, why
    r = c.post("/v2/models/nope/infer", json=good)
    assert r.status_code == 404 and "nope" in r.json()["error"]
    assert rnd_server.metric("rnd_refusals_total", '{reason="invalid_input"}') >= 10


def test_body_cap_gives_413_before_parsing(rnd_server: Served) -> None:
    c = rnd_server.client
    r = c.post(INFER, content=b"x" * 6_553_501, headers={"content-type": "application/json"})
    assert r.status_code == 413 and "cap" in r.json()["error"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: the cap holds while reading the stream
        for _ in range(100):
            yield b"y" * 100_000

    r = c.post(INFER, content=chunks())
    assert r.status_code == 413
    assert c.post(INFER, json=json_body(images(1))).status_code == 200


def test_metrics_and_batching(rnd_server: Served) -> None:
    before = rnd_server.metric("rnd_images_total")
    ok_before = rnd_server.metric("rnd_requests_total", '{status="200"}')
    x = images(16, seed=3)
    codes: list[int] = []
    barrier = threading.Barrier(16)

    def one(i: int) -> None:
        body, headers = binary_request(x[i : i + 1])
        with httpx.Client(base_url=rnd_server.url, timeout=30) as c:
            barrier.wait()
            codes.append(c.post(INFER, content=body, headers=headers).status_code)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert codes == [200] * 16
    assert rnd_server.metric("rnd_images_total") == before + 16
    assert rnd_server.metric("rnd_requests_total", '{status="200"}') == ok_before + 16
    count = rnd_server.metric("rnd_batch_size_count")
    singles = rnd_server.metric("rnd_batch_size_bucket", '{le="1.0"}')
    assert count > singles, "no forward merged two requests"
    assert rnd_server.metric("rnd_request_latency_seconds_count") > 0


# -- keys -------------------------------------------------------------------------------------------
def test_keys_401_429_and_quota_header(model: nn.Module) -> None:
    keys = FakeKeys(budget=5)
    with serve(model, keys=keys) as s:
        c = s.client
        body = json_body(images(2))
        assert c.post(INFER, json=body).status_code == 401
        assert c.post(INFER, json=body, headers={"Authorization": "Bearer wrong"}).status_code == 401
        auth = {"Authorization": "Bearer secret"}
        r = c.post(INFER, json=body, headers=auth)
        assert r.status_code == 200 and r.headers["X-Quota-Remaining"] == "3"
        r = c.post(INFER, json=json_body(images(2) * 5), headers=auth)  # invalid: metered, one image
        assert r.status_code == 422 and r.headers["X-Quota-Remaining"] == "2"
        assert c.post(INFER, json=json_body(images(1)), headers=auth).headers["X-Quota-Remaining"] == "1"
        r = c.post(INFER, json=body, headers=auth)
        assert (
            r.status_code == 429 and r.headers["Retry-After"] == "3" and r.headers["X-Quota-Remaining"] == "1"
        )
        assert keys.left["k1"] == 1
        assert s.metric("rnd_refusals_total", '{reason="quota"}') == 1
        assert s.metric("rnd_refusals_total", '{reason="no_key"}') == 1


# -- RemoteOracle -----------------------------------------------------------------------------------
def _attack_set(model: nn.Module, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.from_numpy(images(n, seed=7))
    with torch.inference_mode():
        return x, model(x).argmax(1)


def test_remote_oracle_runs_square_and_counts_match_the_server(model: nn.Module) -> None:
    keys = FakeKeys(budget=10_000)
    with serve(model, keys=keys) as s:
        oracle = RemoteOracle(s.url, NAME, "secret", budget=60)
        assert isinstance(oracle, QueryOracle)
        assert (oracle.output, oracle.num_classes, oracle.input_shape) == ("probs", 10, SHAPE)
        x, y = _attack_set(model, 6)
        result = make_attack("square", eps=0.1, seed=0)(oracle, x, y)
        assert int(result.queries.sum()) == s.metric("rnd_images_total") == 10_000 - keys.left["k1"]
        assert (result.queries <= 60).all()
        oracle.close()


def test_remote_oracle_matches_the_local_oracle_without_noise(model: nn.Module) -> None:
    x, y = _attack_set(model, 4)
    with serve(model, "none") as s, RemoteOracle(s.url, NAME, budget=40) as remote:
        far = make_attack("square", eps=0.1, seed=0)(remote, x, y)
    near = make_attack("square", eps=0.1, seed=0)(Oracle(model, budget=40), x, y)
    assert torch.equal(far.queries, near.queries) and torch.equal(far.success, near.success)


def test_remote_oracle_budget_eot_and_quota_refusal(model: nn.Module) -> None:
    keys = FakeKeys(budget=12)
    with serve(model, keys=keys) as s:
        oracle = RemoteOracle(s.url, NAME, "secret", budget=4)
        ids = oracle.new_ids(2)
        x = torch.from_numpy(images(2))
        p = oracle.query(x, ids, eot=3)
        assert p.shape == (2, 10) and oracle.counts_of(ids).tolist() == [3, 3]
        assert keys.left["k1"] == 6
        with pytest.raises(BudgetExceededError):
            oracle.query(x, ids, eot=2)  # would pass the client budget: nothing is sent
        assert keys.left["k1"] == 6 and oracle.counts_of(ids).tolist() == [3, 3]
        more = oracle.new_ids(4)
        oracle.query(torch.from_numpy(images(4)), more, eot=1)
        with pytest.raises(BudgetExceededError, match="quota"):
            oracle.query(torch.from_numpy(images(4)), more, eot=1)  # the server's quota refuses
        with pytest.raises(InputError):
            RemoteOracle(s.url, NAME, "wrong")
        keys.left["k1"] -= 1  # someone else used the key: the count no longer matches
        other = oracle.new_ids(1)
        keys.left["k1"] += 2
        with pytest.raises(Exception, match="remaining quota"):
            oracle.query(torch.from_numpy(images(1)), other)


def test_real_keystore_end_to_end(model: nn.Module, tmp_path: Any) -> None:
    from rnd.serving.keys import SQLiteKeyStore

    store = SQLiteKeyStore(tmp_path / "keys.sqlite")
    secret = store.add("auditor", budget=200)
    with serve(model, keys=store) as s:
        oracle = RemoteOracle(s.url, NAME, secret, budget=20)
        x, y = _attack_set(model, 4)
        result = make_attack("square", eps=0.1, seed=0)(oracle, x, y)
        used = {row["name"]: row["used"] for row in store.list()}["auditor"]
        assert int(result.queries.sum()) == used == s.metric("rnd_images_total")
        r = s.client.post(INFER, json=json_body(images(1)), headers={"Authorization": f"Bearer {secret}"})
        assert r.headers["X-Quota-Remaining"] == str(200 - used - 1)
        with pytest.raises(BudgetExceededError, match="quota"):
            oracle.query(torch.from_numpy(images(200 - used)), oracle.new_ids(200 - used))
        store.revoke("auditor")
        assert (
            s.client.post(
                INFER, json=json_body(images(1)), headers={"Authorization": f"Bearer {secret}"}
            ).status_code
            == 401
        )
    store.close()


def _serve_cli(*args: str) -> tuple[Any, str]:
    """Start `rnd serve ARGS` on a free port; (process, base URL) once it is ready."""
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    cmd = [sys.executable, "-c", "from rnd.cli import main; main()", "serve", *args, "--port", str(port)]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(f"{url}/v2/health/ready").status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(proc.stderr.read().decode() if proc.stderr else "no server")
        time.sleep(0.1)


def test_rnd_serve_cli(model: nn.Module, tmp_path: Any) -> None:
    """`rnd serve` on a saved checkpoint answers under the checkpoint's name."""
    from rnd.models import save_checkpoint

    save_checkpoint(model, tmp_path / "tiny-net", dataset="fashion-mnist")
    proc, url = _serve_cli(str(tmp_path / "tiny-net"), "--seed", "1")
    try:
        r = httpx.post(f"{url}/v2/models/tiny-net/infer", json=json_body(images(2)))
        assert r.status_code == 200 and decode(r).shape == (2, 10)
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_rnd_serve_cli_serves_your_own_torchscript_model(model: nn.Module, tmp_path: Any) -> None:
    """`rnd serve net.pt --input-shape --num-classes`: a TorchScript file behind the server,
    named by its stem, answering what the model answers (no defense: exactly)."""
    traced = tmp_path / "net.pt"
    torch.jit.save(torch.jit.trace(model, torch.rand(2, *SHAPE)), traced)
    args = ("--input-shape", ",".join(map(str, SHAPE)), "--num-classes", "10", "--defense", "none")
    proc, url = _serve_cli(str(traced), *args)
    try:
        meta = httpx.get(f"{url}/v2/models/net").json()
        assert meta["inputs"][0]["shape"] == [-1, *SHAPE]
        x = images(3)
        r = httpx.post(f"{url}/v2/models/net/infer", json=json_body(x))
        assert r.status_code == 200
        with torch.no_grad():
            want = torch.softmax(model(torch.from_numpy(x)), dim=1).numpy()
        assert np.allclose(decode(r), want, atol=1e-6)
    finally:
        proc.terminate()
        proc.wait(10)


def test_rnd_serve_cli_refuses_a_bad_model_in_one_line(tmp_path: Any) -> None:
    from click.testing import CliRunner

    from rnd.cli import main

    bare = tmp_path / "bare.pt"
    torch.jit.save(torch.jit.trace(nn.Flatten(), torch.rand(1, *SHAPE)), bare)
    for args, words in (
        ([str(bare)], "no input shape known"),
        ([str(tmp_path / "missing")], "missing"),
        (["no_such_pkg_here:make"], "no_such_pkg_here"),
    ):
        res = CliRunner().invoke(main, ["serve", *args, "--port", "1"])
        assert res.exit_code == 2 and words in res.output, (args, res.output)
        assert len(res.output.strip().splitlines()) == 1, res.output


def test_rnd_serve_cli_checks_the_key_store_and_name_before_serving(model: nn.Module, tmp_path: Any) -> None:
    """A key store that does not exist or cannot be reached, and a name no URL can reach: one line,
    exit 2, nothing created; the URL's password is not echoed. `--seed` warns."""
    from click.testing import CliRunner

    from rnd.cli import main
    from rnd.models import save_checkpoint

    save_checkpoint(model, tmp_path / "tiny-net", dataset="fashion-mnist")
    missing = tmp_path / "keys.sqlite"
    for args, words in (
        (["--keys", str(missing)], "no rnd key database"),
        (["--keys", "postgresql://rnd:s3cr3t-pw@127.0.0.1:1/keys"], "unreachable"),
        (["--name", "a/b"], "--name"),
        (["--name", ""], "--name"),
    ):
        res = CliRunner().invoke(main, ["serve", str(tmp_path / "tiny-net"), *args, "--port", "1"])
        assert res.exit_code == 2 and words in res.output, (args, res.output)
        assert len(res.output.strip().splitlines()) == 1 and "s3cr3t-pw" not in res.output, res.output
    assert not missing.exists()
    proc, _ = _serve_cli(str(tmp_path / "tiny-net"), "--seed", "3")
    proc.terminate()
    proc.wait(10)
    assert "--seed makes the defense's noise replayable" in proc.stderr.read().decode()


def test_batcher_merges_splits_and_chunks(model: nn.Module) -> None:
    from rnd.serving.batching import Batcher

    sizes: list[int] = []
    batcher = Batcher(model, max_batch=4, max_wait_ms=50.0, on_batch=sizes.append)
    batcher.start()
    try:
        xs = [torch.from_numpy(images(n, seed=n)) for n in (1, 2, 3, 10)]
        futures = [batcher.submit(x) for x in xs]
        outs = [f.result(10) for f in futures]
    finally:
        batcher.stop()
    with torch.inference_mode():
        for x, out in zip(xs, outs, strict=True):
            assert torch.allclose(out, model(x), atol=1e-5)
    assert max(sizes) <= 4 and sum(sizes) == 16 and sizes[0] == 3  # 1 + 2 merged; 3 did not fit
    assert not batcher.running and batcher.submit(xs[0]).exception() is not None


def test_not_ready_until_the_batcher_runs(model: nn.Module) -> None:
    app = create_app(model, build_defense("none", model), name=NAME)
    with Served(app, lifespan="off") as s:  # the lifespan starts the batcher: here it never runs
        assert s.client.get("/v2/health/live").status_code == 200
        assert s.client.get("/v2/health/ready").status_code == 503
        r = s.client.post(INFER, json=json_body(images(1)))
        assert r.status_code == 503 and "not ready" in r.json()["error"]


@pytest.mark.parametrize("output", ["probs", "labels"])
def test_remote_oracle_records_refusals_like_the_local_oracle(model: nn.Module, output: str) -> None:
    """Blacklight behind the server refuses repeats: the same refusals as in process."""
    x = torch.from_numpy(images(3, seed=11))
    batches = [[0, 1, 2], [0, 1], [0, 1, 2], [1, 2]]  # rows per query: repeats get refused
    local = Oracle(build_defense("blacklight", model, seed=0), output=output, budget=50)  # type: ignore[arg-type]
    with serve(model, "blacklight", output=output) as s, RemoteOracle(s.url, NAME, budget=50) as remote:
        answers = []
        for oracle in (local, remote):
            ids = oracle.new_ids(3)
            answers.append([oracle.query(x[rows], ids[rows]) for rows in batches])
        assert remote.refusals.tolist() == local.refusals.tolist() and int(local.refusals.sum()) > 0
        assert remote.first_refusal.tolist() == local.first_refusal.tolist()
        for a, b in zip(*answers, strict=True):
            assert torch.equal(
                a.isnan() if output == "probs" else a == -1, b.isnan() if output == "probs" else b == -1
            )


def test_remote_oracle_keeps_requests_under_the_body_cap(model: nn.Module) -> None:
    with serve(model, "none", max_body_bytes=40_000) as s, RemoteOracle(s.url, NAME, budget=5) as oracle:
        assert oracle.max_request == (40_000 - 4096) // (4 * 784)
        p = oracle.query(torch.from_numpy(images(30)), oracle.new_ids(30), eot=2)
        assert p.shape == (30, 10) and oracle.requests == -(-60 // oracle.max_request)
        assert (
            s.metric("rnd_images_total") == 60
            and s.metric("rnd_refusals_total", '{reason="body_too_large"}') == 0
        )


def test_refused_rows_are_null_in_json_answers(model: nn.Module) -> None:
    """A detector's refused row comes back as JSON nulls (strict JSON, no NaN literal), and the
    client-side parser reads them as NaN again."""
    from rnd.oip import parse_response

    x = images(1)
    with serve(model, "blacklight") as s:
        first = s.client.post(f"/v2/models/{NAME}/infer", json=json_body(x))
        again = s.client.post(f"/v2/models/{NAME}/infer", json=json_body(x))  # the same query: refused
    assert first.status_code == again.status_code == 200

    def no_nan(token: str) -> None:
        raise AssertionError(f"non-standard JSON constant {token}")

    doc = json.loads(again.content, parse_constant=no_nan)
    assert doc["outputs"][0]["data"] == [None] * 10
    assert bool(np.isnan(parse_response(again.content, None)).all())
    assert bool(np.isfinite(parse_response(first.content, None)).all())
