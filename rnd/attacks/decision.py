"""DecisionAttack: the base of the label-only (decision-based) attacks.

The oracle answers labels only. An attack first queries the clean image, then finds an adversarial
starting point (a search bounded by the budget), then shrinks that point's distance to the clean
image. Its `x` is always the closest point it has *observed* to be adversarial (or the clean image
while it has none); an image succeeds when that distance is at most eps. The result carries the
distance per image and its trace over queries (median distance against queries is the usual plot
for label-only attacks, e.g. Chen et al. 2020, fig. 3).

Repeat-and-vote (the simple adaptive form against randomised defenses): with `eot = M` every
decision asks for M labels of the same point (M queries) and calls it adversarial when more than
half of them are not the true label (are the target, when targeted).

Batching: every image advances in lock-step. Steps whose cost varies per image (binary searches,
step-size searches, growing probe counts) ask `affordable` how many decisions each image can still
pay for and never go past it; an image that cannot afford its next decision stops with what it has.
Random draws come from one generator per image, seeded from the attack's seed and the image's own
pixels and label, so an image's attack does not depend on what else is in the batch. The generators
are CPU ones on every device (the same streams everywhere): `row_randn` / `row_rand` draw on the
CPU and make one non-blocking host-to-device copy; choosing the rows' generators reads the row
indices back (`rows.tolist()`), a Python-level decision.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import torch

from rnd._checks import check_bool, check_images
from rnd.attacks.base import AttackResult, AttackState, Norm, QueryAttack, row_draws
from rnd.errors import InputError
from rnd.oracle import QueryOracle

#: Slack on `distance <= eps` for float rounding of projected points (pixels are float32).
EPS_TOL = 1e-6
#: Most images an attack queries at once when it probes many per image (probes x M with EOT):
#: 65,536 images of 28 x 28 are 205 MB a tensor. A full-size audit's GeoDA draws ~2,800 probes per
#: image in its last iterations; 500 images at once held several 4 GB tensors and were OOM-killed.
#: Counting the M repeats too, a HopSkipJump M = 5 cell of 500 images peaks at 2.6 GB of RSS
#: (bench/memory_peak.py; 3.9 GB when the chunk counted probes alone).
PROBE_CHUNK = 65_536


def query_grid(budget: int) -> list[int]:
    """Query counts at which the distance trace is recorded: the 1-2-5 series and tenths of the
    budget, up to the budget."""
    grid = {budget}
    k = 1
    while k <= budget:
        grid.update(m * k for m in (1, 2, 5) if m * k <= budget)
        k *= 10
    grid.update(max(1, budget * j // 10) for j in range(1, 10))
    return sorted(grid)


def probe_chunks(m: torch.Tensor, limit: int | None = None) -> list[torch.Tensor]:
    """Split consecutive rows with m[i] probes each into groups of about `limit` probes (default
    `PROBE_CHUNK`): a row goes to the group of its last probe, so a group holds fewer than
    limit + max(m) probes. Indices into m, in order."""
    limit = PROBE_CHUNK if limit is None else limit
    _, sizes = torch.unique_consecutive((m.cumsum(0) - 1) // limit, return_counts=True)
    return list(torch.arange(m.numel()).split(sizes.tolist()))


def image_seeds(seed: int, x0: torch.Tensor, y: torch.Tensor) -> list[int]:
    """One 63-bit seed per image from the attack seed and the image's bytes and label."""
    out = []
    for img, label in zip(x0.cpu(), y.tolist(), strict=True):
        h = hashlib.sha256(f"{seed}:{label}:".encode())
        h.update(img.contiguous().numpy().tobytes())
        out.append(int.from_bytes(h.digest()[:8], "big") >> 1)
    return out


@dataclass(eq=False)
class DecisionState(AttackState):
    """Per-image state of a label-only attack: the core's, plus the best adversarial distance
    (inf while none is known), its trace at the `query_grid` counts, and per-image generators."""

    dist: torch.Tensor = field(init=False)
    trace: torch.Tensor = field(init=False)
    grid: torch.Tensor = field(init=False)
    gens: list[torch.Generator] = field(init=False)

    def __post_init__(self) -> None:
        super().__post_init__()
        n = self.x0.shape[0]
        self.dist = torch.full((n,), math.inf, device=self.x0.device)


DS = TypeVar("DS", bound=DecisionState)


