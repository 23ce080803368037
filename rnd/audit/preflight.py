"""The preflight: what a target is, found by asking it, before the audit chooses its suite
(AutoAttack's check for randomised models, done from outside as an owner's endpoint allows).

Five probes, each a fixed number of queries on a few test images, every query counted:

1. **output**: one answer for two images: labels (a class index), top-k scores (entries left out:
   NaN, or zero in every row alike), probabilities (non-negative rows summing to 1) or logits;
2. **random**: the same two images five more times; with scores, any difference in any answer
   means fresh randomness per query. With labels, a point on the decision boundary between two
   images of different classes (12 bisection steps), asked 8 times: a deterministic model answers
   it the same every time, a random one flips;
3. **quantisation** (deterministic answers only): does a change below 1/255 ever change the answer?
   Scores: each image on the 8-bit grid and the same plus 0.3/255 on every pixel, which rounding
   (or flooring) to 8 bits maps back to the image: identical answers mean the target quantises.
   Labels: the boundary between two images bisected to 2^-24 of the path: a model that quantises
   can only change its answer where the 8-bit image changes, so a change between two points with
   the same 8-bit image (rounded, or floored with an offset up to 1e-2 of a level: `QUANTISERS`)
   shows it does not;
4. **stateful**: 30 near-duplicates of one image (noise below 1/255), one query each: a refusal (a
   NaN row, the label -1) marks a detector of similar queries, and says after how many;
5. **rate limit** (endpoints only): 20 one-image requests as fast as they go; a 429 with the `rate`
   code (or `Retry-After`) marks a rate limit.

`Fingerprint.traits()` is what the suite takes from it: random -> the adaptive forms (EOT, PSJ,
repeat-and-vote); stateful -> the counters of stateful detectors. A probe that cannot tell (every
answer refused, random answers for the quantisation probe) says None, and the audit assumes the
stronger attacker's case.

May import: rnd.oracle (answers), rnd.errors.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from rnd.errors import BudgetExceededError, InputError
from rnd.oracle import REFUSED, QueryOracle, answer_labels

#: Query counts of the probes (fixed, so two preflights of one target cost the same).
REPEATS = 5
BOUNDARY_STEPS = 12
BOUNDARY_ASKS = 8
FINE_STEPS = 24
DUPLICATES = 30
BURST = 20
#: The 8-bit quantisers the labels probe knows (on the 0..255 scale): rounding, and flooring with
#: the small offsets implementations add so that on-grid pixels keep their level (AAA: 1e-3).
QUANTISERS = (
    torch.round,
    torch.floor,
    lambda v: torch.floor(v + 1e-3),
    lambda v: torch.floor(v + 1e-2),
)
#: A rate limit met by a probe: wait its Retry-After (at most this many seconds), this many times.
MAX_WAIT = 10.0
RATE_RETRIES = 5
#: Below half an 8-bit level: rounding and flooring both map x + DELTA back to x on the grid.
DELTA = 0.3 / 255


@dataclass
class Fingerprint:
    """What the preflight found (None: it could not tell) and what it cost."""

    output: str  # probs / logits / topk / labels, from the answers
    declared: str  # what the target says it answers (an endpoint's metadata, the local oracle's output)
    randomised: bool | None
    stateful: bool | None
    first_refusal: int | None  # near-duplicates sent when the first was refused (stateful)
    quantises: bool | None
    rate_limited: bool | None  # None: not probed (a local model)
    retry_after: float | None
    queries: int
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Fingerprint:
        """From `to_dict()` output, or a report's `preflight` (its `key` and `traits` left aside)."""
        return cls(**{k: v for k, v in d.items() if k not in ("key", "traits")})

    def traits(self) -> dict[str, bool]:
        """What the suite assumes: random unless shown deterministic; stateful only if shown."""
        return {"randomised": self.randomised is not False, "stateful": bool(self.stateful)}

    def line(self) -> str:
        """One line for the terminal."""

        def yn(v: bool | None, what: str, yes: str, no: str) -> str:
            return f"{what}: cannot tell" if v is None else (yes if v else no)

        refused = "" if self.first_refusal is None else f" (refused near-duplicate {self.first_refusal})"
        parts = [
            f"answers {self.output}" + ("" if self.output == self.declared else f" (says {self.declared})"),
            yn(self.randomised, "random", "random", "deterministic"),
            yn(self.stateful, "stateful", f"stateful{refused}", "not stateful"),
            yn(self.quantises, "quantisation", "quantises inputs to 8 bits", "does not quantise"),
        ]
        if self.rate_limited is not None:
            after = "" if self.retry_after is None else f", Retry-After {self.retry_after:g} s"
            parts.append(f"rate limited{after}" if self.rate_limited else f"no 429 in {BURST} rapid requests")
        return f"preflight ({self.queries} queries): " + "; ".join(parts)


