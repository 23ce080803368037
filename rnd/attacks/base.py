"""The query-loop core of every attack: batching, active masks, budgets, projection, seeds.

Every image of a batch advances together. Each step the core hands the attack the rows that are
still active (not stopped, with budget left for one more step); the attack builds all their
queries as one batch, so the model sees few, large forwards. Queries are counted by the oracle
alone, and the result's `queries` are the oracle's counts. What feedback an attack works from is
one level up: `rnd.attacks.score.ScoreAttack` (losses from scores, stop at the first observed
success).

Devices: an attack's state lives on the device of the images it is given (put them on the model's
device, where the oracle answers, and no query makes a host round trip beyond the oracle's own
bookkeeping). Off the CPU the loop runs inside `with torch.device(images.device)`, so every tensor
an attack file builds (`torch.zeros`, `torch.arange`, ...) lands there without naming a device.
Randomness always comes from CPU `torch.Generator`s (the same seed gives the same numbers on every
device): `randn` / `rand` / `randint` draw on the CPU and make one host-to-device copy, never a
copy back. Per step the loop itself reads one number back from the device (how many images are
still active: the Python-level decision to go on); the README's "Devices" lists the others.
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Generic, Literal, TypeVar, cast

import torch
from tqdm.auto import tqdm

from rnd._checks import check_bool, check_images, check_int, check_labels, check_positive
from rnd._rng import entropy_seed
from rnd.errors import InputError
from rnd.oracle import QueryOracle
from rnd.progress import listener as progress_listener
from rnd.stats import median

Norm = Literal["linf", "l2"]


@dataclass
class AttackResult:
    """What one attack call returns; `success` is what the attacker observed through the oracle."""

    attack: str
    x_adv: torch.Tensor
    success: torch.Tensor
    queries: torch.Tensor
    loss: torch.Tensor | None = None  # score attacks: the attacker's loss at x_adv
    distance: torch.Tensor | None = None  # label-only attacks: ||x_adv - x|| in the attack's norm
    params: dict[str, Any] = field(default_factory=dict)
    #: label-only attacks: the query counts at which `trace` (N x len) holds each image's distance
    trace_queries: list[int] | None = None
    trace: torch.Tensor | None = None

    @property
    def failure_rate(self) -> float:
        """Failures / attacked images, in %."""
        return 100.0 * float((~self.success).sum()) / max(self.success.numel(), 1)

    @property
    def mean_queries(self) -> float:
        """Mean queries over successful images (NaN if none)."""
        q = self.queries[self.success].double()
        return float(q.mean()) if q.numel() else math.nan

    @property
    def median_queries(self) -> float:
        q = self.queries[self.success].double()
        return float(q.quantile(0.5)) if q.numel() else math.nan

    @property
    def median_distance(self) -> float:
        """Median over images of the final distance (label-only attacks; inf counts; NaN if none)."""
        return median(self.distance) if self.distance is not None else math.nan

    def distance_curve(self) -> list[tuple[int, float]]:
        """(queries, median distance over all images after at most that many): the usual plot of
        label-only attacks. Empty for score attacks."""
        if self.trace is None or self.trace_queries is None:
            return []
        return [(q, median(self.trace[:, j])) for j, q in enumerate(self.trace_queries)]

    def summary(self) -> dict[str, Any]:
        out = {
            "attack": self.attack,
            "images": int(self.success.numel()),
            "failure_rate": self.failure_rate,
            "mean_queries": self.mean_queries,
            "median_queries": self.median_queries,
        }
        if self.distance is not None:
            out["median_distance"] = self.median_distance
        return out


@dataclass(eq=False)
class AttackState:
    """Per-image tensors of one attack call (length N). An attack with state of its own declares a
    dataclass subclass (its fields `field(init=False)`, set in its `init`) as `state_type`."""

    x0: torch.Tensor
    y: torch.Tensor
    target: torch.Tensor | None
    ids: torch.Tensor
    x: torch.Tensor = field(init=False)  # the attacker's current (best) point
    success: torch.Tensor = field(init=False)
    done: torch.Tensor = field(init=False)  # stopped by the attack itself
    iteration: int = 0

    def __post_init__(self) -> None:
        n = self.x0.shape[0]
        self.x = self.x0.clone()
        self.success = torch.zeros(n, dtype=torch.bool, device=self.x0.device)
        self.done = torch.zeros(n, dtype=torch.bool, device=self.x0.device)

    @property
    def device(self) -> torch.device:
        """Where this call's state lives: the device of the images attacked."""
        return self.x0.device