class DecisionAttack(QueryAttack[DS]):
    """Base of the label-only attacks. Subclasses implement `start` (find adversarial starting
    points for the rows given) and `step` (shrink the distance), deciding through `decide`.

    Args:
        stop_at_eps: stop an image once it succeeds (distance <= eps), like the score attacks stop
            at their first success. False: keep shrinking until the budget is spent (for the
            distance-against-queries curve).
        eot: M, repeat-and-vote: each decision is the majority of M labels and costs M queries.
        eps, norm, mu, targeted, seed, progress: see `QueryAttack`.

    `__call__` also takes `starts`: adversarial starting points per image (e.g. images of the
    target class for a targeted attack); rows where they are not observed adversarial fall back
    to the attack's own search.
    """

    feedback = "labels"
    state_type: ClassVar[type[AttackState]] = DecisionState

    def __init__(self, eps: float, norm: Norm = "linf", *, stop_at_eps: bool = True, **kwargs: Any) -> None:
        super().__init__(eps, norm, **kwargs)
        self.stop_at_eps = check_bool(stop_at_eps, "stop_at_eps")
        self._starts: torch.Tensor | None = None

    def __call__(  # type: ignore[override]
        self,
        oracle: QueryOracle,
        images: torch.Tensor,
        labels: torch.Tensor,
        targets: torch.Tensor | None = None,
        *,
        starts: torch.Tensor | None = None,
    ) -> AttackResult:
        if starts is not None:
            check_images(starts, tuple(images.shape[1:]), name="starts")
            if starts.shape[0] != images.shape[0]:
                raise InputError(f"got {starts.shape[0]} starts for {images.shape[0]} images")
        self._starts = None if starts is None else starts.detach().to(images.device)
        try:
            return super().__call__(oracle, images, labels, targets)
        finally:
            self._starts = None

    def check_oracle(self, oracle: QueryOracle) -> None:
        if oracle.output != "labels":
            raise InputError(
                f"{self.name} is a label-only attack: give it an oracle with output='labels' "
                f"(this one answers {oracle.output!r}, more than its threat model allows)"
            )

    @property
    def init_cost(self) -> int:
        """The clean image and one candidate start."""
        return 2 * self.eot

    def cost_text(self) -> str:
        return f"{self.name} needs {self.min_budget} queries to start (clean image and one candidate start)"

    def active(self, state: DS) -> torch.Tensor:
        if self.stop_at_eps:
            return ~(state.done | state.success)
        return ~state.done

    # -- the start -----------------------------------------------------------------------------
    def init(self, state: DS) -> None:
        assert self.oracle is not None and self.oracle.budget is not None
        state.gens = [torch.Generator().manual_seed(s) for s in image_seeds(self.seed, state.x0, state.y)]
        grid = query_grid(self.oracle.budget)
        state.grid = torch.tensor(grid, dtype=torch.int64, device=state.device)
        state.trace = torch.full((state.x0.shape[0], len(grid)), math.inf, device=state.device)
        rows = torch.arange(state.x0.shape[0], device=state.device)
        adv = self.decide(state, state.x0, rows)
        self.accept(state, rows[adv], state.x0[adv])
        todo = rows[~adv]
        if self._starts is not None and todo.numel():
            given = self.decide(state, self._starts[todo], todo)
            self.accept(state, todo[given], self._starts[todo][given])
        todo = (~state.dist.isfinite()).nonzero().flatten()
        if todo.numel():
            self.start(state, todo)
        state.done |= ~state.dist.isfinite()  # no adversarial start within the budget: failed
        state.done |= state.dist == 0  # the clean image is (observed) adversarial: nothing to shrink
        self.after_step(state)

    def start(self, state: DS, rows: torch.Tensor) -> None:
        """Find adversarial starting points for `rows` (default: `random_start`)."""
        self.random_start(state, rows)

    def random_start(self, state: DS, rows: torch.Tensor, tries: int = 100) -> torch.Tensor:
        """Uniform-noise images, one per image per round, until one is observed adversarial
        (at most `tries` rounds and what the budget allows); accepted as is. Returns the mask of
        `rows` that found one."""
        found = torch.zeros(rows.numel(), dtype=torch.bool, device=rows.device)
        for _ in range(tries):
            go = ~found & (self.affordable(state, rows) >= 1)
            if not bool(go.any()):
                break
            idx = go.nonzero().flatten()
            cand = self.row_rand(state, rows[idx], *state.x0.shape[1:])
            adv = self.decide(state, cand, rows[idx])
            self.accept(state, rows[idx][adv], cand[adv])
            found[idx[adv]] = True
        return found

    # -- decisions -----------------------------------------------------------------------------
    def affordable(self, state: DS, rows: torch.Tensor) -> torch.Tensor:
        """How many more decisions (of `eot` queries each) every row can pay for."""
        assert self.oracle is not None
        left = self.oracle.remaining(state.ids.index_select(0, rows))  # >= 0: counts stay in budget
        return left if self.eot == 1 else left // self.eot

    def votes(self, state: DS, x: torch.Tensor, rows: torch.Tensor, m: int) -> torch.Tensor:
        """Query each row of `x` m times (m queries each; rows may repeat an image); return how
        many answers were adversarial (not the true label, or the target when targeted). A refused
        query (label `REFUSED`, from a detector) is not evidence of adversariality: it counts no."""
        return self.hits(state, self.answers(state, x, rows, m), rows).sum(1)

    def answers(self, state: DS, x: torch.Tensor, rows: torch.Tensor, m: int) -> torch.Tensor:
        """The (rows, m) labels of m queries of each row of `x` (`REFUSED` where a detector refused)."""
        assert self.oracle is not None
        ids = state.ids.index_select(0, rows)  # rows may repeat (probes of one image)
        if m > 1:
            x, ids = x.repeat_interleave(m, dim=0), ids.repeat_interleave(m)
        return self.oracle.query(x.contiguous(), ids, eot=1).to(rows.device).view(-1, m)

    def hits(self, state: DS, labels: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Which of the (rows, m) `labels` are adversarial (a `REFUSED` label never is)."""
        if self.targeted:
            assert state.target is not None
            return labels == state.target.index_select(0, rows)[:, None]
        return (labels != state.y.index_select(0, rows)[:, None]) & (labels >= 0)

    def decide(self, state: DS, x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Is each row of `x` adversarial? The majority of `eot` labels (one label when eot = 1).
        Callers make sure every row can afford it (`affordable`)."""
        if not rows.numel():
            return torch.zeros(0, dtype=torch.bool, device=rows.device)
        if self.eot == 1:  # one label: adversarial or not (the same as the vote of one)
            return self.hits(state, self.answers(state, x, rows, 1), rows).squeeze(1)
        return self.votes(state, x, rows, self.eot) * 2 > self.eot

    def distance(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """||x - x0|| per row in the attack's norm."""
        d = (x - x0).flatten(1)
        return d.abs().amax(1) if self.norm == "linf" else d.norm(dim=1)

    def accept(self, state: DS, rows: torch.Tensor, x_new: torch.Tensor) -> torch.Tensor:
        """Take the observed-adversarial points `x_new` for `rows` where they are closer than the
        best so far; returns the mask of rows that improved."""
        if not rows.numel():
            return torch.zeros(0, dtype=torch.bool, device=rows.device)
        d = self.distance(x_new, state.x0.index_select(0, rows))
        better = d < state.dist.index_select(0, rows)
        keep = better.nonzero().flatten()
        if keep.numel():
            r, d = rows.index_select(0, keep), d.index_select(0, keep)
            state.x.index_copy_(0, r, x_new.index_select(0, keep))
            state.dist.index_copy_(0, r, d)
            state.success.index_copy_(0, r, d <= self.eps + EPS_TOL)
        return better

    def bisect(
        self,
        state: DS,
        rows: torch.Tensor,
        point: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
        lo: torch.Tensor,
        hi: torch.Tensor,
        tol: torch.Tensor | float,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Vectorised binary search on a scalar t per row: `point(idx, t)` gives the points of
        `rows[idx]` at t; t = hi[r] is adversarial and t = lo[r] is not. All rows halve together
        (one forward per halving) while hi - lo > tol and they can afford a decision. Returns
        (lo, hi); the caller accepts `point(.., hi)`."""
        lo, hi = lo.clone(), hi.clone()
        tol_t = torch.as_tensor(tol, dtype=hi.dtype, device=hi.device).expand_as(hi)
        while True:
            go = (hi - lo > tol_t) & (self.affordable(state, rows) >= 1)
            if not bool(go.any()):
                return lo, hi
            idx = go.nonzero().flatten()
            mid = (lo[idx] + hi[idx]) / 2
            adv = self.decide(state, point(idx, mid), rows[idx])
            hi[idx] = torch.where(adv, mid, hi[idx])
            lo[idx] = torch.where(adv, lo[idx], mid)

    def per_probe_chunk(
        self,
        one_batch: Callable[..., torch.Tensor],
        state: DS,
        rows: torch.Tensor,
        m: torch.Tensor,
        *args: Any,
    ) -> torch.Tensor:
        """`one_batch(state, rows, m, *args)` (one image-shaped result per row, from m[i] probes of
        rows[i] queried together) over `probe_chunks(m)`, `PROBE_CHUNK` queried images (probes x
        eot) at a time; `args` are per-row tensors or scalars."""
        out = torch.empty(rows.numel(), *state.x0.shape[1:])
        for part in probe_chunks(m, max(1, PROBE_CHUNK // self.eot)):
            sub = [a[part] if isinstance(a, torch.Tensor) else a for a in args]
            out[part] = one_batch(state, rows[part], m[part], *sub)
        return out

    # -- per-image randomness ------------------------------------------------------------------
    def row_randn(self, state: DS, rows: torch.Tensor, *shape: int) -> torch.Tensor:
        """Standard normal draws of `shape` for each row, each from its image's (CPU) generator."""
        return row_draws(state.gens, rows, shape, torch.randn)

    def row_rand(self, state: DS, rows: torch.Tensor, *shape: int) -> torch.Tensor:
        """Uniform [0, 1) draws of `shape` for each row, each from its image's (CPU) generator."""
        return row_draws(state.gens, rows, shape, torch.rand)

    # -- what is recorded ----------------------------------------------------------------------
    def after_step(self, state: DS) -> None:
        """The trace: distance at each grid count that the image has not yet passed."""
        assert self.oracle is not None
        counts = self.oracle.counts_of(state.ids)
        within = counts[:, None] <= state.grid[None, :]
        state.trace = torch.where(within, state.dist[:, None], state.trace)

    def result(self, state: DS) -> AttackResult:
        out = super().result(state)
        out.distance = state.dist.clone()
        out.trace_queries = state.grid.tolist()
        out.trace = state.trace.clone()
        return out
