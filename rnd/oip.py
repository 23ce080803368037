"""The Open Inference Protocol (KServe v2) on the wire, both directions: what `rnd serve` reads and
answers (`rnd.serving.app`) and what `RemoteOracle` sends and reads (`rnd.oracle.remote`). One module,
so the two sides cannot drift apart.

Paths: `/v2/health/live`, `/v2/health/ready`, `/v2/models/{m}`, `/v2/models/{m}/ready`,
`/v2/models/{m}/infer`.

Tensors: a request is `{"inputs": [{"name", "shape", "datatype", "data"}], "outputs": [...]}` as JSON,
or, with Triton's binary-tensor extension, the header `Inference-Header-Content-Length: N`: the first N
bytes of the body are that JSON (the input carries `"parameters": {"binary_data_size": B}` instead of
`data`), followed by the B raw little-endian bytes. A response is built the same way: binary when the
request asks for it (`"outputs": [{"name", "parameters": {"binary_data": true}}]` or
`"parameters": {"binary_data_output": true}`), JSON otherwise.

Refusals: every error body is `{"error": "<one line for people>", "code": "<Code>"}`. The code, not the
words, is the contract: `Code` lists them and `STATUS` their HTTP status. A server that sends no code
(Triton, a proxy) is read by its status and `Retry-After` (`Refusal.kind`).

A malformed request raises `RequestError(code, reason)`: `bad_request` (400) for a body that is not a
request (bad JSON, framing, missing inputs), `invalid_input` (422) for a tensor that is not images the
model takes (shape, datatype, NaN / inf, pixels outside [0, 1]).

May import: the standard library, numpy and `rnd.errors` only. It sits below every other rnd module and
needs no extra (`import rnd.oip` works on the core dependencies).
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import numpy as np

from rnd.errors import InputError, RndError

# -- paths and headers -------------------------------------------------------------------------------
LIVE_PATH = "/v2/health/live"
READY_PATH = "/v2/health/ready"
#: Route templates (the server's); `model_path` and `infer_path` fill them in for a client.
MODEL_PATH = "/v2/models/{model_name}"
MODEL_READY_PATH = "/v2/models/{model_name}/ready"
INFER_PATH = "/v2/models/{model_name}/infer"

#: Length of the JSON part of a binary body (Triton's binary-tensor extension), both directions.
HEADER_LENGTH = "inference-header-content-length"
#: Images left on the key, on every answer to a known, live key (rnd's own header).
QUOTA_HEADER = "X-Quota-Remaining"
RETRY_AFTER = "Retry-After"
AUTHORIZATION = "Authorization"
#: Retry-After sent with a refusal that waiting will not lift (quota used up): a day.
QUOTA_RETRY_AFTER_S = 86_400

INPUT_NAME = "input"
OUTPUT_NAME = "output"
#: Datatypes by numpy dtype, little-endian as the binary extension sends them.
DATATYPES = {"FP32": np.dtype("<f4"), "INT64": np.dtype("<i8")}


def model_path(model: str) -> str:
    """`/v2/models/{model}`: the model's metadata."""
    return MODEL_PATH.format(model_name=model)


def infer_path(model: str) -> str:
    """`/v2/models/{model}/infer`."""
    return INFER_PATH.format(model_name=model)


def bearer(key: str) -> dict[str, str]:
    """The request header carrying API key `key`."""
    return {AUTHORIZATION: f"Bearer {key}"}


def clean_key(key: str) -> str:
    """An API key as typed or pasted, with the blanks around it (a trailing newline or carriage
    return) removed; InputError, never echoing the key, when it is empty or holds other than visible
    ASCII."""
    key = key.strip()
    if not key or not all("!" <= ch <= "~" for ch in key):
        raise InputError(
            "the API key is empty or holds spaces, control or non-ASCII characters; copy it again "
            "(the key is not shown)"
        )
    return key