S = TypeVar("S", bound=AttackState)


class QueryAttack(ABC, Generic[S]):
    """The core of all query attacks. Subclasses implement `init` and `step` on the active rows
    (and `active`, which rows go on).

    Args:
        eps: radius of the threat model (l_inf or l_2 ball around the clean image, in pixels).
        norm: "linf" or "l2" (each attack lists the norms it defines).
        mu: the attacker's probe size (finite-difference step, search step, square size...): the
            seed's `mu`, the one name a sweep varies across attacks. Default: the attack's paper.
        targeted: if True, `__call__` needs `targets` and success means predicting the target.
        eot: M answers averaged per query (Expectation over Transformation), costing M queries.
        mu_nu_ratio: adaptive attacker who knows the defense's nu: uses max(mu, ratio * nu), nu
            from `assume`.
        assume: what the attacker is told about the defense: its public parameters (for RND
            `{"nu": 0.02, ...}`, what `Defense.public_params()` gives). Passed explicitly, never
            read from the model behind the oracle; empty: the attacker assumes nothing.
        seed: seed of the attack's own generator (OS entropy when None).
        progress: show a progress bar.
    """

    name: ClassVar[str] = "attack"
    norms: ClassVar[tuple[str, ...]] = ("linf", "l2")
    feedback: ClassVar[Literal["scores", "labels"]] = "scores"
    #: The dataclass of one call's per-image state (an `AttackState` subclass for attacks with more).
    state_type: ClassVar[type[AttackState]] = AttackState
    default_mu: ClassVar[dict[str, float]] = {"linf": 0.01, "l2": 0.01}
    #: Run the call under `torch.inference_mode()` (no autograd bookkeeping on the attack's many
    #: small tensor operations: about 0.1 ms less per step of 100 images on one CPU thread,
    #: bench/step_floor.py; the same numbers). Attacks that take gradients of their own models
    #: (`rnd.attacks.surrogate.SurrogateAttack`) set it False. Results leave as normal tensors.
    inference: ClassVar[bool] = True

    def __init__(
        self,
        eps: float,
        norm: Norm = "linf",
        *,
        mu: float | None = None,
        targeted: bool = False,
        eot: int = 1,
        mu_nu_ratio: float | None = None,
        assume: Mapping[str, Any] | None = None,
        seed: int | None = None,
        progress: bool = False,
    ) -> None:
        self.eps = check_positive(eps, "eps")
        if norm not in self.norms:
            raise InputError(
                f"{self.name} does not support norm {norm!r}; it supports: {', '.join(self.norms)}"
            )
        self.norm: Norm = norm
        self.mu = check_positive(self.default_mu[norm] if mu is None else mu, "mu")
        self.targeted = check_bool(targeted, "targeted")
        self.eot = check_int(eot, "eot")
        self.mu_nu_ratio = None if mu_nu_ratio is None else check_positive(mu_nu_ratio, "mu_nu_ratio")
        if assume is not None and not isinstance(assume, Mapping):
            raise InputError(f"assume must be a mapping of the defense's public parameters, got {assume!r}")
        self.assume: dict[str, Any] = dict(assume or {})
        self.seed = entropy_seed() if seed is None else check_int(seed, "seed", minimum=None)
        self.progress = check_bool(progress, "progress")
        self.generator = torch.Generator().manual_seed(self.seed)
        self.oracle: QueryOracle | None = None
        self._device = torch.device("cpu")  # the current call's images' device

    # -- configuration -------------------------------------------------------------------------
    def params(self) -> dict[str, Any]:
        """Every hyper-parameter of this attack (recorded with each result)."""
        skip = {"generator", "oracle", "progress"}
        out = {k: v for k, v in vars(self).items() if k not in skip and not k.startswith("_")}
        return {"attack": self.name, **out}

    @property
    def assumed_nu(self) -> float:
        """The input-noise level the attacker was told (`assume["nu"]`, 0 when not told)."""
        nu = self.assume.get("nu", 0.0)
        return float(nu) if isinstance(nu, int | float) and not isinstance(nu, bool) else 0.0

    def effective_mu(self, nu: float) -> float:
        """The probe size used against a defense of level `nu` (adaptive attackers scale up)."""
        if self.mu_nu_ratio is None:
            return self.mu
        return max(self.mu, self.mu_nu_ratio * nu)

    @property
    def step_cost(self) -> int:
        """Queries one step spends per image at most (including EOT); override per attack."""
        return self.eot

    @property
    def init_cost(self) -> int:
        """Queries `init` spends per image at most: the clean image (override when it does more)."""
        return self.eot

    @property
    def min_budget(self) -> int:
        """The smallest per-image budget this attack can run under (its start, or one step)."""
        return max(self.init_cost, self.step_cost)

    def cost_text(self) -> str:
        """What `min_budget` pays for, for error messages."""
        if self.step_cost >= self.init_cost:
            return f"{self.name} needs {self.step_cost} queries per step"
        return f"{self.name} needs {self.init_cost} queries to start (clean image and first point)"

    # -- the loop ------------------------------------------------------------------------------
    def __call__(
        self,
        oracle: QueryOracle,
        images: torch.Tensor,
        labels: torch.Tensor,
        targets: torch.Tensor | None = None,
    ) -> AttackResult:
        """Attack every image of the batch; returns x_adv, observed success and queries per image."""
        self.check_oracle(oracle)
        if oracle.budget is None:
            raise InputError("the oracle needs a query budget (Oracle(..., budget=N))")
        check_images(images, oracle.input_shape)
        n = images.shape[0]
        labels = check_labels(labels, n, oracle.num_classes)
        if self.targeted:
            if targets is None:
                raise InputError("a targeted attack needs targets (one label per image)")
            targets = check_labels(targets, n, oracle.num_classes, name="targets")
            if bool((targets == labels).any()):
                raise InputError("targets must differ from the true labels")
        elif targets is not None:
            raise InputError("targets given to an untargeted attack; pass targeted=True")
        self.oracle = oracle
        self.cur_mu = self.effective_mu(self.assumed_nu)
        self._device = device = images.device
        targets = None if targets is None else targets.to(device)
        # progress is counted in queries against the call's whole budget (n x budget), so the bar's
        # time left holds for a defended batch whose images all run to the end of their budget
        bar = tqdm(
            total=n * oracle.budget,
            desc=self.name,
            disable=not self.progress,
            unit="q",
            unit_scale=True,
            leave=False,
        )
        listener = progress_listener()
        spent = 0
        mode = torch.inference_mode() if self.inference else contextlib.nullcontext()
        try:
            with on_device(device), mode:
                host_ids = oracle.new_ids(n)  # the ledger's counts are read with these: no device sync
                state = cast(
                    S,
                    self.state_type(images.detach().clone(), labels.to(device), targets, host_ids.to(device)),
                )
                if self.min_budget > oracle.budget:
                    raise InputError(f"{self.cost_text()}, budget is {oracle.budget}; raise the budget")
                self.init(state)
                finished = 0
                while True:
                    active = self.active(state) & (oracle.remaining(state.ids) >= self.step_cost)
                    rows = active.nonzero().flatten()  # the loop's one read-back per step
                    left = rows.numel()
                    if listener is not None or self.progress:
                        now = int(oracle.counts_of(host_ids).sum())
                        if listener is not None and now > spent:
                            listener(now - spent)
                        bar.update(now - spent)
                        spent = now
                    newly = n - left - finished
                    if newly:
                        finished += newly
                        if self.progress:
                            bar.set_postfix(
                                done=f"{finished}/{n}", success=f"{float(state.success.float().mean()):.2f}"
                            )
                    if not left:
                        break
                    self.step(state, rows)
                    state.iteration += 1
                    self.after_step(state)
                result = self.result(state)
            return outside_inference(result)
        finally:
            bar.close()
            self.oracle = None
            self._device = torch.device("cpu")

    def result(self, state: S) -> AttackResult:
        """The call's `AttackResult` (families add what they measure: loss, distance)."""
        assert self.oracle is not None
        return AttackResult(
            attack=self.name,
            x_adv=state.x,
            success=state.success.clone(),
            queries=self.oracle.counts_of(state.ids),
            params={**self.params(), "mu_used": self.cur_mu},
        )

    def check_oracle(self, oracle: QueryOracle) -> None:
        """Refuse an oracle whose answers this attack cannot work from (families override)."""

    def active(self, state: S) -> torch.Tensor:
        """Which images go on (before the budget check): those the attack has not stopped."""
        return ~state.done

    def after_step(self, state: S) -> None:
        """Called after every step (families record what they track over queries)."""

    @abstractmethod
    def init(self, state: S) -> None:
        """Set up per-image state (usually: query the starting point)."""

    @abstractmethod
    def step(self, state: S, rows: torch.Tensor) -> None:
        """Advance the active `rows` by one step, updating state.x / loss / success."""

    # -- helpers for subclasses ----------------------------------------------------------------
    def project(self, x: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Euclidean projection onto {z in [0, 1]^d : ||z - x0|| <= eps} in the attack's norm.

        l_inf: clip to the eps-box, then to [0, 1] (the two boxes intersect coordinate-wise).
        l_2: the KKT point is z = clip(x0 + t (x - x0)) with the largest t in (0, 1] whose norm is
        at most eps: clip(x) if that is inside the ball, else `box_fill` to norm eps. (Scaling to
        the ball and then clipping, the common shortcut, loses the norm of every clipped pixel.)
        """
        if self.norm == "linf":
            return (x0 + (x - x0).clamp(-self.eps, self.eps)).clamp(0.0, 1.0)
        z = x.clamp(0.0, 1.0)
        outside = (z - x0).flatten(1).norm(dim=1) > self.eps
        if bool(outside.any()):
            idx = outside.nonzero().flatten()
            z[idx] = (x0[idx] + box_fill(x0[idx], x[idx] - x0[idx], self.eps)).clamp(0.0, 1.0)
        return z

    # The attack's generator is on the CPU: draws are made there (the same stream on every device)
    # and copied to the call's device once (host to device, never back).
    def randn(self, *shape: int) -> torch.Tensor:
        return to_device(torch.randn(*shape, generator=self.generator, device="cpu"), self._device)

    def rand(self, *shape: int) -> torch.Tensor:
        return to_device(torch.rand(*shape, generator=self.generator, device="cpu"), self._device)

    def randint(self, high: int, shape: tuple[int, ...] | torch.Size, low: int = 0) -> torch.Tensor:
        draw = torch.randint(low, high, tuple(shape), generator=self.generator, device="cpu")
        return to_device(draw, self._device)


def outside_inference(result: AttackResult) -> AttackResult:
    """`result` with every tensor made under `torch.inference_mode()` copied into a normal one, so
    that a caller may use it with autograd (e.g. train on x_adv) or change it in place."""
    for f in fields(result):
        v = getattr(result, f.name)
        if isinstance(v, torch.Tensor) and v.is_inference():
            setattr(result, f.name, v.clone())
    return result


def on_device(device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """`with torch.device(device)` off the CPU (tensors built without a device land there); on the
    CPU nothing (the default already, and no per-call overhead of a torch function mode)."""
    return contextlib.nullcontext() if device.type == "cpu" else torch.device(device)


def to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """`x` (drawn on the CPU) on `device`: the same tensor on the CPU, else one non-blocking copy."""
    return x if device.type == "cpu" else x.to(device, non_blocking=True)


def row_draws(
    gens: Sequence[torch.Generator], rows: torch.Tensor, shape: tuple[int, ...], draw: Any = torch.rand
) -> torch.Tensor:
    """One draw of `shape` per row, each from its image's (CPU) generator (so a result does not
    depend on how images are batched), stacked and copied to the rows' device once."""
    out = torch.empty(rows.numel(), *shape)
    for i, r in enumerate(rows.tolist()):  # into place: no stacked copy of every draw
        draw(*shape, generator=gens[r], out=out[i])
    return to_device(out, rows.device)


