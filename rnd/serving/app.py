"""The inference server: a FastAPI app speaking the Open Inference Protocol (KServe v2, `rnd.oip`)
with the defense applied inside, per image, with the server's own generator. Routes only: the wire
format is `rnd.oip`, the key check, body cap and quota charge are `rnd.serving.guard`.

Routes: `GET /v2/health/live`, `GET /v2/health/ready` (503 until the batcher runs),
`GET /v2/models/{name}` (metadata), `POST /v2/models/{name}/infer` (JSON tensors or Triton's
binary-tensor extension), `GET /metrics` (Prometheus). What a client sees is the owner's `output`
setting (probabilities, top-k probabilities or labels), whatever the request asks.

Checks on an infer request, in order: the header count (431, every route), the model name (404),
readiness (503), then, before a byte of the body is read: the API key when the app has a key store
(401), whether the key could pay for one image now (429 quota or rate), and the body size from
Content-Length (413). Then the body, within `body_timeout_s` (408) and counted against the cap while
it is read (413); the request itself, its JSON bounded before it is parsed (400 / 422,
`rnd.oip.parse_infer`); a malformed request is metered: it costs its key one image. Then the charge
of one query per image, atomically in the key store, before the request is answered (429 with
`Retry-After` when refused). A refusal before the body is read closes the connection, so an unread
body costs nothing more. Every refusal body is `{"error": ..., "code": ...}` (`rnd.oip.Code`, also
the refusal metric's label). Every answer to a known key carries `X-Quota-Remaining`. Keys are never
logged; a client that disconnects mid-request is one log line (INFO) and a metric.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from torch import nn

from rnd._checks import RANGE_TOL, check_int
from rnd.errors import InputError, unknown_name
from rnd.oip import (
    HEADER_LENGTH,
    INFER_PATH,
    INPUT_NAME,
    LIVE_PATH,
    MODEL_PATH,
    MODEL_READY_PATH,
    OUTPUT_NAME,
    READY_PATH,
    Code,
    Refusal,
    RequestError,
    build_response,
    parse_infer,
)
from rnd.oracle import answer_labels, model_attr
from rnd.serving.batching import Batcher
from rnd.serving.guard import MAX_BODY_BYTES, Guard, Keys
from rnd.serving.limits import ServerLimits

log = logging.getLogger(__name__)

ServedOutput = Literal["probs", "topk", "labels"]
SERVED_OUTPUTS = ("probs", "topk", "labels")
MetricsAccess = Literal["public", "key", "off"]
METRICS_ACCESS = ("public", "key", "off")


class HeaderCap:
    """ASGI middleware: a request with more than `max_headers` header lines gets 431 before any route
    runs (the bytes of the head are capped by the protocol, `rnd.serving.protocol`)."""

    def __init__(self, app: Any, max_headers: int) -> None:
        self.app = app
        self.max_headers = max_headers

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http" and len(scope["headers"]) > self.max_headers:
            refusal = Refusal.of(
                Code.HEADERS_TOO_LARGE, f"more than {self.max_headers} header lines; send fewer"
            )
            response = JSONResponse(refusal.body(), refusal.status, headers={"connection": "close"})
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)


class _Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("rnd_requests", "Infer requests by HTTP status", ["status"], registry=r)
        self.images = Counter("rnd_images", "Images answered", registry=r)
        self.refusals = Counter("rnd_refusals", "Refused infer requests by reason", ["reason"], registry=r)
        self.batch = Histogram(
            "rnd_batch_size",
            "Images per model forward",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048),
            registry=r,
        )
        self.latency = Histogram("rnd_request_latency_seconds", "Infer request latency", registry=r)
        self.body_bytes = Counter("rnd_body_bytes", "Bytes of infer request bodies read", registry=r)
        self.disconnects = Counter(
            "rnd_client_disconnects", "Clients gone before their request was read", registry=r
        )


def _outputs(logits: torch.Tensor, output: ServedOutput, k: int) -> np.ndarray:
    """What the client sees from defended logits; a refused row (all NaN) stays NaN / REFUSED."""
    if output == "labels":
        return answer_labels(logits).numpy().astype(np.int64)
    probs = logits.softmax(1)
    if output == "topk":
        top = probs.topk(min(k, probs.shape[1]), dim=1).indices
        probs = torch.zeros_like(probs).scatter_(1, top, probs.gather(1, top))
    return probs.numpy()


def create_app(
    model: nn.Module,
    defense: nn.Module,
    *,
    name: str,
    output: ServedOutput = "probs",
    k: int = 5,
    keys: Keys | None = None,
    max_batch: int = 256,
    max_wait_ms: float = 2.0,
    max_body_bytes: int = MAX_BODY_BYTES,
    limits: ServerLimits | None = None,
    metrics_access: MetricsAccess = "public",
) -> FastAPI:
    """The app serving `defense` (the defended `model`) as model `name`.

    Args:
        model: the bare classifier (its `input_shape` and `num_classes` describe the endpoint).
        defense: what answers queries, e.g. `build_defense("rnd:nu=0.02", model)`; called only by
            the batcher's worker thread.
        output: what clients see: "probs", "topk" (the k best probabilities, zero elsewhere) or
            "labels" (INT64 class indices).
        keys: a key store (`authorize`, `charge`); None serves without keys or quotas.
        max_batch, max_wait_ms: dynamic batching (`rnd.serving.batching.Batcher`).
        max_body_bytes: the largest request body accepted (413 beyond it).
        limits: header count, body timeout and JSON bounds (`rnd.serving.limits.ServerLimits`; its
            JSON value cap defaults to `max_batch` images' worth).
        metrics_access: `/metrics` for anyone ("public"), for a valid key only ("key"; needs a key
            store), or not served ("off").
    """
    if output not in SERVED_OUTPUTS:
        raise unknown_name("served output", output, SERVED_OUTPUTS)
    check_int(k, "k", minimum=1)
    check_int(max_body_bytes, "max_body_bytes", minimum=1)
    if metrics_access not in METRICS_ACCESS:
        raise unknown_name("metrics access", metrics_access, METRICS_ACCESS)
    if metrics_access == "key" and keys is None:
        raise InputError("metrics behind a key need a key store (--keys)")
    limits = limits or ServerLimits()
    shape, classes = model_attr(model, "input_shape"), model_attr(model, "num_classes")
    if shape is None or classes is None:
        raise InputError("the served model must define .input_shape and .num_classes (rnd.models do)")
    input_shape = tuple(int(s) for s in shape)  # type: ignore[union-attr]
    num_classes = int(classes)  # type: ignore[call-overload]
    max_json_values = limits.max_json_values or max_batch * math.prod(input_shape)
    metrics = _Metrics()
    guard = Guard(keys, max_body_bytes)
    batcher = Batcher(defense, max_batch=max_batch, max_wait_ms=max_wait_ms, on_batch=metrics.batch.observe)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            batcher.stop()

    app = FastAPI(title=f"rnd: {name}", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.add_middleware(HeaderCap, max_headers=limits.max_headers)
    app.state.batcher = batcher
    app.state.metrics = metrics

    @app.get(LIVE_PATH)
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get(READY_PATH)
    async def ready() -> Response:
        ok = batcher.running
        return JSONResponse({"ready": ok}, status_code=200 if ok else 503)

    out_shape = [-1] if output == "labels" else [-1, num_classes]
    metadata = {
        "name": name,
        "versions": ["1"],
        "platform": "rnd",
        "inputs": [{"name": INPUT_NAME, "datatype": "FP32", "shape": [-1, *input_shape]}],
        "outputs": [
            {"name": OUTPUT_NAME, "datatype": "INT64" if output == "labels" else "FP32", "shape": out_shape}
        ],
        "parameters": {
            "output": output,
            "k": k,
            "num_classes": num_classes,
            "max_body_bytes": max_body_bytes,
            "max_batch": max_batch,
            "max_json_values": max_json_values,
        },
    }

    def unknown_model(model_name: str) -> Refusal:
        return Refusal.of(Code.UNKNOWN_MODEL, f"unknown model {model_name[:60]!r}; check the URL")

    @app.get(MODEL_PATH)
    async def model_metadata(model_name: str, request: Request) -> Response:
        if model_name != name:  # answered, not counted as a refusal
            refusal = unknown_model(model_name)
            return JSONResponse(refusal.body(), refusal.status)
        key_id, refused = await authorize(request)
        if refused is not None:
            return refuse(refused)
        return JSONResponse(metadata, headers=await quota_headers(key_id))

    if metrics_access != "off":

        @app.get("/metrics")
        async def prometheus(request: Request) -> Response:
            if metrics_access == "key":
                _, refused = await authorize(request)
                if refused is not None:
                    return refuse(refused)
            return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get(MODEL_READY_PATH)
    async def model_ready(model_name: str) -> Response:
        ok = model_name == name and batcher.running
        return JSONResponse({"ready": ok}, status_code=200 if ok else (404 if model_name != name else 503))

    def refuse(refusal: Refusal, headers: dict[str, str] | None = None, close: bool = False) -> Response:
        """The error answer `{"error", "code"}`, counted under its code; `close` ends the connection
        after it (a body left unread is not read)."""
        metrics.refusals.labels(str(refusal.code)).inc()
        out = {**refusal.headers(), **(headers or {})}
        if close:
            out["connection"] = "close"
        return JSONResponse(refusal.body(), refusal.status, headers=out)

    async def quota_headers(key_id: Any) -> dict[str, str]:
        return {} if key_id is None else await run_in_threadpool(guard.quota_headers, key_id)

    async def authorize(request: Request) -> tuple[Any, Refusal | None]:
        if keys is None:
            return None, None
        return await run_in_threadpool(guard.authorize, request.headers.get("authorization"))

    async def admit(request: Request) -> tuple[Any, Refusal | None, dict[str, str]]:
        if keys is None:
            return None, None, {}
        return await run_in_threadpool(guard.admit, request.headers.get("authorization"))

    def body_pending(request: Request) -> bool:
        length = request.headers.get("content-length")
        return "transfer-encoding" in request.headers or (length is not None and length.strip() != "0")

    async def handle(model_name: str, request: Request) -> Response:
        if model_name != name:
            return refuse(unknown_model(model_name), close=body_pending(request))
        if not batcher.running:
            return refuse(Refusal.of(Code.NOT_READY, "the model is not ready; retry shortly"))
        key_id, refused, headers = await admit(request)  # the key, and one image's worth of quota
        if refused is not None:
            return refuse(refused, headers, close=body_pending(request))
        refused = guard.check_length(request.headers.get("content-length"))
        if refused is not None:
            return refuse(refused, headers, close=True)
        try:
            body = await asyncio.wait_for(guard.read_body(request.stream()), limits.body_timeout_s)
        except TimeoutError:
            timeout = Refusal.of(Code.TIMEOUT, f"the body did not arrive within {limits.body_timeout_s:g} s")
            return refuse(timeout, headers, close=True)
        if isinstance(body, Refusal):
            return refuse(body, headers, close=True)
        metrics.body_bytes.inc(len(body))
        try:
            args = (body, request.headers.get(HEADER_LENGTH), input_shape)
            parse = functools.partial(
                parse_infer,
                *args,
                range_tol=RANGE_TOL,
                max_json_depth=limits.max_json_depth,
                max_json_values=max_json_values,
            )
            # a large body is parsed off the event loop (JSON of many images takes milliseconds)
            req = await run_in_threadpool(parse) if len(body) > 65_536 else parse()
        except RequestError as exc:
            if keys is not None:  # a malformed request is metered: it costs its key one image
                headers, refused = await run_in_threadpool(guard.charge, key_id, 1)
                if refused is not None:
                    return refuse(refused, headers)
            return refuse(Refusal.of(exc.code, exc.reason), headers)
        n = req.images.shape[0]
        if keys is not None:
            headers, refused = await run_in_threadpool(guard.charge, key_id, n)
            if refused is not None:
                return refuse(refused, headers)
        logits = await asyncio.wrap_future(batcher.submit(torch.from_numpy(req.images.copy())))
        values = _outputs(logits, output, k)
        build = functools.partial(build_response, name, values, binary=req.binary_output, request_id=req.id)
        # JSON of many numbers takes milliseconds: built off the event loop
        big_json = not req.binary_output and values.size > 4096
        body_out, out_headers = await run_in_threadpool(build) if big_json else build()
        metrics.images.inc(n)
        return Response(body_out, headers={**out_headers, **headers})

    @app.post(INFER_PATH)
    async def infer(model_name: str, request: Request) -> Response:
        start = time.perf_counter()
        try:
            response = await handle(model_name, request)
        except ClientDisconnect:
            client = request.client.host if request.client else "a client"
            log.info("%s disconnected before its request was read whole", client)
            metrics.disconnects.inc()
            response = Response(status_code=400)  # not sent: no one is listening
        except Exception:
            log.exception("infer request failed")
            internal = Refusal.of(Code.INTERNAL, "internal error")
            response = JSONResponse(internal.body(), status_code=internal.status)
        metrics.requests.labels(str(response.status_code)).inc()
        metrics.latency.observe(time.perf_counter() - start)
        return response

    return app
