"""PopSkipJump's Bayesian line search (`rnd.attacks.psj`): the posterior over (t0, s) that
`boundary_search` keeps across rounds, one answer's log-likelihood added at a time, is the posterior
recomputed from scratch from all answers; and the noise floor bounds what one answer can do to it.

The expected posteriors are computed here from the model of the module docstring,

    P(adv | t) = floor + (1 - 2 floor) * sigmoid((t - t0) / s),   flat prior on the (t0, s) grid,

as a product of per-answer likelihoods in float64, independently of `log_likelihood`."""

from __future__ import annotations

import pytest
import torch

from rnd.attacks.psj import WIDTHS, PopSkipJump
from rnd.errors import InputError

pytestmark = pytest.mark.usefixtures("one_thread")


def expected_posterior(tg: torch.Tensor, ts: list[float], ys: list[float], floor: float) -> torch.Tensor:
    """(G, S) posterior of one row from scratch: flat prior times the product of the answers'
    likelihoods, normalised (float64; the widths as the attack stores them, in float32)."""
    t0 = tg.double()[:, None]
    s = torch.tensor(WIDTHS, dtype=torch.float32).double()[None, :]
    logpost = torch.zeros(t0.shape[0], s.shape[1], dtype=torch.float64)
    for t, y in zip(ts, ys, strict=True):
        p = floor + (1 - 2 * floor) / (1 + torch.exp(-(float(t) - t0) / s))
        logpost += torch.log(p if y > 0 else 1 - p)
    post = torch.exp(logpost - logpost.max())
    return post / post.sum()


ANCHORS = ([1.0, 0.0], [1.0, 0.0])  # every search starts with xs adversarial (t = 1), x0 not (t = 0)