def bearer_token(value: str | None) -> str | None:
    """The key in an `Authorization` header value; None for no header, another scheme than `Bearer`
    (case-insensitive) or an empty token."""
    scheme, _, token = (value or "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


# -- refusals ----------------------------------------------------------------------------------------
class Code(StrEnum):
    """Why a request was refused: the `code` of an error body (and the server's refusal metric label)."""

    UNKNOWN_MODEL = "unknown_model"
    NOT_READY = "not_ready"
    NO_KEY = "no_key"
    BAD_KEY = "bad_key"
    BODY_TOO_LARGE = "body_too_large"
    HEADERS_TOO_LARGE = "headers_too_large"
    TIMEOUT = "timeout"
    BAD_REQUEST = "bad_request"
    INVALID_INPUT = "invalid_input"
    QUOTA = "quota"
    RATE = "rate"
    INTERNAL = "internal"


#: The HTTP status of each code. Two codes share 401 (no key, bad key) and two share 429 (quota used
#: up: waiting will not lift it; rate limited: retry after `Retry-After` seconds).
STATUS: dict[Code, int] = {
    Code.UNKNOWN_MODEL: 404,
    Code.NOT_READY: 503,
    Code.NO_KEY: 401,
    Code.BAD_KEY: 401,
    Code.BODY_TOO_LARGE: 413,
    Code.HEADERS_TOO_LARGE: 431,
    Code.TIMEOUT: 408,
    Code.BAD_REQUEST: 400,
    Code.INVALID_INPUT: 422,
    Code.QUOTA: 429,
    Code.RATE: 429,
    Code.INTERNAL: 500,
}
#: What a code-less refusal's status means (`Refusal.kind`); 429 is decided by `Retry-After`.
_KIND_OF_STATUS: dict[int, Code] = {
    400: Code.BAD_REQUEST,
    401: Code.BAD_KEY,
    404: Code.UNKNOWN_MODEL,
    408: Code.TIMEOUT,
    413: Code.BODY_TOO_LARGE,
    431: Code.HEADERS_TOO_LARGE,
    422: Code.INVALID_INPUT,
    500: Code.INTERNAL,
    503: Code.NOT_READY,
}


def _code(raw: object) -> Code | None:
    try:
        return Code(raw)
    except ValueError:
        return None


def retry_after_header(seconds: float) -> str:
    """The `Retry-After` value for a wait of `seconds`: whole seconds, rounded up, at least 1."""
    return str(max(1, math.ceil(seconds)))


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` value (delay-seconds or an HTTP-date); None when absent
    or unreadable."""
    if value is None or not value.strip():
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value.strip())
        except (TypeError, ValueError, IndexError):
            return None
        seconds = when.timestamp() - (time.time() if now is None else now)
    return max(0.0, seconds) if math.isfinite(seconds) else None


@dataclass(frozen=True)
class Refusal:
    """A refused request as it travels: HTTP status, code (None from a server that sends none), one
    line for people, and the seconds of `Retry-After` (None when not sent)."""

    status: int
    code: Code | None
    message: str
    retry_after: float | None = None

    @classmethod
    def of(cls, code: Code, message: str, retry_after: float | None = None) -> Refusal:
        """The refusal `code` (its status from `STATUS`) with a one-line `message`."""
        return cls(STATUS[code], code, message.replace("\n", " "), retry_after)

    def body(self) -> dict[str, str]:
        """The JSON error body: `{"error": message, "code": code}`."""
        doc = {"error": self.message}
        if self.code is not None:
            doc["code"] = self.code.value
        return doc

    def headers(self) -> dict[str, str]:
        """`Retry-After` when the refusal names a wait."""
        return {} if self.retry_after is None else {RETRY_AFTER: retry_after_header(self.retry_after)}

    @classmethod
    def decode(cls, status: int, body: bytes, headers: Mapping[str, str]) -> Refusal:
        """Read an error answer from any server: rnd's `{"error", "code"}`, Triton's `{"error"}`,
        FastAPI's `{"detail"}` or plain text. An unknown code is read as no code."""
        message, code = body[:200].decode("utf-8", "replace"), None
        try:
            doc = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            doc = None
        if isinstance(doc, dict):
            text = doc.get("error", doc.get("detail"))
            message = str(text) if text is not None else message
            code = _code(doc.get("code"))
        lower = {k.lower(): v for k, v in headers.items()}
        after = parse_retry_after(lower.get(RETRY_AFTER.lower()))
        return cls(status, code, message.replace("\n", " ").strip(), after)

    @property
    def kind(self) -> Code | None:
        """The code; from a server that sends none, the code its status implies. A code-less 429 is a
        rate limit when `Retry-After` names a wait shorter than a day (`QUOTA_RETRY_AFTER_S`, what rnd
        sends for a used-up quota), and a used-up quota otherwise (no wait named, or a day or more)."""
        if self.code is not None:
            return self.code
        if self.status == 429:
            rate = self.retry_after is not None and self.retry_after < QUOTA_RETRY_AFTER_S
            return Code.RATE if rate else Code.QUOTA
        return _KIND_OF_STATUS.get(self.status)


class RequestError(RndError):
    """A request the server refuses as malformed: its code (bad_request, invalid_input) and a
    one-line reason."""

    def __init__(self, code: Code, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason.replace("\n", " ")

    @property
    def status(self) -> int:
        return STATUS[self.code]


class ResponseError(RndError):
    """An answer that does not follow the protocol (truncated, sizes that disagree, no output)."""


# -- tensors -----------------------------------------------------------------------------------------
@dataclass
class InferRequest:
    """A parsed, checked request: float32 images (N, C, H, W) and how to answer."""

    images: np.ndarray
    binary_output: bool
    id: str | None = None


_BAD, _INVALID = Code.BAD_REQUEST, Code.INVALID_INPUT


def _header_length(value: str | None, body_len: int) -> int | None:
    if value is None:
        return None
    try:
        n = int(value.strip())
    except ValueError:
        raise RequestError(
            _BAD, f"Inference-Header-Content-Length {value[:40]!r} is not an integer"
        ) from None
    if n < 0 or n > body_len:
        raise RequestError(
            _BAD, f"Inference-Header-Content-Length {n} does not fit a body of {body_len} bytes"
        )
    return n


#: Nesting a JSON request may have (an infer request with nested N-d data needs 7).
MAX_JSON_DEPTH = 16


def json_depth(raw: bytes | memoryview, cap: int) -> int:
    """How deep the brackets of `raw` nest (counted over every `[` and `{`, inside strings too: an
    upper bound of the JSON depth), read in C-speed steps: 0 work beyond two counts when there are
    no more than `cap` opening brackets in all."""
    data = raw if isinstance(raw, bytes) else bytes(raw)
    opening = data.count(b"[") + data.count(b"{")
    if opening <= cap:
        return opening
    deepest, level = 0, 0
    step = 1 << 20
    for start in range(0, len(data), step):  # 1 MiB at a time: a few MB of temporaries at most
        b = np.frombuffer(data, dtype=np.uint8, count=min(step, len(data) - start), offset=start)
        moves = (b == 0x5B).astype(np.int32) + (b == 0x7B) - (b == 0x5D) - (b == 0x7D)
        run = np.cumsum(moves) + level
        if run.size:
            deepest, level = max(deepest, int(run.max())), int(run[-1])
    return deepest


def check_json_bounds(raw: bytes | memoryview, what: str, max_depth: int, max_values: int | None) -> None:
    """Refuse (400), before it is parsed, a JSON text nested deeper than `max_depth` or holding more
    than `max_values` numbers (counted as its commas: an upper bound), so that a parse holds at most
    about 32 bytes per value (a Python float and its list slot)."""
    if max_values is not None:
        data = raw if isinstance(raw, bytes) else bytes(raw)
        values = data.count(b",") - 64  # the request's own fields, beyond the data
        if values > max_values:
            raise RequestError(
                _BAD,
                f"{what} holds about {values} values, over the JSON cap of {max_values}; send larger "
                "batches with the binary tensor extension (Inference-Header-Content-Length)",
            )
    if json_depth(raw, max_depth) > max_depth:
        raise RequestError(_BAD, f"{what} nests deeper than {max_depth} levels")


def _json_object(
    raw: bytes | memoryview, what: str, max_depth: int = MAX_JSON_DEPTH, max_values: int | None = None
) -> dict[str, Any]:
    raw = bytes(raw)  # one copy, for the bounds and the parse
    check_json_bounds(raw, what, max_depth, max_values)
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise RequestError(_BAD, f"{what} is not valid JSON ({type(exc).__name__})") from None
    if not isinstance(doc, dict):
        raise RequestError(_BAD, f"{what} must be a JSON object, got {type(doc).__name__}")
    return doc


def _holds_bool(data: object) -> bool:
    stack = [data]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, bool):
            return True
    return False


def _numbers(data: object, raw: bytes) -> np.ndarray:
    """JSON `data` as float32, when it is a (nested, rectangular) list of numbers and nothing else."""
    bad = RequestError(_INVALID, "inputs[0].data must be a (nested) list of numbers, and numbers only")
    if not isinstance(data, list):
        raise bad
    try:
        x = np.asarray(data)
    except (TypeError, ValueError):
        raise bad from None
    if x.dtype.kind not in "fiu":  # strings, nulls, ragged lists; all-boolean data is kind "b"
        raise bad
    if (b"true" in raw or b"false" in raw) and _holds_bool(data):  # booleans among numbers
        raise bad
    return x.astype(np.float32, copy=False)


def _is_true(value: object) -> bool:
    return value is True


def parse_infer(
    body: bytes,
    header_length: str | None,
    input_shape: tuple[int, ...],
    *,
    range_tol: float,
    max_images: int | None = None,
    max_json_depth: int = MAX_JSON_DEPTH,
    max_json_values: int | None = None,
) -> InferRequest:
    """Parse and check an infer request for a model taking images of `input_shape` (C, H, W), pixels
    in [0, 1] give or take `range_tol`; raise `RequestError` at the first fault. A JSON text is
    bounded before it is parsed (`check_json_bounds`); JSON pixels must be numbers (not strings,
    booleans or nulls)."""
    n_header = _header_length(header_length, len(body))
    view = memoryview(body)
    doc = _json_object(
        view if n_header is None else view[:n_header],
        "the request header" if n_header is not None else "the request body",
        max_json_depth,
        max_json_values,
    )
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError(_BAD, "the request has no 'inputs' list; send one input tensor named 'input'")
    if len(inputs) != 1:
        raise RequestError(_BAD, f"the model takes one input tensor, got {len(inputs)}")
    spec = inputs[0]
    if not isinstance(spec, dict):
        raise RequestError(_BAD, "inputs[0] must be a JSON object with name, shape, datatype")
    name = spec.get("name")
    if name != INPUT_NAME:
        raise RequestError(_INVALID, f"unknown input {str(name)[:40]!r}; the model's input is {INPUT_NAME!r}")
    datatype = spec.get("datatype")
    if datatype != "FP32":
        raise RequestError(
            _INVALID, f"input datatype must be FP32 (pixels in [0, 1]), got {str(datatype)[:20]!r}"
        )
    shape = spec.get("shape")
    want = ", ".join(map(str, input_shape))
    if (
        not isinstance(shape, list)
        or len(shape) != 4
        or not all(isinstance(s, int) and not isinstance(s, bool) for s in shape)
    ):
        raise RequestError(_INVALID, f"input shape must be [N, {want}], got {str(shape)[:60]}")
    if tuple(shape[1:]) != tuple(input_shape) or shape[0] < 1:
        raise RequestError(_INVALID, f"input shape must be [N, {want}] with N >= 1, got {shape}")
    if max_images is not None and shape[0] > max_images:
        raise RequestError(_INVALID, f"at most {max_images} images per request, got {shape[0]}")
    count = math.prod(shape)
    params = spec.get("parameters") or {}
    if not isinstance(params, dict):
        raise RequestError(_BAD, "inputs[0].parameters must be a JSON object")
    if n_header is not None:
        size = params.get("binary_data_size")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise RequestError(_BAD, "a binary request needs inputs[0].parameters.binary_data_size (bytes)")
        rest = len(body) - n_header
        if size != rest:
            raise RequestError(
                _BAD, f"binary_data_size {size} but {rest} bytes follow the header (truncated or padded body)"
            )
        if size != count * 4:
            raise RequestError(
                _INVALID, f"shape {shape} needs {count * 4} bytes of FP32, got binary_data_size {size}"
            )
        x = np.frombuffer(view[n_header:], dtype=DATATYPES["FP32"]).reshape(shape)
    else:
        if "data" not in spec:
            raise RequestError(_BAD, "inputs[0] has no 'data' (and the request is not binary)")
        x = _numbers(spec["data"], body)
        if x.size != count:
            raise RequestError(_INVALID, f"shape {shape} needs {count} values, got {x.size}")
        x = x.reshape(shape)
    total = float(x.sum(dtype=np.float64))
    if not math.isfinite(total) and not bool(np.isfinite(x).all()):
        raise RequestError(_INVALID, "input contains NaN or infinite values")
    lo, hi = float(x.min()), float(x.max())
    if not math.isfinite(lo) or not math.isfinite(hi):
        raise RequestError(_INVALID, "input contains NaN or infinite values")
    if lo < -range_tol or hi > 1 + range_tol:
        raise RequestError(_INVALID, f"pixels must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]")
    top = doc.get("parameters")
    if top is not None and not isinstance(top, dict):
        raise RequestError(_BAD, "the request's 'parameters' must be a JSON object")
    binary_out = _is_true((top or {}).get("binary_data_output"))
    outputs = doc.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list) or not all(isinstance(o, dict) for o in outputs):
            raise RequestError(_BAD, "'outputs' must be a list of JSON objects")
        for o in outputs:
            if o.get("name") != OUTPUT_NAME:
                raise RequestError(
                    _BAD, f"unknown output {str(o.get('name'))[:40]!r}; the model's output is {OUTPUT_NAME!r}"
                )
            p = o.get("parameters") or {}
            if isinstance(p, dict) and _is_true(p.get("binary_data")):
                binary_out = True
    rid = doc.get("id")
    return InferRequest(np.ascontiguousarray(x), binary_out, rid if isinstance(rid, str) else None)


def _framed(doc: dict[str, Any], spec: dict[str, Any], values: np.ndarray) -> tuple[bytes, dict[str, str]]:
    """A binary body: the JSON `doc` (with `spec` given the raw size), then the raw bytes."""
    raw = values.tobytes()
    spec["parameters"] = {"binary_data_size": len(raw)}
    header = json.dumps(doc).encode()
    return header + raw, {"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))}


def build_response(
    model_name: str, values: np.ndarray, *, binary: bool, request_id: str | None = None
) -> tuple[bytes, dict[str, str]]:
    """The response body and headers for output `values` (float32 scores or int64 labels). A refused
    row (all NaN) is all `null` in JSON (strict JSON has no NaN) and NaN in binary."""
    datatype = "INT64" if values.dtype.kind == "i" else "FP32"
    values = np.ascontiguousarray(values, dtype=DATATYPES[datatype])
    out: dict[str, Any] = {"name": OUTPUT_NAME, "datatype": datatype, "shape": list(values.shape)}
    doc: dict[str, Any] = {"model_name": model_name, "model_version": "1", "outputs": [out]}
    if request_id is not None:
        doc["id"] = request_id
    if binary:
        return _framed(doc, out, values)
    data = values.reshape(-1).tolist()
    if datatype == "FP32" and bool(np.isnan(values).any()):
        data = [None if v != v else v for v in data]
    out["data"] = data
    return json.dumps(doc, allow_nan=False).encode(), {"content-type": "application/json"}


def build_request(images: np.ndarray, *, binary: bool = True) -> tuple[bytes, dict[str, str]]:
    """A client's infer request for float32 images (N, C, H, W), asking for an answer in the same
    encoding (binary tensors by default)."""
    x = np.ascontiguousarray(images, dtype=DATATYPES["FP32"])
    spec: dict[str, Any] = {"name": INPUT_NAME, "shape": list(x.shape), "datatype": "FP32"}
    doc: dict[str, Any] = {
        "inputs": [spec],
        "outputs": [{"name": OUTPUT_NAME, "parameters": {"binary_data": binary}}],
    }
    if binary:
        return _framed(doc, spec, x)
    spec["data"] = x.reshape(-1).tolist()
    return json.dumps(doc).encode(), {"content-type": "application/json"}


def parse_response(body: bytes, header_length: str | None) -> np.ndarray:
    """The output tensor of an infer response (JSON or binary; JSON nulls read as NaN); raise
    `ResponseError` for an answer that does not follow the protocol."""
    try:
        n_header = _header_length(header_length, len(body))
        view = memoryview(body)
        doc = _json_object(view if n_header is None else view[:n_header], "the response")
    except RequestError as exc:
        raise ResponseError(f"the server's answer is malformed: {exc.reason}") from None
    outputs = doc.get("outputs")
    if not isinstance(outputs, list) or len(outputs) != 1 or not isinstance(outputs[0], dict):
        raise ResponseError("the server's answer has no single output tensor")
    out = outputs[0]
    dtype = DATATYPES.get(str(out.get("datatype")))
    shape = out.get("shape")
    if dtype is None or not isinstance(shape, list):
        raise ResponseError(f"the server's answer has an unsupported output datatype {out.get('datatype')!r}")
    if n_header is None:
        try:
            return np.asarray(out.get("data"), dtype=dtype).reshape(shape)
        except (TypeError, ValueError) as exc:
            raise ResponseError(f"the server's answer does not fit shape {shape}: {exc}") from None
    size = (out.get("parameters") or {}).get("binary_data_size")
    if size != len(body) - n_header or size != math.prod(shape) * dtype.itemsize:
        raise ResponseError("the server's binary answer is truncated or its sizes disagree")
    return np.frombuffer(view[n_header:], dtype=dtype).reshape(shape).copy()


def served_model(url: str, model_name: str | None = None, name_option: str = "") -> tuple[str, str]:
    """(base URL, model name) from `BASE/v2/models/NAME`, or from `BASE` and `model_name` (given
    as `name_option` on a command line)."""
    if not url.startswith(("http://", "https://")):
        raise InputError(f"the endpoint URL must start with http:// or https://, got {url!r}")
    base, sep, name = url.rstrip("/").partition("/v2/models/")
    if sep and name and "/" not in name:
        if model_name is not None and model_name != name:
            raise InputError(
                f"the URL names model {name!r} and {name_option or 'the model name'} {model_name!r}; give one"
            )
        return base, name
    if model_name is None:
        raise InputError(
            "give the served model: a URL BASE/v2/models/NAME"
            + (f" or {name_option} NAME" if name_option else "")
        )
    return base, model_name
