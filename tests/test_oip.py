"""`rnd.oip`, the Open Inference Protocol on the wire, on its own and between the two sides: both
tensor encodings round-trip (client request -> server parse, server answer -> client parse); every
refusal code is produced by the real server over loopback HTTP and decoded by the real `RemoteOracle`
into the right exception; a server that sends no code (a minimal stdlib server standing in for Triton
or a proxy) is read by its status and `Retry-After`, never by the words of its message."""

from __future__ import annotations

import email.utils
import http.server
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from rnd._checks import RANGE_TOL
from rnd.defenses import build_defense
from rnd.errors import BudgetExceededError, InputError, RndError
from rnd.models import build_model
from rnd.oip import (
    HEADER_LENGTH,
    QUOTA_RETRY_AFTER_S,
    STATUS,
    Code,
    Refusal,
    RequestError,
    ResponseError,
    bearer,
    bearer_token,
    build_request,
    build_response,
    infer_path,
    model_path,
    parse_infer,
    parse_response,
    parse_retry_after,
)
from rnd.oracle import RemoteOracle
from rnd.oracle.remote import refusal_error
from rnd.serving.app import create_app
from rnd.serving.keys import KeyStore, SQLiteKeyStore
from tests.serving.test_server import NAME, SHAPE, Served, images


# -- encodings ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("binary", [True, False])
def test_a_request_round_trips_through_the_server_parser(binary: bool) -> None:
    x = images(3)
    body, headers = build_request(x, binary=binary)
    assert (HEADER_LENGTH in headers) is binary
    req = parse_infer(body, headers.get(HEADER_LENGTH), SHAPE, range_tol=RANGE_TOL)
    assert np.array_equal(req.images, x) and req.images.dtype == np.float32
    assert req.binary_output is binary  # the answer comes back in the request's encoding


@pytest.mark.parametrize("binary", [True, False])
def test_an_answer_round_trips_through_the_client_parser(binary: bool) -> None:
    scores = np.random.default_rng(0).random((3, 10), dtype=np.float32)
    scores[1] = np.nan  # a refused row
    body, headers = build_response(NAME, scores, binary=binary, request_id="r1")
    got = parse_response(body, headers.get(HEADER_LENGTH))
    assert got.dtype == np.float32 and np.array_equal(got, scores, equal_nan=True)
    if not binary:  # strict JSON: the refused row is null, not a NaN literal
        doc = json.loads(body, parse_constant=lambda token: pytest.fail(token))
        assert doc["outputs"][0]["data"][10:20] == [None] * 10 and doc["id"] == "r1"
    labels = np.array([3, -1, 7], dtype=np.int64)
    body, headers = build_response(NAME, labels, binary=binary)
    got = parse_response(body, headers.get(HEADER_LENGTH))
    assert got.dtype == np.int64 and got.tolist() == [3, -1, 7]


def test_malformed_requests_and_answers_raise_their_codes() -> None:
    body, headers = build_request(images(2))
    n = headers[HEADER_LENGTH]
    with pytest.raises(RequestError) as bad:
        parse_infer(body[:-4], n, SHAPE, range_tol=RANGE_TOL)  # truncated: not a request
    assert (bad.value.code, bad.value.status) == (Code.BAD_REQUEST, 400)
    too_bright, _ = build_request(images(2) * 3, binary=False)
    with pytest.raises(RequestError) as invalid:
        parse_infer(too_bright, None, SHAPE, range_tol=RANGE_TOL)
    assert (invalid.value.code, invalid.value.status) == (Code.INVALID_INPUT, 422)
    assert "pixels must lie in [0, 1]" in invalid.value.reason
    answer, h = build_response(NAME, np.zeros((2, 10), np.float32), binary=True)
    with pytest.raises(ResponseError, match="truncated"):
        parse_response(answer[:-1], h[HEADER_LENGTH])
    with pytest.raises(ResponseError, match="no single output"):
        parse_response(b'{"outputs": []}', None)


# -- refusals as data ------------------------------------------------------------------------------
def test_every_code_has_its_status() -> None:
    assert STATUS == {
        Code.UNKNOWN_MODEL: 404,
        Code.HEADERS_TOO_LARGE: 431,
        Code.TIMEOUT: 408,
        Code.NOT_READY: 503,
        Code.NO_KEY: 401,
        Code.BAD_KEY: 401,
        Code.BODY_TOO_LARGE: 413,
        Code.BAD_REQUEST: 400,
        Code.INVALID_INPUT: 422,
        Code.QUOTA: 429,
        Code.RATE: 429,
        Code.INTERNAL: 500,
    }