# -- (a) the incremental update of the helpers equals the posterior from scratch ----------------------
@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_incremental_update_equals_posterior_from_scratch(seed):
    """Rows with their own grids (zoomed to [lo, hi]) and their own answers, some rows skipping some
    rounds (as stopped rows do): after every round, the posterior kept incrementally (the anchors'
    log-likelihood, plus each new answer's own term) equals the one recomputed from all answers by
    `log_likelihood`, and both equal the independent float64 product of likelihoods."""
    gen = torch.Generator().manual_seed(seed)
    attack = PopSkipJump(eps=1.0, floor=0.02)
    n, rounds = 4, 25
    lo = torch.rand(n, generator=gen, dtype=torch.float64) * 0.4
    hi = lo + 0.2 + torch.rand(n, generator=gen, dtype=torch.float64) * 0.4
    tg = attack.grid(lo, hi)
    assert tg.shape == (n, attack.grid_size) and tg.dtype == torch.float64
    truth = lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)
    cols = rounds + 2
    ts, ys, seen = (torch.zeros(n, cols, dtype=torch.float64) for _ in range(3))
    ts[:, 0], ys[:, 0], seen[:, :2] = 1.0, 1.0, 1.0
    history = [[*ANCHORS[0]] for _ in range(n)], [[*ANCHORS[1]] for _ in range(n)]
    logp = attack.log_likelihood(tg, ts[:, :2], ys[:, :2], seen[:, :2])
    assert logp.shape == (n, attack.grid_size, len(WIDTHS))
    for q in range(rounds):
        k = q + 2
        asked = torch.rand(n, generator=gen) < 0.8  # the rows still searching this round
        idx = asked.nonzero().flatten()
        t_q = lo + (hi - lo) * torch.rand(n, generator=gen, dtype=torch.float64)
        noisy = torch.rand(n, generator=gen) < 0.2  # a fifth of the answers are flipped
        adv = ((t_q > truth) ^ noisy).double()
        ts[idx, k], ys[idx, k], seen[idx, k] = t_q[idx], adv[idx], 1.0
        new = slice(k, k + 1)
        logp[idx] += attack.log_likelihood(tg[idx], ts[idx, new], ys[idx, new], seen[idx, new])
        for r in idx.tolist():
            history[0][r].append(float(t_q[r]))
            history[1][r].append(float(adv[r]))
        incremental = attack.normalised(logp)
        scratch = attack.normalised(
            attack.log_likelihood(tg, ts[:, : k + 1], ys[:, : k + 1], seen[:, : k + 1])
        )
        torch.testing.assert_close(incremental, scratch, rtol=1e-10, atol=1e-14)
        for r in range(n):
            want = expected_posterior(tg[r], history[0][r], history[1][r], attack.floor)
            torch.testing.assert_close(incremental[r], want, rtol=1e-9, atol=1e-14)
            assert float(incremental[r].sum()) == pytest.approx(1.0, abs=1e-12)
    assert int(seen.sum()) > n * (2 + rounds // 2)  # most rounds were answered
    assert bool((ys[:, 2:][seen[:, 2:] > 0] == 0).any() and (ys[:, 2:][seen[:, 2:] > 0] == 1).any())


class Recorded(PopSkipJump):
    """PopSkipJump whose `boundary_search` runs on a scripted noisy oracle (no `Oracle`: a seeded
    generator answers), recording what the search does to its posterior:

    - `decide` answers from a noisy boundary along the segment and remembers which rows it asked and
      what it answered;
    - `log_likelihood` (the real one) records the grid and probe position of the single answer a
      round adds, for the rows just asked;
    - `normalised` (the real one), at the top of each round (after the anchors' or a new answer's
      term, not after a zoom's recomputation), records the log-posterior of the rows asked last."""

    def __init__(self, gen: torch.Generator, boundary: torch.Tensor, **kw):
        super().__init__(eps=1.0, norm="l2", **kw)
        self.gen, self.boundary = gen, boundary
        self.answers: dict[int, list[tuple[float, float]]] = {}
        self.grids: dict[int, torch.Tensor] = {}
        self.checks: list[tuple[int, torch.Tensor, torch.Tensor, list[tuple[float, float]]]] = []
        self.zooms = 0
        self._calls = 0
        self._asked: list[int] = []
        self._answered: list[float] = []
        self._t = torch.zeros(0)
        self._top = False

    def affordable(self, state, rows):
        return torch.full((rows.numel(),), 10_000, dtype=torch.int64)

    def confirmed(self, state, rows, x, noisy):
        return torch.ones(rows.numel(), dtype=torch.bool)

    def decide(self, state, x, rows):
        x0, xs = state.x0[rows].flatten(1), self.xs[rows].flatten(1)
        t = ((x.flatten(1) - x0) * (xs - x0)).sum(1) / ((xs - x0) ** 2).sum(1)
        p = 0.1 + 0.8 * torch.sigmoid((t - self.boundary[rows]) / 0.03)  # a noisy boundary
        adv = torch.rand(rows.numel(), generator=self.gen) < p
        self._asked, self._answered = rows.tolist(), adv.float().tolist()
        self._t = t
        return adv

    def log_likelihood(self, tg, ts, ys, seen):
        self._calls += 1
        if self._calls == 1:  # the anchors, on the first grid, for every row
            self.grids = {r: tg[r].clone() for r in range(tg.shape[0])}
            self._top, self._asked = True, list(range(tg.shape[0]))
        elif ts.shape[1] == 1:  # one new answer for the rows just asked
            assert ys[:, 0].tolist() == self._answered and bool((seen == 1).all())
            for j, r in enumerate(self._asked):
                assert float(ts[j, 0]) == pytest.approx(float(self._t[j]), abs=1e-5)
                self.answers[r].append((float(ts[j, 0]), float(ys[j, 0])))
                self.grids[r] = tg[j].clone()
            self._top = True
        else:  # a zoomed grid: recomputed from all of the row's answers
            self.zooms += 1
        return super().log_likelihood(tg, ts, ys, seen)

    def normalised(self, logp):
        if self._top:
            assert logp.shape[0] == len(self.grids)  # the whole batch, at the top of a round
            for r in self._asked:
                self.checks.append((r, self.grids[r], logp[r].clone(), list(self.answers[r])))
            self._top = False
        return super().normalised(logp)

    def run(self, n: int, d: int = 16) -> None:
        self.answers = {r: [(1.0, 1.0), (0.0, 0.0)] for r in range(n)}
        x0 = torch.rand(n, 1, 4, d // 4, generator=self.gen) * 0.5
        self.xs = x0 + 0.5
        state = self.state_type(x0, torch.zeros(n, dtype=torch.int64), None, torch.arange(n))
        state.width = torch.zeros(n)
        self.boundary_search(state, torch.arange(n), self.xs)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_boundary_search_posterior_equals_posterior_from_scratch(seed):
    """Inside the real `boundary_search` (noisy answers, zooms of the grid): at the top of every
    round, each row's kept log-posterior, normalised, equals the posterior recomputed from scratch from
    all of that row's answers on its current grid. An answer added twice, on the wrong side, or to
    the wrong row, or a zoom that forgets answers, fails it."""
    gen = torch.Generator().manual_seed(100 + seed)
    n = 5
    boundary = 0.2 + 0.6 * torch.rand(n, generator=gen)
    attack = Recorded(gen, boundary, line_queries=20, line_tol=1e-4)
    attack.run(n)
    assert attack.zooms > 0  # the grids zoomed: recomputed logs are checked too
    answered = sum(len(a) - 2 for a in attack.answers.values())
    assert answered >= n * 10 and len(attack.checks) == n + answered
    flips = 0
    for r, tg, logp, answers in attack.checks:
        ts, ys = [a[0] for a in answers], [a[1] for a in answers]
        want = expected_posterior(tg, ts, ys, attack.floor)
        got = attack.normalised(logp[None])[0].double()
        torch.testing.assert_close(got, want, rtol=2e-4, atol=1e-7)
        flips += sum(1 for t, y in zip(ts, ys, strict=True) if (t > float(boundary[r])) != (y > 0))
    assert flips > 0  # some answers were noise: contradictions went through the update


# -- (b) the noise floor --------------------------------------------------------------------------------
def update(
    attack: PopSkipJump, tg: torch.Tensor, prior: tuple[list[float], list[float]], obs: tuple[float, float]
):
    """(posterior before, posterior after) one more answer `obs`, for one row on grid `tg`, through the
    real helpers: `log_likelihood` of the prior answers, plus the new answer's term, `normalised`."""
    ts, ys = torch.tensor([prior[0]], dtype=tg.dtype), torch.tensor([prior[1]], dtype=tg.dtype)
    logp = attack.log_likelihood(tg[None], ts, ys, torch.ones_like(ts))
    before = attack.normalised(logp)[0]
    t1, y1 = torch.tensor([[obs[0]]], dtype=tg.dtype), torch.tensor([[obs[1]]], dtype=tg.dtype)
    after = attack.normalised(logp + attack.log_likelihood(tg[None], t1, y1, torch.ones_like(t1)))[0]
    return before, after


# answers consistent with a sharp boundary between 0.3 and 0.7; then "not adversarial" at t = 0.9,
# which no sharp boundary below 0.9 explains
PRIOR = ([1.0, 0.0, 0.3, 0.7], [1.0, 0.0, 0.0, 1.0])
CONTRADICTION = (0.9, 0.0)


@pytest.mark.parametrize("floor", [0.02, 0.1, 0.3])
def test_floor_keeps_every_cell_alive_after_a_contradiction(floor):
    """With the floor, every answer's likelihood lies in [floor, 1 - floor]: one contradicting answer
    multiplies each cell's posterior by likelihood / evidence, so no cell reaches zero, the posterior
    stays normalised, and the most it can shift the odds of two cells is (1 - floor) / floor, reached
    exactly between a sharp boundary it contradicts (t0 < 0.9) and one it agrees with (t0 > 0.9)."""
    attack = PopSkipJump(eps=1.0, floor=floor)
    tg = attack.grid(torch.zeros(1), torch.ones(1))[0]  # float32, as boundary_search runs
    before, after = update(attack, tg, PRIOR, CONTRADICTION)
    assert bool((before > 0).all()) and bool((after > 0).all())
    assert float(after.sum()) == pytest.approx(1.0, abs=1e-5)
    ratio = (after / before).double()
    bound = (1 - floor) / floor
    assert float(ratio.max() / ratio.min()) <= bound * (1 + 1e-4)
    sharp = ratio[:, 0]  # s = 1e-8: the likelihood is floor or 1 - floor
    contradicted, agreeing = sharp[tg < 0.9], sharp[tg > 0.9]
    torch.testing.assert_close(
        contradicted, torch.full_like(contradicted, float(contradicted[0])), rtol=1e-4, atol=0
    )
    assert float(agreeing[0] / contradicted[0]) == pytest.approx(bound, rel=1e-4)
    # the same, exactly, from the independent model
    want_before = expected_posterior(tg, PRIOR[0], PRIOR[1], floor)
    want_after = expected_posterior(tg, [*PRIOR[0], CONTRADICTION[0]], [*PRIOR[1], CONTRADICTION[1]], floor)
    torch.testing.assert_close(before.double(), want_before, rtol=1e-4, atol=1e-9)
    torch.testing.assert_close(after.double(), want_after, rtol=1e-4, atol=1e-9)


def test_without_the_floor_one_contradiction_zeroes_cells():
    """The floor is what keeps them: with floor 0 (which the constructor refuses; set afterwards) the
    same contradicting answer sends to exactly zero every sharp-boundary cell between the consistent
    answers (0.3 < t0 < 0.7), cells that were alive before it."""
    with pytest.raises(InputError, match="floor"):
        PopSkipJump(eps=1.0, floor=0.0)
    attack = PopSkipJump(eps=1.0)
    attack.floor = 0.0
    tg = attack.grid(torch.zeros(1), torch.ones(1))[0]
    before, after = update(attack, tg, PRIOR, CONTRADICTION)
    between = (tg > 0.3) & (tg < 0.7)
    assert bool((before[between, 0] > 0).all())
    assert bool((after[between, 0] == 0).all())
    assert float(after.sum()) == pytest.approx(1.0, abs=1e-5)  # wider widths carry the mass
    floored = PopSkipJump(eps=1.0, floor=0.02)
    assert bool((update(floored, tg, PRIOR, CONTRADICTION)[1][between, 0] > 0).all())


def test_a_contradiction_in_one_row_leaves_the_others_alone():
    """The posterior is batched per image: an answer seen by row 0 only (the `seen` mask) changes row
    0's posterior and leaves row 1's bit for bit."""
    attack = PopSkipJump(eps=1.0)
    tg = attack.grid(torch.zeros(2), torch.ones(2))
    ts = torch.tensor([PRIOR[0], PRIOR[0]])
    ys = torch.tensor([PRIOR[1], PRIOR[1]])
    logp = attack.log_likelihood(tg, ts, ys, torch.ones_like(ts))
    before = attack.normalised(logp)
    t1, y1 = torch.full((2, 1), CONTRADICTION[0]), torch.full((2, 1), CONTRADICTION[1])
    seen = torch.tensor([[1.0], [0.0]])
    after = attack.normalised(logp + attack.log_likelihood(tg, t1, y1, seen))
    assert torch.equal(after[1], before[1])
    assert not torch.allclose(after[0], before[0])
    assert bool((after > 0).all())