class _RateLimited(Exception):
    """A 429 with the `rate` code during the burst (the probe that looks for it)."""


class _Asker:
    """Queries through the oracle, one fresh id per probe image, counting what is sent. A rate
    limit met on the way is noted and waited out (`Retry-After`, at most `MAX_WAIT` s, then the
    request again: a refused request is not charged); in the burst it ends the burst."""

    def __init__(self, oracle: QueryOracle) -> None:
        self.oracle, self.queries, self.refused = oracle, 0, 0
        self.rate_limited, self.retry_after = False, None
        self.burst = False

    def ask(self, x: torch.Tensor) -> torch.Tensor:
        for _ in range(RATE_RETRIES):
            try:
                answers = self.oracle.query(x, self.oracle.new_ids(len(x)), eot=1)
                break
            except InputError:
                refusal = getattr(self.oracle, "last_refusal", None)
                if refusal is None or getattr(refusal, "kind", None) != "rate":
                    raise
                self.rate_limited, self.retry_after = True, refusal.retry_after
                if self.burst:
                    raise _RateLimited from None
                wait = 1.0 if refusal.retry_after is None else float(refusal.retry_after)
                if wait > MAX_WAIT:
                    raise InputError(
                        f"the endpoint's rate limit asks to wait {wait:g} s between requests; "
                        "the preflight does not wait that long (use a key with a higher rate)"
                    ) from None
                time.sleep(wait)
        else:
            raise InputError(f"the endpoint kept refusing for its rate limit after {RATE_RETRIES} waits")
        self.queries += len(x)
        self.refused += int((refused(answers)).sum())
        return answers


def refused(answers: torch.Tensor) -> torch.Tensor:
    """Per row: was it refused (the label -1, or all-NaN scores)?"""
    return answers == REFUSED if answers.dim() == 1 else answers.isnan().all(1)