@pytest.mark.parametrize("code", list(Code))
def test_a_refusal_round_trips_through_body_and_headers(code: Code) -> None:
    after = 3.0 if code in (Code.RATE, Code.QUOTA) else None
    sent = Refusal.of(code, "two\nlines", retry_after=after)
    assert sent.status == STATUS[code] and sent.message == "two lines"
    assert sent.body() == {"error": "two lines", "code": code.value}
    got = Refusal.decode(sent.status, json.dumps(sent.body()).encode(), sent.headers())
    assert got == sent and got.kind is code


def test_decode_reads_any_server_and_ignores_unknown_codes() -> None:
    triton = Refusal.decode(400, b'{"error": "unexpected inference input"}', {})
    assert (triton.code, triton.kind, triton.message) == (
        None,
        Code.BAD_REQUEST,
        "unexpected inference input",
    )
    fastapi = Refusal.decode(404, b'{"detail": "Not Found"}', {})
    assert (fastapi.message, fastapi.kind) == ("Not Found", Code.UNKNOWN_MODEL)
    proxy = Refusal.decode(502, b"<html>Bad Gateway</html>", {"retry-after": "7"})
    assert (proxy.code, proxy.kind, proxy.retry_after) == (None, None, 7.0)
    newer = Refusal.decode(429, b'{"error": "x", "code": "some_future_code"}', {"Retry-After": "5"})
    assert newer.code is None and newer.kind is Code.RATE
    odd = Refusal.decode(401, b'{"error": "x", "code": ["bad_key"]}', {})
    assert odd.code is None and odd.kind is Code.BAD_KEY


def test_a_codeless_429_is_read_by_retry_after() -> None:
    def kind(headers: dict[str, str], text: str) -> Code | None:
        return Refusal.decode(429, json.dumps({"error": text}).encode(), headers).kind

    assert kind({"Retry-After": "2"}, "quota exhausted") is Code.RATE  # the words are not read
    assert kind({}, "rate limit") is Code.QUOTA  # no wait named: waiting will not lift it
    assert kind({"Retry-After": str(QUOTA_RETRY_AFTER_S)}, "slow down") is Code.QUOTA
    assert kind({"Retry-After": str(QUOTA_RETRY_AFTER_S - 1)}, "") is Code.RATE


def test_retry_after_values() -> None:
    now = time.time()
    assert parse_retry_after("120") == 120.0 and parse_retry_after(" 0 ") == 0.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert 28 <= parse_retry_after(date, now=now) <= 31  # type: ignore[operator]
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now=now) == 0.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    assert parse_retry_after("nan") is None


def test_paths_and_bearer_headers() -> None:
    assert (model_path("m"), infer_path("m")) == ("/v2/models/m", "/v2/models/m/infer")
    assert bearer_token(bearer("s3cret")["Authorization"]) == "s3cret"
    assert bearer_token("bearer  s3cret ") == "s3cret"
    for value in (None, "", "Basic abc", "Bearer ", "Bearer"):
        assert bearer_token(value) is None, value


# -- every code from the real server, through the real client --------------------------------------
@pytest.fixture(scope="module")
def model() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_model("small-cnn", width=4, hidden=16).eval()


@pytest.fixture(scope="module")
def keyed(model: nn.Module, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Served, KeyStore]]:
    store = SQLiteKeyStore(tmp_path_factory.mktemp("keys") / "keys.sqlite")
    app = create_app(
        model, build_defense("rnd:nu=0.02", model, seed=0), name=NAME, keys=store, max_body_bytes=40_000
    )
    with Served(app) as served:
        yield served, store
    store.close()


def sent_code(served: Served, method: str, path: str, **kw: Any) -> tuple[int, str]:
    """The status and code the real server sends, read off the raw answer."""
    r = served.client.request(method, path, **kw)
    return r.status_code, r.json()["code"]


def test_key_refusals(keyed: tuple[Served, KeyStore]) -> None:
    served, _ = keyed
    assert sent_code(served, "GET", model_path(NAME)) == (401, "no_key")
    assert sent_code(served, "GET", model_path(NAME), headers=bearer("wrong")) == (401, "bad_key")
    with pytest.raises(InputError, match="401 missing API key"):
        RemoteOracle(served.url, NAME)
    with pytest.raises(InputError, match="401 invalid or revoked API key"):
        RemoteOracle(served.url, NAME, "wrong")