def take(t: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """`t[rows]` for the loop's active rows (sorted, distinct): `t` itself when they are all of its
    rows, without a copy (so the result is for reading only), else an `index_select` (on the CPU a
    few times faster than advanced indexing for the small gathers of one step)."""
    return t if rows.numel() == t.shape[0] else t.index_select(0, rows)


def put(t: torch.Tensor, rows: torch.Tensor, values: torch.Tensor) -> None:
    """`t[rows] = values` in place for sorted, distinct rows (`index_copy_`; a plain copy when they
    are all of its rows)."""
    if rows.numel() == t.shape[0]:
        t.copy_(values)
    else:
        t.index_copy_(0, rows, values)


def flip_block(
    signs: torch.Tensor, level: torch.Tensor, block: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The hierarchical block flip of SignHunter and RayS: at `level` k the (n, d) sign vectors are
    cut into 2^k contiguous blocks of ceil(d / 2^k) entries; returns (the signs with block `block`
    flipped, whether that block is the level's last, the block length)."""
    d = signs.shape[1]
    length = torch.ceil(d / 2.0**level).long()
    start = block * length
    stop = torch.clamp(start + length, max=d)
    pos = torch.arange(d, device=signs.device).view(1, d)
    flip = (pos >= start[:, None]) & (pos < stop[:, None])
    last = (block + 1 == 2**level) | (stop == d)
    return torch.where(flip, -signs, signs), last, length


def unit(v: torch.Tensor, norm: Norm = "l2", *, in_place: bool = False) -> torch.Tensor:
    """Each row of `v` scaled to unit norm (l_2 or l_inf; a zero row stays zero); `in_place`
    divides `v` itself (the same values, no new tensor of v's size)."""
    f = v.flatten(1)
    n = f.abs().amax(1) if norm == "linf" else f.norm(dim=1)
    n = n.clamp_min(1e-12).view(-1, *([1] * (v.dim() - 1)))
    return v.div_(n) if in_place else v / n


def box_fill(
    x0: torch.Tensor, delta: torch.Tensor, norm: float | torch.Tensor, iterations: int = 12
) -> torch.Tensor:
    """Rescale each row of `delta` to l_2 norm `norm` (a number, or an (N, 1) tensor of one per row)
    inside the [0, 1] box around `x0`.

    Returns ``sign(delta) * min(k |delta|, room)`` with room the distance from x0 to the box face in
    the direction of delta, and the scale k chosen per row so that the l_2 norm is `norm` (or the
    largest reachable, all pixels at the box). The fixed point::

        k <- sqrt((norm^2 - sum_{clipped} room^2) / sum_{free} delta^2)

    starts at norm / ||delta|| and rises monotonically; it is exact once the clipped set settles.
    Plain rescale-then-clip loses the norm of every clipped pixel (Fashion-MNIST backgrounds are 0).
    """
    shape = x0.shape
    x0f, d = x0.flatten(1), delta.flatten(1)
    a = d.abs()
    room = torch.where(d > 0, 1.0 - x0f, x0f)
    asq, rsq = a * a, room * room
    k = norm / asq.sum(1, keepdim=True).sqrt().clamp_min(1e-12)
    clipped = torch.zeros_like(a, dtype=torch.bool)
    for _ in range(iterations):
        now = k * a >= room
        if torch.equal(now, clipped):
            break
        clipped = now
        rest = (norm * norm - (rsq * clipped).sum(1, keepdim=True)).clamp_min(0.0)
        free = (asq * ~clipped).sum(1, keepdim=True)
        k = torch.where(free > 0, (rest / free.clamp_min(1e-30)).sqrt(), k)
    return (d.sign() * torch.minimum(k * a, room)).view(shape)