def output_kind(answers: torch.Tensor) -> str:
    """labels / topk / probs / logits, from answered rows (`declared` is kept when all refused)."""
    if answers.dim() == 1:
        return "labels"
    rows = answers[~refused(answers)]
    if not len(rows):
        return "unknown"
    if bool(rows.isnan().any()):
        return "topk"
    shown = (rows != 0).sum(1)  # a top-k answer zeroes the classes it leaves out, the same k per row
    if bool((shown == shown[0]).all()) and int(shown[0]) <= rows.shape[1] // 2:
        return "topk"
    sums = rows.sum(1)
    if bool((rows >= 0).all()) and bool(((sums - 1).abs() < 1e-3).all()):
        return "probs"
    return "logits"


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Two answers equal, row by row, refused rows skipped (NaN entries of top-k equal each other)."""
    keep = ~(refused(a) | refused(b))
    if not bool(keep.any()):
        return True
    return torch.equal(a[keep].nan_to_num(-7.0), b[keep].nan_to_num(-7.0))


def _bisect(
    asker: _Asker, a: torch.Tensor, b: torch.Tensor, la: int, steps: int
) -> tuple[float, float] | None:
    """[t_lo, t_hi] on the path (1 - t) a + t b where the answer leaves `la` (the label at a), after
    `steps` one-image queries; None when a refusal cuts it short."""
    lo, hi = 0.0, 1.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        label = int(answer_labels(asker.ask(((1 - mid) * a + mid * b).unsqueeze(0)))[0])
        if label == REFUSED:
            return None
        lo, hi = (mid, hi) if label == la else (lo, mid)
    return lo, hi


def preflight(oracle: QueryOracle, images: torch.Tensor, *, remote: bool, seed: int = 0) -> Fingerprint:
    """Fingerprint the target behind `oracle` with `images` (at least two test images of different
    classes among them, in [0, 1]); see the module docstring for the probes. `remote`: an endpoint
    (the rate-limit probe runs; a local model has none)."""
    if len(images) < 2:
        raise InputError("the preflight needs at least two images")
    if not images.is_floating_point() or float(images.min()) < 0 or float(images.max()) > 1:
        raise InputError("the preflight takes pixels in [0, 1] (floating point), as the oracle does")
    g = torch.Generator().manual_seed(seed)
    asker = _Asker(oracle)
    declared = str(oracle.output)
    notes: list[str] = []
    x = (images[:2] * 255).round() / 255  # on the 8-bit grid
    first = asker.ask(x)
    kind = output_kind(first)
    output = declared if kind == "unknown" else kind

    # 2. random?
    randomised: bool | None = None
    if first.dim() == 2:
        repeats = [asker.ask(x) for _ in range(REPEATS)]
        answered = any(bool((~refused(r)).any()) for r in repeats) and bool((~refused(first)).any())
        randomised = (not all(_same(first, r) for r in repeats)) if answered else None
    pair = _pair(images, answer_labels(asker.ask((images * 255).round() / 255)))
    if first.dim() == 1 or randomised is None:
        if pair is None:
            notes.append("no two probe images answered with different classes: randomness not probed")
        else:
            a, b, la = pair
            bracket = _bisect(asker, a, b, la, BOUNDARY_STEPS)
            if bracket is not None:
                mid = (bracket[0] + bracket[1]) / 2
                point = ((1 - mid) * a + mid * b).unsqueeze(0).expand(BOUNDARY_ASKS, *a.shape)
                said = answer_labels(asker.ask(point.contiguous()))
                said = said[said != REFUSED]
                if len(said) > 1:
                    randomised = bool((said != said[0]).any())

    # 3. quantises? (deterministic answers only)
    quantises: bool | None = None
    if randomised is False:
        if first.dim() == 2:
            nudged = asker.ask((x + DELTA).clamp(max=1.0))
            if bool((~(refused(nudged) | refused(first))).any()):
                quantises = _same(first, nudged)
        elif pair is not None:
            a, b, la = pair
            bracket = _bisect(asker, a, b, la, FINE_STEPS)
            if bracket is not None:
                lo, hi = (((1 - t) * a + t * b).mul(255) for t in bracket)
                # the answer changed inside the bracket; with one 8-bit image on both ends, by every
                # common quantiser, the target saw more than 8 bits
                quantises = not all(torch.equal(q(lo), q(hi)) for q in QUANTISERS)
    elif randomised:
        notes.append("quantisation not probed: random answers hide a change below 1/255")

    # 4. stateful?
    stateful, first_refusal = None, None
    base = x[:1]
    for i in range(DUPLICATES):
        near = (base + (torch.rand(base.shape, generator=g) - 0.5) * (1.0 / 255)).clamp(0, 1)
        if bool(refused(asker.ask(near))[0]):
            stateful, first_refusal = True, i + 1
            break
    else:
        stateful = asker.refused > 0
        if asker.refused:
            notes.append(f"{asker.refused} earlier probe queries were refused")

    # 5. rate limit?
    rate_limited, retry_after = None, None
    if remote:
        asker.burst = True
        try:
            for _ in range(BURST):
                asker.ask(torch.rand((1, *images.shape[1:]), generator=g))
        except _RateLimited:
            pass
        except BudgetExceededError as exc:
            raise InputError(f"the preflight used up the key's quota: {exc}") from None
        rate_limited, retry_after = asker.rate_limited, asker.retry_after
        if rate_limited:
            notes.append(f"rate limit: 429 with Retry-After {retry_after}")
    return Fingerprint(
        output, declared, randomised, stateful, first_refusal, quantises, rate_limited, retry_after,
        asker.queries, notes,
    )  # fmt: skip


def _pair(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int] | None:
    """Two probe images answered with different (unrefused) classes, on the 8-bit grid, and the
    first's class; None when there are none."""
    ok = [i for i in range(len(labels)) if int(labels[i]) != REFUSED]
    for i in ok:
        for j in ok:
            if int(labels[j]) != int(labels[i]):
                grid = (images * 255).round() / 255
                return grid[i], grid[j], int(labels[i])
    return None
