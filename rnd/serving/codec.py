"""Open Inference Protocol (KServe v2) tensors: JSON and Triton's binary-tensor extension.

A request is `{"inputs": [{"name", "shape", "datatype", "data"}], "outputs": [...]}` as JSON, or,
with the binary extension, the header `Inference-Header-Content-Length: N`: the first N bytes of
the body are that JSON (the input carries `"parameters": {"binary_data_size": B}` instead of
`data`), followed by the B raw little-endian bytes. A response is built the same way: binary when
the request asks for it (`"outputs": [{"name", "parameters": {"binary_data": true}}]` or
`"parameters": {"binary_data_output": true}`), JSON otherwise.

Every malformed request raises `RequestError(status, reason)`: 400 for a body that is not a
request (bad JSON, framing, missing inputs), 422 for a request whose tensor is not images the model
takes (shape, datatype, NaN / inf, pixels outside [0, 1]).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from rnd._checks import RANGE_TOL

HEADER_LENGTH = "inference-header-content-length"
INPUT_NAME = "input"
OUTPUT_NAME = "output"
#: Datatypes by numpy dtype, little-endian as the binary extension sends them.
DATATYPES = {"FP32": np.dtype("<f4"), "INT64": np.dtype("<i8")}


class RequestError(Exception):
    """A request the server refuses: an HTTP status (4xx) and a one-line reason."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason.replace("\n", " ")


@dataclass
class InferRequest:
    """A parsed, checked request: float32 images (N, C, H, W) and how to answer."""

    images: np.ndarray
    binary_output: bool
    id: str | None = None


def _header_length(value: str | None, body_len: int) -> int | None:
    if value is None:
        return None
    try:
        n = int(value.strip())
    except ValueError:
        raise RequestError(400, f"Inference-Header-Content-Length {value[:40]!r} is not an integer") from None
    if n < 0 or n > body_len:
        raise RequestError(
            400, f"Inference-Header-Content-Length {n} does not fit a body of {body_len} bytes"
        )
    return n