def test_unknown_model(keyed: tuple[Served, KeyStore]) -> None:
    served, store = keyed
    key = store.add("meta", budget=10)
    assert sent_code(served, "GET", model_path("other"), headers=bearer(key)) == (404, "unknown_model")
    assert sent_code(served, "POST", infer_path("other"), content=b"{}") == (404, "unknown_model")
    with pytest.raises(InputError, match="404 unknown model 'other'"):
        RemoteOracle(served.url, "other", key)


def test_quota_used_up_is_a_budget_error(keyed: tuple[Served, KeyStore]) -> None:
    served, store = keyed
    with RemoteOracle(served.url, NAME, store.add("quota", budget=5)) as oracle:
        oracle.query(torch.from_numpy(images(3)), oracle.new_ids(3))
        with pytest.raises(BudgetExceededError, match="quota exhausted: 3 images asked, 2 left"):
            oracle.query(torch.from_numpy(images(3)), oracle.new_ids(3))
        refusal = oracle.last_refusal
    assert refusal is not None and (refusal.status, refusal.code) == (429, Code.QUOTA)
    assert refusal.retry_after == QUOTA_RETRY_AFTER_S and store.remaining("quota") == 2


def test_rate_limited_is_an_input_error_naming_the_wait(keyed: tuple[Served, KeyStore]) -> None:
    served, store = keyed
    with RemoteOracle(served.url, NAME, store.add("rate", budget=100, rate=0.5)) as oracle:
        oracle.query(torch.from_numpy(images(1)), oracle.new_ids(1))  # the bucket holds one image
        with pytest.raises(InputError, match=r"rate limited \(rate limit: refused.*retry after 2 s"):
            oracle.query(torch.from_numpy(images(1)), oracle.new_ids(1))
        refusal = oracle.last_refusal
    assert refusal is not None and (refusal.status, refusal.code, refusal.retry_after) == (429, Code.RATE, 2)
    assert store.remaining("rate") == 99


def test_body_too_large_and_invalid_input(keyed: tuple[Served, KeyStore]) -> None:
    served, store = keyed
    with RemoteOracle(served.url, NAME, store.add("big", budget=1000)) as oracle:
        oracle.max_request = 20  # 20 images of 3,136 bytes: over the 40,000-byte cap
        with pytest.raises(InputError, match=r"413 body of \d+ bytes is over the cap of 40000"):
            oracle.query(torch.from_numpy(images(20)), oracle.new_ids(20))
        assert oracle.last_refusal is not None and oracle.last_refusal.code is Code.BODY_TOO_LARGE
        oracle.input_shape = (1, 28, 27)  # the client's checks pass; the server's do not
        with pytest.raises(InputError, match="422 input shape must be"):
            oracle.query(torch.rand(1, 1, 28, 27), oracle.new_ids(1))
        assert oracle.last_refusal is not None and oracle.last_refusal.code is Code.INVALID_INPUT
    assert store.remaining("big") == 999  # the 413 charged nothing; the malformed 422 one image


def test_bad_request(keyed: tuple[Served, KeyStore]) -> None:
    """RemoteOracle never sends a malformed body: the server's 400 is read by its decoder."""
    served, store = keyed
    r = served.client.post(infer_path(NAME), content=b"{nope", headers=bearer(store.add("bad", budget=1)))
    refusal = Refusal.decode(r.status_code, r.content, r.headers)
    assert (refusal.status, refusal.code) == (400, Code.BAD_REQUEST)
    error = refusal_error(refusal, "POST")
    assert type(error) is InputError and "not valid JSON" in str(error)


