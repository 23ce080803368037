"""The oracle protocol over HTTP: query a model served with `rnd serve` (or any Open Inference
Protocol server answering probabilities or labels) exactly as attacks query the local `Oracle`.

Counts are kept client side per image id, with the local oracle's rules: each row costs `eot`
queries, a query that would take an id past the budget raises `BudgetExceededError` and sends
nothing, and EOT answers are the mean (scores) or the vote (labels) of M answers. The server's own
count travels back in `X-Quota-Remaining`; the oracle checks it against its own (a key used by one
oracle only: another client on the same key would show as a mismatch).

The wire format is `rnd.oip`'s. A refusal is read by its code (`rnd.oip.Code`), or, from a server
that sends none, by its status and `Retry-After` (`rnd.oip.Refusal.kind`), and raised as
`refusal_error` says.
"""

from __future__ import annotations

import math

import httpx
import numpy as np
import torch

from rnd._checks import check_images, check_int
from rnd.errors import BudgetExceededError, InputError, RndError
from rnd.oip import (
    HEADER_LENGTH,
    QUOTA_HEADER,
    Code,
    Refusal,
    bearer,
    build_request,
    clean_key,
    infer_path,
    model_path,
    parse_response,
)
from rnd.oracle.ledger import Ledger
from rnd.oracle.protocol import OUTPUTS, REFUSED, Output


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
    under the server's body cap when the metadata gives it. The last refusal the server sent is kept,
    decoded, in `last_refusal` (its code, status, message and `Retry-After`). Refused rows (a
    stateful defense behind the server: NaN scores or the label `REFUSED`) are recorded in
    `refusals` and `first_refusal` as the local oracle does.
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
        self.last_refusal: Refusal | None = None
        headers = bearer(clean_key(key)) if key is not None else {}
        self._client = httpx.Client(base_url=url.rstrip("/"), headers=headers, timeout=timeout)
        first = self._request("GET", model_path(model))
        meta = self._json(first, model_path(model))
        left = first.headers.get(QUOTA_HEADER)
        #: Images the key had left when the oracle was made (the server's `X-Quota-Remaining`; None
        #: from a server without keys or that does not say).
        self.server_quota: int | None = int(left) if left is not None and left.strip().isdigit() else None
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
        body, headers = build_request(x, binary=True)
        r = self._request("POST", infer_path(self.model), content=body, headers=headers)
        self.requests += 1
        self._check_quota(r, x.shape[0])
        out = torch.from_numpy(parse_response(r.content, r.headers.get(HEADER_LENGTH)))
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

    def _json(self, r: httpx.Response, path: str) -> dict:
        """The JSON object of an answer; InputError for one that is not (not an OIP server)."""
        try:
            doc = r.json()
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise InputError(
                f"{self._client.base_url}{path} answered {r.status_code} with a body that is not a JSON "
                "object; is the URL an Open Inference Protocol endpoint?"
            )
        return doc

    def _get(self, path: str) -> dict:
        return self._json(self._request("GET", path), path)

    def _request(self, method: str, path: str, **kw: object) -> httpx.Response:
        try:
            r = self._client.request(method, path, **kw)  # type: ignore[arg-type]
        except httpx.HTTPError as exc:
            raise RndError(f"cannot reach {self._client.base_url}{path}: {exc}") from None
        if r.status_code < 400:
            return r
        self.last_refusal = Refusal.decode(r.status_code, r.content, r.headers)
        raise refusal_error(self.last_refusal, f"{method} {path}: {r.status_code}")

    def close(self) -> None:
        self._client.close()

    def __enter__(self) -> RemoteOracle:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def refusal_error(refusal: Refusal, where: str) -> RndError:
    """The exception for a refusal, by `refusal.kind` (its code, or its status and `Retry-After` from
    a server that sends no code): quota -> `BudgetExceededError` (waiting will not lift it); rate ->
    `InputError` naming the wait; any other 4xx -> `InputError`; the rest -> `RndError`."""
    kind, reason = refusal.kind, refusal.message
    read = "" if refusal.code is not None else " (the server sent no refusal code; read from Retry-After)"
    if kind is Code.RATE:
        wait = "later" if refusal.retry_after is None else f"after {refusal.retry_after:g} s"
        return InputError(f"{where} rate limited ({reason}); retry {wait} or query slower{read}")
    if kind is Code.QUOTA:
        return BudgetExceededError(f"{where} the server's quota refused the query: {reason}{read}")
    if 400 <= refusal.status < 500:
        return InputError(f"{where} {reason}")
    return RndError(f"{where} server error: {reason}")
