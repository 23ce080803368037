"""Blinding: make any attack evade a similarity detector (Blacklight) by fresh noise on each query.

A similarity detector such as Blacklight (`rnd.defenses.stateful`) fingerprints a query by hashes
of windows of its quantised pixels, and refuses a query that shares many of them with an earlier
one. `Blinded(attack)` runs `attack` unchanged, except that every query it sends gets, just
before it reaches the oracle, a fresh random perturbation per row ("blinding"), so that its
quantised windows differ from those of every earlier query. It is not what Feng et al., "Stateful
Defenses for Machine Learning Models Are Not Yet Secure Against Black-box Attacks" (CCS 2023, OARS)
do: OARS uses the refusals as a signal, tuning its own step parameters until proposals are rarely
refused and then redrawing each refused proposal (DESIGN section 8); that counter is
`rnd.attacks.square_oars` and `rnd.attacks.hsja_oars` ("square-oars", "hsja-oars"). Blinding is
the simpler attacker-side evasion.

Why small noise is enough. Blacklight maps a pixel x to v = (255 x + s) mod 255 and keeps the
bin round(v / step). The secret salt s makes v uniform on [0, 255), independent of x. The bins
are L = round(255 / step) + 1 = 6 levels at step 50, with L boundaries on the circle (25, 75, ...,
225, and the wrap at 255 = 0 between bins 250 and 0), so their mean width is 255 / L = 42.5 (step
when step divides 255). Moving x by +a moves v by 255 a, and the bin changes exactly when a
boundary lies between v and v + 255 a: probability 255 a L / 255 = L a (about 255 a / step), the
same for -a. So a sign blind (+-a) flips a pixel's bin with p = L a = 0.12 at a = 0.02; uniform
noise U[-a, a] with p = L a / 2 (the mean shift is a / 2). 2 L a (about 2 * 255 a / step) is the
chance that some draw can flip the pixel at all: the salt is fixed, so whether +a (or -a) flips a
given pixel is decided by the salt, and a blind's randomness is only its direction. Such a "live"
pixel differs between two independent sign blinds with probability 1/2, so two blinds differ at a
pixel with probability 2 L a / 2 = p as well. A window of w pixels hashes the same only if none of
its pixels differs: P(window unchanged) = (1 - p)^w, 0.88^20 = 0.08 at the defaults, both against
the unblinded point and between two blinded copies of it. The kept hashes are the largest digests
of all windows, so the share of kept hashes two queries have in common is about the share of
windows they have in common: about 4 of 50 here, far below Blacklight's threshold of 25.
Pixels at a face of the box (see below) can only move inward, so p halves there (L a / 2 = 0.06,
(1 - p)^20 = 0.29: about 15 kept hashes in common). An l_inf attack's queries have most pixels
at a face (Square's vertices, Fashion-MNIST's black backgrounds at 0): against them a = 0.02
still gets a share of queries refused, and a = 0.05 (p = 0.15 at faces, (1 - p)^20 = 0.04) none,
at the price of more noise in the attacker's own observations. With Square (l_inf eps 0.1) on the
default small CNN: plain Square is refused by Blacklight within its first few queries and fails on
every image; blinded with a = 0.02, part of its queries are still refused and it fails far more
often than undefended; with a = 0.05 none is refused, and it fails more often still. The blind is
the attacker's own random noise defense: it hurts the attacks RND hurts (SimBA and HopSkipJump
fail almost always when blinded at a = 0.02).

The ball. Blinding never takes a pixel outside [0, 1], and never further outside the attack's eps
ball around the original image than the attack's own query was: l_inf, each pixel stays within
[x0 - eps, x0 + eps] when the query's pixel was: blinding is clipped to that box (a pixel at a
face of the box, as Square's are, moves inward with probability 1/2 and stays otherwise, so its
flip probability halves; reversing the blocked sign instead would move it inward every time, the
same on every query, and so would blind nothing); l_2, a query inside the ball is projected back
onto it after blinding. Label-only attacks query far outside the ball by design (their eps only
judges success): their blinded queries are only clipped to [0, 1].

The cost: the attacker observes the blinded points, not its own. A success it observes is at a
blinded point while its `x_adv` is its own point (re-check `x_adv` on the model), and at l_2 the
blind's norm a sqrt(d) is a real share of the budget.

Re-querying a refused point (`retries`): a refused row is sent again with a fresh blind, up to
`retries` times, while its image has budget left (each try costs a query, counted by the real
oracle). The attack did not plan for these queries: an attack that spends its remaining budget
in several queries of one step can then run out of budget before the step ends, so keep
`retries=0` (the default) unless the attack queries once per step. (Interleaving images, the
other spreading trick, does nothing against Blacklight: it compares each query with the whole
history, not per image.)

Example:
    >>> attack = Blinded(make_attack("square", eps=0.1), amplitude=0.02)
    >>> result = attack(Oracle(Blacklight(model), budget=2000), images, labels)
"""