class Broken(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("the defense broke")


def test_not_ready_and_internal_are_server_errors(model: nn.Module) -> None:
    with Served(create_app(model, build_defense("none", model), name=NAME), lifespan="off") as s:
        assert sent_code(s, "POST", infer_path(NAME), content=b"{}") == (503, "not_ready")
        with RemoteOracle(s.url, NAME) as oracle, pytest.raises(RndError, match="503 server error") as exc:
            oracle.query(torch.from_numpy(images(1)), oracle.new_ids(1))
        assert not isinstance(exc.value, InputError | BudgetExceededError)
        assert oracle.last_refusal is not None and oracle.last_refusal.code is Code.NOT_READY
    with Served(create_app(model, Broken(), name=NAME)) as s:
        with RemoteOracle(s.url, NAME) as oracle, pytest.raises(RndError, match="500 server error") as exc:
            oracle.query(torch.from_numpy(images(1)), oracle.new_ids(1))
        assert not isinstance(exc.value, InputError | BudgetExceededError)
        assert oracle.last_refusal is not None and oracle.last_refusal.code is Code.INTERNAL
        assert oracle.last_refusal.message == "internal error"


# -- a server that sends no code --------------------------------------------------------------------
class Codeless(http.server.BaseHTTPRequestHandler):
    """Open Inference Protocol metadata, and every infer request refused with the class's `status`,
    `headers` and `{"error": text}`: no code, as Triton or a proxy would answer."""

    status = 429
    headers_out: dict[str, str] = {}
    text = ""

    def do_GET(self) -> None:
        meta = {
            "name": "m",
            "inputs": [{"name": "input", "datatype": "FP32", "shape": [-1, *SHAPE]}],
            "outputs": [{"name": "output", "datatype": "FP32", "shape": [-1, 10]}],
        }
        self._send(200, {}, meta)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("content-length", 0)))
        self._send(self.status, self.headers_out, {"error": self.text})

    def _send(self, status: int, headers: dict[str, str], doc: dict[str, Any]) -> None:
        raw = json.dumps(doc).encode()
        self.send_response(status)
        for k, v in {"content-type": "application/json", **headers}.items():
            self.send_header(k, v)
        self.send_header("content-length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def codeless() -> Iterator[tuple[str, type[Codeless]]]:
    handler = type("Handler", (Codeless,), {})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", handler
    finally:
        server.shutdown()
        server.server_close()


def _query_codeless(url: str) -> RemoteOracle:
    oracle = RemoteOracle(url, "m")
    assert (oracle.output, oracle.num_classes) == ("probs", 10)
    return oracle


def test_a_codeless_429_with_a_short_retry_after_is_a_rate_limit(codeless: tuple[str, Any]) -> None:
    url, handler = codeless
    handler.headers_out, handler.text = {"Retry-After": "2"}, "quota exhausted"  # words say quota
    with _query_codeless(url) as oracle:
        with pytest.raises(InputError, match=r"rate limited .* retry after 2 s .*sent no refusal code"):
            oracle.query(torch.from_numpy(images(1)), oracle.new_ids(1))
        refusal = oracle.last_refusal
    assert refusal is not None and (refusal.code, refusal.kind, refusal.retry_after) == (None, Code.RATE, 2)


def test_a_codeless_429_with_an_http_date_is_a_rate_limit(codeless: tuple[str, Any]) -> None:
    url, handler = codeless
    handler.headers_out = {"Retry-After": email.utils.formatdate(time.time() + 60, usegmt=True)}
    with _query_codeless(url) as oracle, pytest.raises(InputError, match="rate limited"):
        oracle.query(torch.from_numpy(images(1)), oracle.new_ids(1))


@pytest.mark.parametrize("headers", [{}, {"Retry-After": str(QUOTA_RETRY_AFTER_S)}])
def test_a_codeless_429_without_a_short_wait_is_a_used_up_quota(
    codeless: tuple[str, Any], headers: dict[str, str]
) -> None:
    url, handler = codeless
    handler.headers_out, handler.text = headers, "rate limit"  # words say rate
    with _query_codeless(url) as oracle:
        with pytest.raises(BudgetExceededError, match="quota refused the query: rate limit"):
            oracle.query(torch.from_numpy(images(1)), oracle.new_ids(1))
        assert oracle.last_refusal is not None and oracle.last_refusal.kind is Code.QUOTA


@pytest.mark.parametrize(("status", "error"), [(401, InputError), (413, InputError), (503, RndError)])
def test_other_codeless_refusals_by_status(codeless: tuple[str, Any], status: int, error: type) -> None:
    url, handler = codeless
    handler.status, handler.text = status, "refused"
    with _query_codeless(url) as oracle, pytest.raises(error, match=f"{status}") as exc:
        oracle.query(torch.from_numpy(images(1)), oracle.new_ids(1))
    assert not isinstance(exc.value, BudgetExceededError)
    assert status != 503 or not isinstance(exc.value, InputError)


def test_the_wire_module_needs_no_extra() -> None:
    from tests.core_only import run_core_only

    extras = {"httpx", "fastapi", "uvicorn", "starlette", "prometheus_client"}
    proc = run_core_only(
        f"import sys, rnd.oip, rnd.serving.guard\nprint(sorted(set(sys.modules) & {extras!r}))"
    )
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stderr
    source = Path(__file__).resolve().parent.parent / "rnd" / "oip.py"
    rnd_imports = {
        line.split()[1]
        for line in source.read_text().splitlines()
        if line.startswith(("from rnd", "import rnd"))
    }
    assert rnd_imports == {"rnd.errors"}