def _json_object(raw: bytes | memoryview, what: str) -> dict[str, Any]:
    try:
        doc = json.loads(bytes(raw))
    except (UnicodeDecodeError, ValueError) as exc:
        raise RequestError(400, f"{what} is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise RequestError(400, f"{what} must be a JSON object, got {type(doc).__name__}")
    return doc


def _is_true(value: object) -> bool:
    return value is True


def parse_infer(
    body: bytes, header_length: str | None, input_shape: tuple[int, ...], *, max_images: int | None = None
) -> InferRequest:
    """Parse and check an infer request for a model taking images of `input_shape` (C, H, W)."""
    n_header = _header_length(header_length, len(body))
    view = memoryview(body)
    doc = _json_object(
        view if n_header is None else view[:n_header],
        "the request header" if n_header is not None else "the request body",
    )
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError(400, "the request has no 'inputs' list; send one input tensor named 'input'")
    if len(inputs) != 1:
        raise RequestError(400, f"the model takes one input tensor, got {len(inputs)}")
    spec = inputs[0]
    if not isinstance(spec, dict):
        raise RequestError(400, "inputs[0] must be a JSON object with name, shape, datatype")
    name = spec.get("name")
    if name != INPUT_NAME:
        raise RequestError(422, f"unknown input {str(name)[:40]!r}; the model's input is {INPUT_NAME!r}")
    datatype = spec.get("datatype")
    if datatype != "FP32":
        raise RequestError(422, f"input datatype must be FP32 (pixels in [0, 1]), got {str(datatype)[:20]!r}")
    shape = spec.get("shape")
    if (
        not isinstance(shape, list)
        or len(shape) != 4
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape)
    ):
        raise RequestError(
            422, f"input shape must be [N, {', '.join(map(str, input_shape))}], got {str(shape)[:60]}"
        )
    if tuple(shape[1:]) != tuple(input_shape) or shape[0] < 1:
        raise RequestError(
            422, f"input shape must be [N, {', '.join(map(str, input_shape))}] with N >= 1, got {shape}"
        )
    if max_images is not None and shape[0] > max_images:
        raise RequestError(422, f"at most {max_images} images per request, got {shape[0]}")
    count = math.prod(shape)
    params = spec.get("parameters") or {}
    if not isinstance(params, dict):
        raise RequestError(400, "inputs[0].parameters must be a JSON object")
    if n_header is not None:
        size = params.get("binary_data_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise RequestError(400, "a binary request needs inputs[0].parameters.binary_data_size (bytes)")
        rest = len(body) - n_header
        if size != rest:
            raise RequestError(
                400, f"binary_data_size {size} but {rest} bytes follow the header (truncated or padded body)"
            )
        if size != count * 4:
            raise RequestError(
                422, f"shape {shape} needs {count * 4} bytes of FP32, got binary_data_size {size}"
            )
        x = np.frombuffer(view[n_header:], dtype=DATATYPES["FP32"]).reshape(shape)
    else:
        if "data" not in spec:
            raise RequestError(400, "inputs[0] has no 'data' (and the request is not binary)")
        try:
            x = np.asarray(spec["data"], dtype=np.float32)
        except (TypeError, ValueError):
            raise RequestError(422, "inputs[0].data must be a (nested) list of numbers") from None
        if x.size != count:
            raise RequestError(422, f"shape {shape} needs {count} values, got {x.size}")
        x = x.reshape(shape)
    total = float(x.sum(dtype=np.float64))
    if not math.isfinite(total) and not bool(np.isfinite(x).all()):
        raise RequestError(422, "input contains NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if not math.isfinite(lo) or not math.isfinite(hi):
        raise RequestError(422, "input contains NaN or infinite values")
    if lo < -RANGE_TOL or hi > 1 + RANGE_TOL:
        raise RequestError(422, f"pixels must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")
    top = doc.get("parameters")
    if top is not None and not isinstance(top, dict):
        raise RequestError(400, "the request's 'parameters' must be a JSON object")
    binary_out = _is_true((top or {}).get("binary_data_output"))
    outputs = doc.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
            raise RequestError(400, "'outputs' must be a list of JSON objects")
        for o in outputs:
            if o.get("name") != OUTPUT_NAME:
                raise RequestError(
                    400, f"unknown output {str(o.get('name'))[:40]!r}; the model's output is {OUTPUT_NAME!r}"
                )
            p = o.get("parameters") or {}
            if isinstance(p, dict) and _is_true(p.get("binary_data")):
                binary_out = True
    rid = doc.get("id")
    return InferRequest(np.ascontiguousarray(x), binary_out, rid if isinstance(rid, str) else None)


def build_response(
    model_name: str, values: np.ndarray, *, binary: bool, request_id: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """The response body and headers for output `values` (float32 scores or int64 labels)."""
    datatype = "INT64" if values.dtype.kind == "i" else "FP32"
    values = np.ascontiguousarray(values, dtype=DATATYPES[datatype])
    out: dict[str, Any] = {"name": OUTPUT_NAME, "datatype": datatype, "shape": list(values.shape)}
    doc: dict[str, Any] = {"model_name": model_name, "model_version": "1", "outputs": [out]}
    if request_id is not None:
        doc["id"] = request_id
    if not binary:
        data = values.reshape(-1).tolist()
        if datatype == "FP32" and bool(np.isnan(values).any()):  # refused rows: null, which is JSON
            data = [None if v != v else v for v in data]
        out["data"] = data
        return json.dumps(doc, allow_nan=False).encode(), {"content-type": "application/json"}
    raw = values.tobytes()
    out["parameters"] = {"binary_data_size": len(raw)}
    header = json.dumps(doc).encode()
    return header + raw, {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))}


def build_request(images: np.ndarray, *, binary: bool = True) -> tuple[bytes, dict[str, str]]:
    """A client's infer request for float32 images (N, C, H, W), asking for a binary answer."""
    x = np.ascontiguousarray(images, dtype=DATATYPES["FP32"])
    spec: dict[str, Any] = {"name": INPUT_NAME, "shape": list(x.shape), "datatype": "FP32"}
    doc: dict[str, Any] = {
        "inputs": [spec],
        "outputs": [{"name": OUTPUT_NAME, "parameters": {"binary_data": binary}}],
    }
    if not binary:
        spec["data"] = x.reshape(-1).tolist()
        return json.dumps(doc).encode(), {"content-type": "application/json"}
    raw = x.tobytes()
    spec["parameters"] = {"binary_data_size": len(raw)}
    header = json.dumps(doc).encode()
    return header + raw, {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))}


def parse_response(body: bytes, header_length: str | None) -> np.ndarray:
    """The output tensor of an infer response (JSON or binary)."""
    n_header = _header_length(header_length, len(body))
    view = memoryview(body)
    doc = _json_object(view if n_header is None else view[:n_header], "the response")
    outputs = doc.get("outputs")
    if not isinstance(outputs, list) or len(outputs) != 1 or not isinstance(outputs[0], dict):
        raise RequestError(502, "the response has no single output tensor")
    out = outputs[0]
    dtype = DATATYPES.get(str(out.get("datatype")))
    shape = out.get("shape")
    if dtype is None or not isinstance(shape, list):
        raise RequestError(502, f"unsupported output datatype {out.get('datatype')!r}")
    if n_header is None:
        return np.asarray(out.get("data"), dtype=dtype).reshape(shape)
    size = (out.get("parameters") or {}).get("binary_data_size")
    if size != len(body) - n_header or size != math.prod(shape) * dtype.itemsize:
        raise RequestError(502, "the binary response is truncated or its sizes disagree")
    return np.frombuffer(view[n_header:], dtype=dtype).reshape(shape).copy()
