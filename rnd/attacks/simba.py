"""SimBA (Guo et al., ICML 2019, "Simple Black-box Adversarial Attacks"): one direction per step.

Random search in the seed's form (eq. 5-6) over an orthonormal basis Q. Each image walks through
its own random order of basis vectors q; per step (the paper's Alg. 1)::

    try x - mu q; keep it if the loss drops; otherwise try x + mu q and keep it if the loss drops,

then project onto the threat ball and the [0, 1] box. The second query is made only for the images
whose first try failed, so a direction costs 1 or 2 queries (2 * M at most with EOT). Once every
basis vector has been tried, a fresh random order starts. Batching: the loop's step is one try per
image (an image whose first try failed makes its second in the next step, beside the first tries of
the others), so every forward holds the whole batch; each image still makes exactly the tries above.

Bases (`basis`):

- "pixel": the standard basis, one pixel of one channel (SimBA's pixel variant).
- "dct": orthonormal 2-D DCT-II basis vectors (per channel), low frequencies first (SimBA-DCT):
  the random order covers the `freq x freq` lowest-frequency block first, then the remaining
  frequencies ring by ring (rings `stride` wide), each ring in random order (the paper's "strided"
  order). The paper restricts ImageNet to the lowest 1/8 of frequencies (28 of 224); 28 x 28 images
  have few directions, so the block is half the side (freq = 14, 196 directions per channel;
  stride 7).

Default basis: pixel. The low-frequency prior of SimBA-DCT pays on ImageNet-sized images; on 28 x 28
images it costs strength: on the default Fashion-MNIST model (eps_2 1.5, mu 0.1) the DCT basis
fails clearly more often than the pixel basis.

`mu` is SimBA's step size epsilon (l_2 norm of each step, since basis vectors have unit norm).
The paper's ImageNet value is 0.2 on the [0, 1] scale (the RND paper's code uses 50/255 = 0.196);
SimBA itself has no norm bound, and inside an l_2 ball of 1.5 on 28 x 28 images a step of 0.2
reaches the boundary after about 56 accepted steps, after which each step is cut back by the
projection. Default for l_2: 0.07. On the default Fashion-MNIST model (eps_2 1.5), with either
basis, a larger step fails more often and spends fewer queries per success; of the pixel basis's
steps 0.07, 0.1 and 0.15, 0.07 fails least. Against RND nu 0.02 the pixel basis fails almost
always, at mu 0.07 as at mu 0.1. For l_inf (pixel basis) a step moves one pixel by mu and the
projection clips it to +-eps, so the search tries the two faces of the eps box coordinate by
coordinate; the default mu for l_inf is 0.2, which exceeds any usual eps, so every accepted step
reaches the box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import torch

from rnd._checks import check_int
from rnd.attacks.base import take, to_device
from rnd.attacks.score import ScoreAttack, ScoreState
from rnd.errors import unknown_name

Basis = Literal["pixel", "dct"]
BASES: tuple[str, ...] = ("pixel", "dct")


def dct_matrix(n: int) -> torch.Tensor:
    """Orthonormal DCT-II matrix D (n x n): row k is the k-th 1-D basis vector, D @ D.T = I."""
    i = torch.arange(n, dtype=torch.float64)
    k = i.view(-1, 1)
    d = torch.cos(math.pi * (2 * i + 1) * k / (2 * n)) * math.sqrt(2.0 / n)
    d[0] /= math.sqrt(2.0)
    return d.float()


def frequency_rings(h: int, w: int, freq: int, stride: int) -> torch.Tensor:
    """Ring number of each frequency index u*w + v: 0 inside the freq x freq low-frequency block,
    then 1, 2, ... for the following rings of width `stride` (the paper's "strided" order)."""
    u = torch.arange(h).view(-1, 1).expand(h, w)
    v = torch.arange(w).view(1, -1).expand(h, w)
    level = torch.maximum(u, v)
    return torch.where(level < freq, 0, 1 + (level - freq) // stride).flatten()


@dataclass(eq=False)
class SimBAState(ScoreState):
    """SimBA's per-image state."""

    order: torch.Tensor = field(init=False)  # each image's order of basis directions
    pos: torch.Tensor = field(init=False)  # next position in that order
    pending: torch.Tensor = field(init=False)  # x - mu q failed: x + mu q is this image's next try


class SimBA(ScoreAttack[SimBAState]):
    """SimBA with the pixel or low-frequency DCT basis, l_2 and l_inf (`mu` = step size).

    Args:
        basis: "pixel" (default) or "dct".
        freq: side of the low-frequency block searched first (dct basis; >= 1).
        stride: width of each following frequency ring (dct basis; >= 1).
        Other arguments: see `ScoreAttack`.
    """

    name = "simba"
    state_type = SimBAState
    norms = ("l2", "linf")
    default_mu = {"l2": 0.07, "linf": 0.2}

    def __init__(
        self,
        eps: float,
        norm: str = "l2",
        *,
        basis: Basis = "pixel",
        freq: int = 14,
        stride: int = 7,
        **kwargs,
    ) -> None:
        super().__init__(eps, norm, **kwargs)  # type: ignore[arg-type]
        if basis not in BASES:
            raise unknown_name("SimBA basis", basis, BASES)
        self.basis: Basis = basis
        self.freq = check_int(freq, "freq")
        self.stride = check_int(stride, "stride")

    @property
    def step_cost(self) -> int:
        return self.eot  # one try per step (the pipelined form: see `step`)

    @property
    def min_budget(self) -> int:
        return 2 * self.eot  # the clean image and one try

    def cost_text(self) -> str:
        return f"{self.name} needs {self.min_budget} queries (the clean image and one try)"

    def init(self, state: SimBAState) -> None:
        self.query_start(state)
        n, c, h, w = state.x0.shape
        self._shape = (c, h, w)
        self._dh, self._dw = dct_matrix(h), dct_matrix(w)
        state.order = self._new_orders(n)
        state.pos = torch.zeros(n, dtype=torch.int64)
        state.pending = torch.zeros(n, dtype=torch.bool)

    def _new_orders(self, k: int) -> torch.Tensor:
        """k random orders of all c*h*w basis indices (index = channel*h*w + u*w + v); for the DCT
        basis, low-frequency rings come first and each ring is shuffled across channels."""
        c, h, w = self._shape
        keys = torch.rand(k, c * h * w, generator=self.generator, dtype=torch.float64, device="cpu")
        keys = to_device(keys, self._device)
        if self.basis == "dct":
            rings = frequency_rings(h, w, self.freq, self.stride).repeat(c)
            keys = keys + rings.double()
        return keys.argsort(dim=1)

    def directions(self, index: torch.Tensor) -> torch.Tensor:
        """Unit-norm basis vectors (k, c, h, w) for basis indices `index` (k,)."""
        c, h, w = self._shape
        ch, rest = index // (h * w), index % (h * w)
        u, v = rest // w, rest % w
        k = index.numel()
        if self.basis == "pixel":
            out = torch.zeros(k, c * h * w)
            out[torch.arange(k), index] = 1.0
            return out.view(k, c, h, w)
        plane = self._dh[u].unsqueeze(2) * self._dw[v].unsqueeze(1)  # (k, h, w)
        onehot = torch.nn.functional.one_hot(ch, c).float().view(k, c, 1, 1)
        return onehot * plane.unsqueeze(1)

    def step(self, state: SimBAState, rows: torch.Tensor) -> None:
        """One try per image, all in one query (Alg. 1, pipelined across images): an image whose
        `x - mu q` failed last step tries `x + mu q` now, the others take their next direction q
        and try `x - mu q` (or `x + mu q` straight away where the projection maps `x - mu q` back
        onto x). Every image makes the paper's sequence of tries; the batch stays full instead of
        halving for the second tries."""
        pending = take(state.pending, rows)
        fresh = rows[~pending]
        total = state.order.shape[1]
        wrap = fresh[state.pos[fresh] >= total]
        if wrap.numel():  # a fresh random order once every direction was tried
            state.order[wrap] = self._new_orders(wrap.numel())
            state.pos[wrap] = 0
        state.pos[fresh] += 1
        pos = take(state.pos, rows) - 1  # the direction each row tries now
        q = self.directions(state.order[rows, pos])
        x, x0, mu = take(state.x, rows), take(state.x0, rows), self.cur_mu
        x_minus, x_plus = self.project(x - mu * q, x0), self.project(x + mu * q, x0)
        # a try the projection maps back onto x (a pixel already at the box or ball) costs nothing
        minus_moved, plus_moved = _moved(x_minus, x), _moved(x_plus, x)
        plus = pending | ~minus_moved
        ask = torch.where(plus, plus_moved, minus_moved).nonzero().flatten()
        state.pending[rows] = False
        if not ask.numel():
            return
        cand = torch.where(plus.view(-1, 1, 1, 1), x_plus, x_minus).index_select(0, ask)
        r = rows.index_select(0, ask)
        loss, adv = self.evaluate(state, cand, r)
        better = (loss < state.loss.index_select(0, r)) | adv
        self.accept(state, r, cand, loss, adv, better)
        # a failed x - mu q is followed by x + mu q next step, where that moves
        retry = ~better & ~plus.index_select(0, ask) & plus_moved.index_select(0, ask)
        state.pending[r[retry]] = True


def _moved(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).flatten(1).abs().amax(1) > 1e-7