from __future__ import annotations

from typing import Any, Literal

import torch

from rnd._checks import check_int, check_positive
from rnd._rng import entropy_seed
from rnd.attacks.base import AttackResult, QueryAttack
from rnd.errors import InputError, unknown_name
from rnd.oracle import REFUSED, QueryOracle

Noise = Literal["sign", "uniform"]
NOISES: tuple[str, ...] = ("sign", "uniform")


class BlindingOracle:
    """A `QueryOracle` that blinds every query and forwards it to `oracle`, which counts it (with
    EOT, M queries per row, each blinded afresh).

    `origins(ids, images)` tells it the clean image of each id (for the eps ball); ids it was not
    told of are blinded within [0, 1] only. Every count, budget and refusal record is the real
    oracle's (`counts_of`, `remaining`, and any other attribute are forwarded).
    """

    def __init__(self, oracle: QueryOracle, blinded: Blinded) -> None:
        self.oracle = oracle
        self.blinded = blinded
        self.output = oracle.output
        self.budget = oracle.budget
        self.num_classes = oracle.num_classes
        self.input_shape = oracle.input_shape
        # host-side state: the blind's generator is a CPU one (queries make one round trip here)
        self._ids = torch.zeros(0, dtype=torch.int64, device="cpu")
        self._x0 = torch.zeros(0, *oracle.input_shape, device="cpu")
        #: queries the wrapper added by re-querying refused rows
        self.retried = 0

    def __getattr__(self, name: str) -> Any:  # refusals, first_refusal, counts, ...
        if name == "oracle":
            raise AttributeError(name)
        return getattr(self.oracle, name)

    def origins(self, ids: torch.Tensor, images: torch.Tensor) -> None:
        order = torch.cat([self._ids, ids.cpu()]).argsort()
        self._ids = torch.cat([self._ids, ids.cpu()])[order]
        self._x0 = torch.cat([self._x0, images.detach().cpu().float()])[order]

    def new_ids(self, n: int) -> torch.Tensor:
        return self.oracle.new_ids(n)

    def counts_of(self, ids: torch.Tensor) -> torch.Tensor:
        return self.oracle.counts_of(ids)

    def remaining(self, ids: torch.Tensor) -> torch.Tensor:
        return self.oracle.remaining(ids)

    def _origin(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x0 per row, mask of rows whose origin is known)."""
        if not self._ids.numel():
            cpu = torch.device("cpu")
            return torch.zeros(ids.numel(), *self.input_shape, device=cpu), torch.zeros(
                ids.numel(), dtype=torch.bool, device=cpu
            )
        pos = torch.searchsorted(self._ids, ids.cpu()).clamp(max=self._ids.numel() - 1)
        known = self._ids[pos] == ids.cpu()
        return self._x0[pos], known

    def blind(self, x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """`x` with a fresh blind per row, inside [0, 1] and (where it was) inside the eps ball."""
        b = self.blinded
        a = b.amplitude
        xc = x.detach().cpu()
        if b.noise == "sign":
            delta = (torch.randint(0, 2, xc.shape, generator=b.generator, device="cpu") * 2 - 1).float() * a
        else:
            delta = (torch.rand(xc.shape, generator=b.generator, device="cpu") * 2 - 1) * a
        x0, known = self._origin(ids)
        lo, hi = torch.zeros_like(xc), torch.ones_like(xc)
        eps, norm = b.eps, b.norm
        if norm == "linf" and eps is not None:
            k = known.view(-1, *([1] * (xc.dim() - 1)))
            lo = torch.where(k, torch.maximum(lo, torch.minimum(xc, x0 - eps)), lo)
            hi = torch.where(k, torch.minimum(hi, torch.maximum(xc, x0 + eps)), hi)
        out = torch.minimum(torch.maximum(xc + delta, lo), hi)
        if norm == "l2" and eps is not None and bool(known.any()):
            before = (xc - x0).flatten(1).norm(dim=1)
            after = (out - x0).flatten(1).norm(dim=1)
            fix = known & (before <= eps) & (after > eps)
            if bool(fix.any()):
                scale = (eps / after[fix]).view(-1, *([1] * (xc.dim() - 1)))
                out[fix] = (x0[fix] + (out[fix] - x0[fix]) * scale).clamp(0.0, 1.0)
        return out.to(x.dtype).to(x.device)

    def _refused(self, answers: torch.Tensor) -> torch.Tensor:
        if answers.dim() == 1:
            return answers == REFUSED
        return torch.isnan(answers).all(1)

    def query(self, x: torch.Tensor, ids: torch.Tensor, eot: int | None = None) -> torch.Tensor:
        cost = int(getattr(self.oracle, "eot", 1)) if eot is None else eot
        answers = self._ask(x, ids, eot, cost)
        for _ in range(self.blinded.retries):
            refused = self._refused(answers)
            if not bool(refused.any()):
                break
            rows = refused.nonzero().flatten()
            rid = ids.cpu()[rows.cpu()]
            # at most remaining // cost retries per id (rank of each row among its id's rows)
            order = rid.argsort(stable=True)
            sid = rid[order]
            first = torch.searchsorted(sid, sid)
            rank = torch.empty_like(order)
            rank[order] = torch.arange(sid.numel(), device="cpu") - first
            rows = rows[(rank < self.oracle.remaining(rid) // cost).to(rows.device)]
            if not rows.numel():
                break
            again = self._ask(x[rows], ids[rows], eot, cost)
            self.retried += int(rows.numel()) * cost
            answers = answers.clone()
            answers[rows.to(answers.device)] = again
        return answers

    def _ask(self, x: torch.Tensor, ids: torch.Tensor, eot: int | None, m: int) -> torch.Tensor:
        """One blinded query per row; with EOT (M > 1) each of the M answers gets its own blind
        (M copies of one blinded point would refuse each other), combined as the oracle combines
        them: the mean of the scores, or the most frequent label (ties to the smallest class),
        refused answers left out; a row is refused when all M are."""
        if m == 1:
            return self.oracle.query(self.blind(x, ids), ids, eot)
        n = x.shape[0]
        xm, idm = x.repeat_interleave(m, dim=0), ids.repeat_interleave(m)
        answers = self.oracle.query(self.blind(xm, idm), idm, 1)
        refused = self._refused(answers).view(n, m)
        if answers.dim() == 2:
            return answers.view(n, m, -1).nanmean(1)
        votes = torch.zeros(n, self.num_classes, device="cpu")
        votes.scatter_add_(1, answers.clamp(min=0).view(n, m).cpu(), (~refused).float().cpu())
        return torch.where(refused.all(1).cpu(), REFUSED, votes.argmax(1)).to(answers.device)


class Blinded:
    """`attack` with every query blinded by fresh noise of amplitude `amplitude` (module docstring).

    Args:
        attack (rnd.attacks.base.QueryAttack): any rnd attack (`make_attack(...)`), run unchanged.
        amplitude: the blind's amplitude a in pixels ([0, 1] scale); 0.02 flips a pixel's
            Blacklight bin (step 50: 6 levels) with probability 6 a = 0.12 (sign noise).
        noise: "sign" (+-a per pixel, the most bin flips per amplitude) or "uniform" (U[-a, a]).
        retries: re-query a refused row up to this many times with a fresh blind (costs a query
            each; see the module docstring for when it is safe).
        seed: seed of the blinds' own generator (OS entropy when None).

    Called like the attack: `Blinded(attack)(oracle, images, labels[, targets])`; the result is the
    attack's, its `params` with the blind's added, and `queries` are the real oracle's counts.
    """

    def __init__(
        self,
        attack: QueryAttack,
        amplitude: float = 0.02,
        *,
        noise: Noise = "sign",
        retries: int = 0,
        seed: int | None = None,
    ) -> None:
        if not isinstance(attack, QueryAttack):
            raise InputError(f"Blinded wraps an rnd attack (make_attack(...)), got {type(attack).__name__}")
        if noise not in NOISES:
            raise unknown_name("blinding noise", noise, NOISES)
        self.attack = attack
        self.amplitude = check_positive(amplitude, "amplitude")
        if self.amplitude > 0.5:
            raise InputError(f"amplitude is in pixels on the [0, 1] scale; {amplitude} is too large")
        self.noise: Noise = noise
        self.retries = check_int(retries, "retries", minimum=0)
        self.seed = entropy_seed() if seed is None else check_int(seed, "seed", minimum=None)
        self.generator = torch.Generator().manual_seed(self.seed)
        self.last_oracle: BlindingOracle | None = None

    def __getattr__(self, name: str) -> Any:  # feedback, min_budget, cost_text, seed, ...: the attack's
        if name == "attack":
            raise AttributeError(name)
        return getattr(self.attack, name)

    @property
    def name(self) -> str:
        return f"blinded-{self.attack.name}"

    @property
    def eps(self) -> float | None:
        """The ball blinding keeps to: the attack's eps for score attacks; None (only [0, 1]) for
        label-only attacks, whose queries lie far outside the ball by design."""
        return self.attack.eps if self.attack.feedback == "scores" else None

    @property
    def norm(self) -> str:
        return getattr(self.attack, "norm", "linf")

    def params(self) -> dict[str, Any]:
        return {
            **self.attack.params(),
            "blind_amplitude": self.amplitude,
            "blind_noise": self.noise,
            "blind_retries": self.retries,
            "blind_seed": self.seed,
        }

    def __call__(
        self,
        oracle: QueryOracle,
        images: torch.Tensor,
        labels: torch.Tensor,
        targets: torch.Tensor | None = None,
    ) -> AttackResult:
        wrapped = _FirstIds(oracle, self, images)
        self.last_oracle = wrapped
        result = self.attack(wrapped, images, labels, targets)
        result.attack = self.name
        result.params = {
            **result.params,
            **{k: v for k, v in self.params().items() if k.startswith("blind_")},
        }
        return result


class _FirstIds(BlindingOracle):
    """The wrapper of one call: the first `new_ids(len(images))` are the images' ids (the attack
    base allocates one id per image, in order, at the start of its call)."""

    def __init__(self, oracle: QueryOracle, blinded: Blinded, images: torch.Tensor) -> None:
        super().__init__(oracle, blinded)
        self._pending: torch.Tensor | None = images

    def new_ids(self, n: int) -> torch.Tensor:
        ids = self.oracle.new_ids(n)
        if self._pending is not None and n == self._pending.shape[0]:
            self.origins(ids, self._pending)
            self._pending = None
        return ids
