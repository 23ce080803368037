"""The oracle protocol over HTTP: query a model served with `rnd serve` (or any Open Inference
Protocol server answering probabilities or labels) exactly as attacks query the local `Oracle`.

Counts are kept client side per image id, with the local oracle's rules: each row costs `eot`
queries, a query that would take an id past the budget raises `BudgetExceededError` and sends
nothing, and EOT answers are the mean (scores) or the vote (labels) of M answers. The server's own
count travels back in `X-Quota-Remaining`; the oracle checks it against its own (a key used by one
oracle only: another client on the same key would show as a mismatch).
"""

from __future__ import annotations

import json
import math

import httpx
import numpy as np
import torch

from rnd._checks import check_images, check_int
from rnd.errors import BudgetExceededError, InputError, RndError
from rnd.oracle.ledger import Ledger
from rnd.oracle.protocol import OUTPUTS, REFUSED, Output

QUOTA_HEADER = "x-quota-remaining"
HEADER_LENGTH = "inference-header-content-length"


class RemoteOracle(Ledger):
    """Answer queries with a served model over HTTP (binary tensors, one connection pool).

    Args:
        url: the server's base URL, e.g. "http://127.0.0.1:8000".
        model: the served model's name (the URL's `/v2/models/{model}`).
        key: the API key, sent as `Authorization: Bearer KEY` (None: a server without keys).
        budget: queries allowed per image id, counted here (None = unlimited).
        timeout: seconds per HTTP request.
        eot: default number M of answers averaged per query (each costs one query).
        max_request: most images sent in one HTTP request (a query is split into as few requests).
        check_quota: compare the server's remaining quota with this oracle's own count.

    `output`, `num_classes` and `input_shape` come from the model's metadata, and requests are kept
    under the server's body cap when the metadata gives it. Refused rows (a stateful defense behind
    the server: NaN scores or the label `REFUSED`) are recorded in `refusals` and `first_refusal`
    as the local oracle does.
    """

    def __init__(
        self,
        url: str,
        model: str,
        key: str | None = None,
        *,
        budget: int | None = None,
        timeout: float = 30,
        eot: int = 1,
        max_request: int = 1024,
        check_quota: bool = True,
    ) -> None:
        if budget is not None:
            check_int(budget, "budget", minimum=1)
        self.eot = check_int(eot, "eot", minimum=1)
        self.max_request = check_int(max_request, "max_request", minimum=1)
        self.budget = budget
        self.model = model
        self.check_quota = check_quota
        headers = {"authorization": f"Bearer {key}"} if key is not None else {}
        self._client = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)
        meta = self._get(f"/v2/models/{model}")
        try:
            shape = meta["inputs"][0]["shape"]
            self.input_shape: tuple[int, ...] = tuple(int(s) for s in shape[1:])
            out = meta["outputs"][0]
            params = meta.get("parameters") or {}
            output = params.get("output") or ("labels" if out["datatype"] == "INT64" else "probs")
            classes = params.get("num_classes") or (out["shape"][-1] if len(out["shape"]) == 2 else None)
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise InputError(
                f"model metadata of {model!r} at {url} is not Open Inference Protocol: {exc}"
            ) from None
        if output not in OUTPUTS or classes is None:
            raise InputError(f"model {model!r} at {url}: cannot tell its output ({output!r}) or classes")
        self.output: Output = output
        self.num_classes = int(classes)
        self.k = int(params.get("k") or 1)
        cap = params.get("max_body_bytes")
        per_image = 4 * math.prod(self.input_shape)
        if isinstance(cap, int) and cap > 0:  # requests stay under the server's body cap
            self.max_request = max(1, min(self.max_request, (cap - 4096) // per_image))
        self._init_ledger()
        self._server_left: int | None = None  # the server's remaining quota after our last request
        self.requests = 0

    # -- queries -------------------------------------------------------------------------------
    def query(self, x: torch.Tensor, ids: torch.Tensor, eot: int | None = None) -> torch.Tensor:
        """Answer `x` (float32 pixels in [0, 1]) whose row i belongs to image `ids[i]`; as
        `Oracle.query`. Rows are sent in requests of at most `max_request` images; each answered
        request is counted (a refusal part-way leaves the earlier requests counted, as the server
        charged them) and a 429 raises `BudgetExceededError` (quota) or `InputError` (rate)."""
        m = self.eot if eot is None else check_int(eot, "eot", minimum=1)
        check_images(x, self.input_shape, name="queries")
        ids, lo, hi = self._ids_range(ids)
        if ids.numel() != x.shape[0]:
            raise InputError(f"got {x.shape[0]} queries but {ids.numel()} ids")
        n = x.shape[0]
        self._cost(ids, lo, hi, m)  # raises, sending nothing, when an id would pass its budget
        xm = x.detach().cpu() if m == 1 else x.detach().cpu().repeat_interleave(m, dim=0)
        idm = ids if m == 1 else ids.repeat_interleave(m)
        parts = []
        for start in range(0, n * m, self.max_request):
            rows = slice(start, start + self.max_request)
            parts.append(self._infer(xm[rows].numpy()))
            self._counts.index_add_(0, idm[rows], torch.ones(parts[-1].shape[0], dtype=torch.int64))
        answers = parts[0] if len(parts) == 1 else torch.cat(parts)
        refused_m = answers == REFUSED if self.output == "labels" else answers.isnan().all(1)
        self._record_refusals(ids, lo, hi, refused_m.view(n, m).all(1))
        return self._reduce(answers, n, m)

    def _reduce(self, answers: torch.Tensor, n: int, m: int) -> torch.Tensor:
        if m == 1:
            return answers
        if self.output == "labels":
            labels = answers.view(n, m)
            valid = labels != REFUSED
            votes = torch.zeros(n, self.num_classes)
            votes.scatter_add_(1, labels.clamp(min=0), valid.float())
            return torch.where(valid.any(1), votes.argmax(1), REFUSED)
        return answers.view(n, m, -1).nanmean(1)

    def _infer(self, x: np.ndarray) -> torch.Tensor:
        x = np.ascontiguousarray(x, dtype="<f4")
        raw = x.tobytes()
        doc = {
            "inputs": [
                {
                    "name": "input",
                    "shape": list(x.shape),
                    "datatype": "FP32",
                    "parameters": {"binary_data_size": len(raw)},
                }
            ],
            "outputs": [{"name": "output", "parameters": {"binary_data": True}}],
        }
        header = json.dumps(doc).encode()
        r = self._request(
            "POST",
            f"/v2/models/{self.model}/infer",
            content=header + raw,
            headers={"content-type": "application/octet-stream", HEADER_LENGTH: str(len(header))},
        )
        self.requests += 1
        self._check_quota(r, x.shape[0])
        out = _decode(r)
        if out.shape[0] != x.shape[0]:
            raise RndError(f"the server answered {out.shape[0]} rows for {x.shape[0]} images")
        return out

    def _check_quota(self, r: httpx.Response, images: int) -> None:
        text = r.headers.get(QUOTA_HEADER)
        if text is None or not self.check_quota:
            return
        left = int(text)
        if self._server_left is not None and left != self._server_left - images:
            raise RndError(
                f"the server's remaining quota is {left}, but {self._server_left} - {images} = "
                f"{self._server_left - images} by this oracle's count: another client uses the key, "
                "or the server counts differently (pass check_quota=False to share a key)"
            )
        self._server_left = left

    def _get(self, path: str) -> dict:
        return self._request("GET", path).json()

    def _request(self, method: str, path: str, **kw: object) -> httpx.Response:
        try:
            r = self._client.request(method, path, **kw)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            raise RndError(f"cannot reach {self._client.base_url}{path}: {exc}") from None
        if r.status_code < 400:
            return r
        try:
            reason = str(r.json().get("error", r.text))
        except ValueError:
            reason = r.text[:200]
        where = f"{method} {path}: {r.status_code}"
        if r.status_code == 429:
            after = r.headers.get("retry-after")
            if "rate" in reason.lower():
                raise InputError(f"{where} rate limited ({reason}); retry after {after} s or query slower")
            raise BudgetExceededError(f"{where} the server's quota refused the query: {reason}")
        if 400 <= r.status_code < 500:
            raise InputError(f"{where} {reason}")
        raise RndError(f"{where} server error: {reason}")

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RemoteOracle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _decode(r: httpx.Response) -> torch.Tensor:
    body = r.content
    n_header = r.headers.get(HEADER_LENGTH)
    if n_header is None:
        doc = r.json()
        out = doc["outputs"][0]
        dtype = np.int64 if out["datatype"] == "INT64" else np.float32
        return torch.from_numpy(np.asarray(out["data"], dtype=dtype).reshape(out["shape"]))
    n = int(n_header)
    out = json.loads(body[:n])["outputs"][0]
    dtype = np.dtype("<i8") if out["datatype"] == "INT64" else np.dtype("<f4")
    shape = out["shape"]
    if len(body) - n != math.prod(shape) * dtype.itemsize:
        raise RndError("the server's binary answer is truncated")
    return torch.from_numpy(np.frombuffer(body, dtype=dtype, offset=n).reshape(shape).copy())
