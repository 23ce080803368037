"""The inference server: a FastAPI app speaking the Open Inference Protocol (KServe v2) with the
defense applied inside, per image, with the server's own generator.

Routes: `GET /v2/health/live`, `GET /v2/health/ready` (503 until the batcher runs),
`GET /v2/models/{name}` (metadata), `POST /v2/models/{name}/infer` (JSON tensors or Triton's
binary-tensor extension), `GET /metrics` (Prometheus). What a client sees is the owner's `output`
setting (probabilities, top-k probabilities or labels), whatever the request asks.

Checks on an infer request, in order: the model name (404), readiness (503), the API key when the
app has a key store (401), the body size from Content-Length and again while reading the stream,
before anything is parsed (413), the request itself (400 / 422, `rnd.serving.codec`), then the
charge of one query per image, atomically in the key store, before the request is answered (429
with `Retry-After` when refused). Every answer to a known key carries `X-Quota-Remaining`. Keys are
never logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import time
from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol

import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from starlette.concurrency import run_in_threadpool
from torch import nn

from rnd._checks import check_int
from rnd.errors import InputError, unknown_name
from rnd.oracle import REFUSED, model_attr
from rnd.serving.batching import Batcher
from rnd.serving.codec import (
    HEADER_LENGTH,
    INPUT_NAME,
    OUTPUT_NAME,
    RequestError,
    build_response,
    parse_infer,
)

log = logging.getLogger(__name__)

ServedOutput = Literal["probs", "topk", "labels"]
SERVED_OUTPUTS = ("probs", "topk", "labels")
#: TorchServe's default body cap (DESIGN section 7).
MAX_BODY_BYTES = 6_553_500
QUOTA_HEADER = "X-Quota-Remaining"
#: Retry-After sent with a refusal that waiting will not lift (quota used up): a day.
QUOTA_RETRY_AFTER_S = 86_400


class Charge(Protocol):
    ok: bool
    remaining: int | None
    retry_after: float | None
    reason: str | None


class Keys(Protocol):
    """What the app needs from a key store (`rnd.serving.keys.KeyStore`)."""

    def authorize(self, token: str) -> Any: ...

    def charge(self, key_id: Any, images: int) -> Charge: ...


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


def _outputs(logits: torch.Tensor, output: ServedOutput, k: int) -> np.ndarray:
    """What the client sees from defended logits; a refused row (all NaN) stays NaN / REFUSED."""
    if output == "labels":
        refused = logits.isnan().all(1)
        return torch.where(refused, REFUSED, logits.argmax(1)).numpy().astype(np.int64)
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
    """
    if output not in SERVED_OUTPUTS:
        raise unknown_name("served output", output, SERVED_OUTPUTS)
    check_int(k, "k", minimum=1)
    check_int(max_body_bytes, "max_body_bytes", minimum=1)
    shape, classes = model_attr(model, "input_shape"), model_attr(model, "num_classes")
    if shape is None or classes is None:
        raise InputError("the served model must define .input_shape and .num_classes (rnd.models do)")
    input_shape = tuple(int(s) for s in shape)  # type: ignore[union-attr]
    num_classes = int(classes)  # type: ignore[call-overload]
    metrics = _Metrics()
    last_left: dict[Any, int] = {}  # per key id: remaining quota after this app's last charge
    batcher = Batcher(defense, max_batch=max_batch, max_wait_ms=max_wait_ms, on_batch=metrics.batch.observe)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        batcher.start()
        try:
            yield
        finally:
            batcher.stop()

    app = FastAPI(title=f"rnd: {name}", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.batcher = batcher
    app.state.metrics = metrics

    @app.get("/v2/health/live")
    async def live() -> dict[str, bool]:
        return {"live": True}

    @app.get("/v2/health/ready")
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
        },
    }

    @app.get("/v2/models/{model_name}")
    async def model_metadata(model_name: str, request: Request) -> Response:
        if model_name != name:
            return JSONResponse({"error": f"unknown model {model_name[:60]!r}; served: {name!r}"}, 404)
        key_id, refused = await authorize(request)
        if refused is not None:
            return refused
        return JSONResponse(metadata, headers=await quota_headers(key_id))

    @app.get("/v2/models/{model_name}/ready")
    async def model_ready(model_name: str) -> Response:
        ok = model_name == name and batcher.running
        return JSONResponse({"ready": ok}, status_code=200 if ok else (404 if model_name != name else 503))

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def refuse(status: int, reason: str, why: str, headers: dict[str, str] | None = None) -> Response:
        metrics.refusals.labels(why).inc()
        return JSONResponse({"error": reason}, status_code=status, headers=headers)

    async def quota_headers(key_id: Any) -> dict[str, str]:
        """The remaining quota of a key without charging it (when the store can tell)."""
        if key_id is None:
            return {}
        left = last_left.get(key_id)
        peek = getattr(keys, "remaining", None)
        if peek is not None:
            # the header is informative: a failed peek falls back to the last charge's figure
            with contextlib.suppress(Exception):
                left = await run_in_threadpool(peek, key_id)
        return {} if left is None else {QUOTA_HEADER: str(int(left))}

    async def authorize(request: Request) -> tuple[Any, Response | None]:
        """(key id, None), or (None, the 401 answer); (None, None) when the app has no keys."""
        if keys is None:
            return None, None
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            return None, refuse(401, "missing API key: send 'Authorization: Bearer KEY'", "no_key")
        key_id = await run_in_threadpool(keys.authorize, token.strip())
        if key_id is None:
            return None, refuse(401, "invalid or revoked API key", "bad_key")
        return key_id, None

    async def handle(model_name: str, request: Request) -> Response:
        if model_name != name:
            return refuse(404, f"unknown model {model_name[:60]!r}; served: {name!r}", "unknown_model")
        if not batcher.running:
            return refuse(503, "the model is not ready; retry shortly", "not_ready")
        key_id, refused = await authorize(request)
        if refused is not None:
            return refused
        length = request.headers.get("content-length")
        if length is not None:
            if not length.strip().isdigit():
                return refuse(
                    400, "Content-Length is not an integer", "bad_request", await quota_headers(key_id)
                )
            if int(length) > max_body_bytes:
                return refuse(
                    413,
                    f"body of {int(length)} bytes is over the cap of {max_body_bytes}; send fewer images",
                    "body_too_large",
                    await quota_headers(key_id),
                )
        chunks, size = [], 0
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_body_bytes:
                return refuse(
                    413,
                    f"body over the cap of {max_body_bytes} bytes; send fewer images",
                    "body_too_large",
                    await quota_headers(key_id),
                )
            chunks.append(chunk)
        body = b"".join(chunks)
        try:
            args = (body, request.headers.get(HEADER_LENGTH), input_shape)
            # a large body is parsed off the event loop (JSON of many images takes milliseconds)
            req = await run_in_threadpool(parse_infer, *args) if len(body) > 65_536 else parse_infer(*args)
        except RequestError as exc:
            why = "bad_request" if exc.status == 400 else "invalid_input"
            return refuse(exc.status, exc.reason, why, await quota_headers(key_id))
        n = req.images.shape[0]
        headers: dict[str, str] = {}
        if keys is not None:
            charge = await run_in_threadpool(keys.charge, key_id, n)
            if charge.remaining is not None:
                last_left[key_id] = int(charge.remaining)
                headers[QUOTA_HEADER] = str(int(charge.remaining))
            if not charge.ok:
                why = _reason_label(charge.reason or "quota")
                if why == "revoked":
                    return refuse(401, "invalid or revoked API key", "bad_key")
                after = charge.retry_after if charge.retry_after is not None else QUOTA_RETRY_AFTER_S
                headers["Retry-After"] = str(max(1, math.ceil(after)))
                if why == "rate":
                    reason = f"rate limit: {n} images refused; retry after {headers['Retry-After']} s"
                else:
                    reason = f"quota exhausted: {n} images asked, {charge.remaining} left on this key"
                return refuse(429, reason, why, headers)
        logits = await asyncio.wrap_future(batcher.submit(torch.from_numpy(req.images.copy())))
        values = _outputs(logits, output, k)
        build = functools.partial(build_response, name, values, binary=req.binary_output, request_id=req.id)
        # JSON of many numbers takes milliseconds: built off the event loop
        big_json = not req.binary_output and values.size > 4096
        body_out, out_headers = await run_in_threadpool(build) if big_json else build()
        metrics.images.inc(n)
        return Response(body_out, headers={**out_headers, **headers})

    @app.post("/v2/models/{model_name}/infer")
    async def infer(model_name: str, request: Request) -> Response:
        start = time.perf_counter()
        try:
            response = await handle(model_name, request)
        except Exception:
            log.exception("infer request failed")
            response = JSONResponse({"error": "internal error"}, status_code=500)
        metrics.requests.labels(str(response.status_code)).inc()
        metrics.latency.observe(time.perf_counter() - start)
        return response

    return app


def _reason_label(reason: str) -> str:
    """A bounded metric label for a key store's refusal reason."""
    low = reason.lower()
    if "rate" in low:
        return "rate"
    if "revoked" in low:
        return "revoked"
    return "quota"
