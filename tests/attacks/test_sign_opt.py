import copy

import pytest
import torch

from rnd.attacks.base import unit
from rnd.attacks.sign_opt import (
    _ALPHA_FLOOR,
    _BETA_FLOOR,
    _FINE,
    _FINE_STEPS,
    _INIT_CHUNK,
    _LS_TRIALS,
    _PROBE_ELEMS,
    _REL_TOL,
    _TOL_SHARE,
    SignOPT,
    SignOPTState,
    ray,
)
from rnd.errors import InputError
from tests.attacks.decision_helpers import check_batch_independent, run_decision

pytestmark = pytest.mark.usefixtures("one_thread")

# small probe counts keep the file fast on 2 cores; the defaults are checked in test_defaults
FAST = {"k": 20, "n_init": 10}


def test_defaults():
    a = SignOPT(eps=1.0, norm="l2")
    assert (a.k, a.alpha, a.mu, a.n_init, a.tol) == (200, 0.2, 0.001, 100, 1e-3)
    assert SignOPT(eps=0.1, norm="linf").mu == 0.001
    assert SignOPT.name == "sign-opt" and set(SignOPT.norms) == {"l2", "linf"}
    with pytest.raises(InputError, match="k"):
        SignOPT(eps=1.0, norm="l2", k=0)


def test_unit():
    v = torch.tensor([[3.0, -4.0], [0.5, 0.25]])
    torch.testing.assert_close(unit(v, "l2").norm(dim=1), torch.ones(2))
    torch.testing.assert_close(unit(v, "linf").abs().amax(1), torch.ones(2))


# l_inf shrinks more slowly: the tiny model is trained in the session, so its weights (and the ratio)
# differ between CPUs; on an AVX2 EPYC the median went to 0.76 of the start at 600 queries, 0.67 at 1,000
@pytest.mark.parametrize("norm,eps,budget", [("l2", 6.0, 600), ("linf", 0.9, 1000)])
def test_shrinks_and_succeeds(tiny_model, attack_batch, norm, eps, budget):
    x, y = attack_batch
    x, y = x[:10], y[:10]
    attack = SignOPT(eps=eps, norm=norm, seed=0, stop_at_eps=False, **FAST)
    res = run_decision(attack, tiny_model, x, y, budget)
    curve = res.distance_curve()
    start = next(d for _, d in curve if d < float("inf"))
    assert curve[-1][1] < 0.75 * start  # the descent shrinks the median distance after the start
    found = res.distance.isfinite()  # a random start exists (noise is never some images' class)
    assert int(found.sum()) >= 6
    # Sign-OPT from random Gaussian starts is slow in queries: at this small budget (k = 20) the
    # easy images succeed, those with far starts do not yet
    assert float(res.success[found].float().mean()) >= 0.5


def test_budget_never_exceeded(tiny_model, attack_batch):
    x, y = attack_batch
    for norm in ("l2", "linf"):
        for budget in (2, 3, 5, 8, 13, 31, 57):
            attack = SignOPT(eps=0.01, norm=norm, seed=budget, stop_at_eps=False, k=7, n_init=5)
            res = run_decision(attack, tiny_model, x[:8], y[:8], budget)
            assert int(res.queries.max()) <= budget


def test_batch_independent(tiny_model, attack_batch):
    x, y = attack_batch
    for norm in ("l2", "linf"):
        check_batch_independent(
            lambda norm=norm: SignOPT(eps=0.01, norm=norm, seed=3, stop_at_eps=False, k=10, n_init=6),
            tiny_model,
            x[:4],
            y[:4],
            100,
        )


def test_eot_costs_multiples(tiny_model, attack_batch):
    x, y = attack_batch
    res = run_decision(
        SignOPT(eps=0.01, norm="l2", seed=4, eot=3, k=5, n_init=4), tiny_model, x[:8], y[:8], 100
    )
    assert bool((res.queries % 3 == 0).all()) and int(res.queries.max()) <= 100


def test_given_starts_and_clean_adversarial(tiny_model, attack_batch):
    x, y = attack_batch
    starts = torch.roll(x, 1, 0)
    res = run_decision(SignOPT(eps=0.01, norm="l2", seed=5, **FAST), tiny_model, x, y, 120, starts=starts)
    assert bool(res.distance.isfinite().all())
    # an image the model already gets wrong: distance 0 after the clean query, nothing more spent
    wrong = (tiny_model(x).argmax(1) + 1) % 10
    res = run_decision(
        SignOPT(eps=0.01, norm="l2", seed=5, stop_at_eps=False, **FAST), tiny_model, x[:2], wrong[:2], 50
    )
    assert bool((res.distance == 0).all()) and bool((res.queries == 1).all())


class Spy(SignOPT):
    """Keeps the final state (direction theta and its g) for inspection."""

    def result(self, state):
        self.state = state
        return super().result(state)


def test_linf_searches_in_linf(tiny_model, attack_batch):
    """The l_inf variant is its own search, not an l_2 search with an l_inf check: g(theta) is the
    l_inf distance to the boundary along a direction of unit l_inf norm (the l_2 variant's g is the
    l_2 distance along a unit l_2 direction)."""
    x, y = attack_batch
    x, y = x[:10], y[:10]
    spies = {n: Spy(eps=0.01, norm=n, seed=6, stop_at_eps=False, **FAST) for n in ("l2", "linf")}
    res = {n: run_decision(a, tiny_model, x, y, 500) for n, a in spies.items()}
    st = spies["linf"].state
    f = st.g.isfinite()
    assert int(f.sum()) >= 8
    g, theta = st.g[f].float().view(-1, 1, 1, 1), st.theta[f]
    torch.testing.assert_close(theta.flatten(1).abs().amax(1), torch.ones(int(f.sum())))
    on, inside = (x[f] + g * theta).clamp(0, 1), (x[f] + 0.95 * g * theta).clamp(0, 1)
    with torch.no_grad():
        assert bool((tiny_model(on).argmax(1) != y[f]).all())  # on the boundary, adversarial side
        assert float((tiny_model(inside).argmax(1) == y[f]).float().mean()) >= 0.7  # just inside: not
    assert bool((res["linf"].distance[f] <= st.g[f].float() + 1e-5).all())  # distance: l_inf, at most g
    # g is the l_inf distance of the boundary point (clipping can only shorten it)
    reach = (on - x[f]).flatten(1).abs().amax(1) / st.g[f].float()
    assert bool((reach <= 1 + 1e-5).all()) and float(reach.median()) > 0.9
    # the l_2 variant's g is an l_2 length (at most the l_2 reach), far above its l_inf reach
    st2 = spies["l2"].state
    f2 = st2.g.isfinite()
    d2 = ((x[f2] + st2.g[f2].float().view(-1, 1, 1, 1) * st2.theta[f2]).clamp(0, 1) - x[f2]).flatten(1)
    assert bool((d2.norm(dim=1) <= st2.g[f2].float() + 1e-5).all())
    assert float((d2.abs().amax(1) / st2.g[f2].float()).median()) < 0.5


class LockstepSignOPT(SignOPT):
    """Sign-OPT as it ran before one decision per image per step: every image's probes in one
    query, then each line-search trial's queries (first, fine steps, halvings) for the images
    still in that trial, the whole iteration within one step; and the start chunk by chunk, each
    chunk's directions in turn for every image whose direction it is."""

    @property
    def step_cost(self) -> int:
        return 2 * self.eot

    def start(self, state: SignOPTState, rows: torch.Tensor) -> None:
        """The authors' start: best of `n_init` Gaussian directions (see the module docstring)."""
        shape = state.x0.shape[1:]
        tries = (self.affordable(state, rows) // 4).clamp(1, self.n_init)
        for c0 in range(0, self.n_init, _INIT_CHUNK):
            c = min(_INIT_CHUNK, self.n_init - c0)
            drawing = (tries > c0).nonzero().flatten()
            if not drawing.numel():
                return
            dirs = self.row_randn(state, rows[drawing], c, *shape)
            want = (c0 + torch.arange(c))[None] < tries[drawing][:, None]
            want &= torch.arange(c)[None] < self.affordable(state, rows[drawing])[:, None]
            pi, ji = want.nonzero(as_tuple=True)
            x = (state.x0[rows[drawing][pi]] + dirs[pi, ji]).clamp(0.0, 1.0)
            adv = self.decide(state, x, rows[drawing][pi])
            for j in range(c):  # in turn, as the authors (each bisection starts from the best g)
                sel = pi[adv & (ji == j)]
                if sel.numel():
                    self._try_direction(state, rows[drawing][sel], dirs[sel, j])

    def _try_direction(self, state: SignOPTState, rows: torch.Tensor, theta: torch.Tensor) -> None:
        """One start direction per row, known adversarial at x0 + theta: keep it if its g beats."""
        f = theta.flatten(1)
        lbd = (f.abs().amax(1) if self.norm == "linf" else f.norm(dim=1)).double()
        theta = unit(theta, self.norm)
        best = state.g[rows]
        x0 = state.x0[rows]
        keep = torch.ones(rows.numel(), dtype=torch.bool)
        check = (lbd > best) & best.isfinite()
        if bool(check.any()):  # adversarial at the best g so far? else it cannot beat it
            idx = check.nonzero().flatten()
            idx = idx[self.affordable(state, rows[idx]) >= 1]
            keep[check] = False
            if idx.numel():
                keep[idx] = self.decide(state, ray(x0[idx], theta[idx], best[idx]), rows[idx])
        hi = torch.where(check, best, lbd)
        idx = keep.nonzero().flatten()
        if not idx.numel():
            return
        xs, th, r = x0[idx], theta[idx], rows[idx]
        zero = torch.zeros(idx.numel(), dtype=torch.float64)
        _, top = self.bisect(state, r, lambda j, t: ray(xs[j], th[j], t), zero, hi[idx], self.tol)
        self.accept(state, r, ray(xs, th, top))
        better = top < best[idx]
        state.g[r[better]], state.theta[r[better]] = top[better], th[better]

    def boundary(
        self,
        state: SignOPTState,
        rows: torch.Tensor,
        theta: torch.Tensor,
        ref: torch.Tensor,
        tol: torch.Tensor,
    ) -> torch.Tensor:
        """g along unit directions `theta` (one per row), searched from `ref`: inf where x0 + ref
        theta is not adversarial (or unaffordable); else the adversarial end of a fine-grained
        search then bisection (an observed-adversarial point, accepted)."""
        out = torch.full((rows.numel(),), torch.inf, dtype=torch.float64)
        x0 = state.x0[rows]
        idx = (self.affordable(state, rows) >= 1).nonzero().flatten()
        if not idx.numel():
            return out
        adv = self.decide(state, ray(x0[idx], theta[idx], ref[idx]), rows[idx])
        hit = idx[adv]
        if not hit.numel():
            return out
        hi = ref[hit].clone()
        lo = hi * (1 - _FINE)
        going = torch.ones(hit.numel(), dtype=torch.bool)
        for _ in range(_FINE_STEPS):  # 1 % steps down while still adversarial
            go = (going & (self.affordable(state, rows[hit]) >= 1)).nonzero().flatten()
            if not go.numel():
                break
            a = self.decide(state, ray(x0[hit[go]], theta[hit[go]], lo[go]), rows[hit[go]])
            going[go[~a]] = False
            hi[go[a]] = lo[go[a]]
            lo[go[a]] = lo[go[a]] * (1 - _FINE)
        lo[going] = 0.0  # still adversarial after the fine steps: bracket from the clean image
        xs, th = x0[hit], theta[hit]
        lo, hi = self.bisect(state, rows[hit], lambda j, t: ray(xs[j], th[j], t), lo, hi, tol[hit])
        self.accept(state, rows[hit], ray(xs, th, hi))
        out[hit] = hi
        return out

    def sign_grad(self, state: SignOPTState, rows: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """mean(sign * u) over each row's first k[r] of `self.k` probes (one query each)."""
        shape = state.x0.shape[1:]
        grad = torch.zeros(rows.numel(), *shape)
        per = max(1, _PROBE_ELEMS // (self.k * state.x0[0].numel()))
        for c0 in range(0, rows.numel(), per):
            p = torch.arange(c0, min(c0 + per, rows.numel()))
            r = rows[p]
            u = self.row_randn(state, r, self.k, *shape)
            u = unit(u.flatten(0, 1), self.norm).view_as(u)
            pi, qi = (torch.arange(self.k)[None] < k[p][:, None]).nonzero(as_tuple=True)
            beta = state.beta[r][pi].float().view(-1, *([1] * len(shape)))
            probe = unit(state.theta[r][pi] + beta * u[pi, qi], self.norm)
            adv = self.decide(state, ray(state.x0[r][pi], probe, state.g[r][pi]), r[pi])
            s = torch.where(adv, -1.0, 1.0).view(-1, *([1] * len(shape)))
            grad[p] = torch.zeros_like(grad[p]).index_add_(0, pi, s * u[pi, qi])
        return grad / k.float().view(-1, *([1] * len(shape)))

    def step(self, state: SignOPTState, rows: torch.Tensor) -> None:
        k = (self.affordable(state, rows) - 1).clamp(1, self.k)  # keep a query for the line search
        grad = self.sign_grad(state, rows, k)
        view = (-1, *([1] * (grad.dim() - 1)))
        g0, th0 = state.g[rows], state.theta[rows]
        a, b = state.alpha[rows].clone(), state.beta[rows].clone()
        tol = torch.maximum(b / 500, (b * _TOL_SHARE).clamp_min(_REL_TOL) * g0)
        best_g, best_th = g0.clone(), th0.clone()

        def trial(i: torch.Tensor) -> torch.Tensor:
            cand = unit(th0[i] - a[i].float().view(view) * grad[i], self.norm)
            gn = self.boundary(state, rows[i], cand, best_g[i], tol[i])
            ok = gn < best_g[i]
            best_g[i[ok]], best_th[i[ok]] = gn[ok], cand[ok]
            return ok

        growing = torch.ones(rows.numel(), dtype=torch.bool)
        for _ in range(_LS_TRIALS):  # double alpha while g keeps falling
            growing &= self.affordable(state, rows) >= 1
            i = growing.nonzero().flatten()
            if not i.numel():
                break
            ok = trial(i)
            a[i] *= 2
            growing[i[~ok]] = False
        shrinking = best_g >= g0  # the first step failed: quarter alpha until g falls
        for _ in range(_LS_TRIALS):
            shrinking &= self.affordable(state, rows) >= 1
            i = shrinking.nonzero().flatten()
            if not i.numel():
                break
            a[i] *= 0.25
            shrinking[i[trial(i)]] = False
        reset = a < _ALPHA_FLOOR[self.norm]  # not moving: restart alpha, finer probes
        a[reset] = 1.0
        b[reset] *= 0.1
        state.g[rows], state.theta[rows] = best_g, best_th
        state.alpha[rows], state.beta[rows] = a, b
        state.done[rows] |= b < _BETA_FLOOR


@pytest.mark.parametrize(
    "norm,budget,n_init",
    [("l2", 90, 23), ("l2", 700, 8), ("linf", 400, 23), ("l2", 300, 100), ("linf", 45, 23)],
)
def test_one_decision_per_step_makes_the_lockstep_decisions(tiny_model, attack_batch, norm, budget, n_init):
    """Each image makes the decisions of the start and the iteration as written, in the same order,
    whatever the other images are doing: on a deterministic model the same distances, points,
    query counts and final directions as the lock-step version, budget edge included (starts of
    one chunk, of several with a short last one, and of the default 100 directions capped by a
    quarter of the budget)."""
    x, y = attack_batch
    kw = dict(eps=0.01, norm=norm, seed=7, stop_at_eps=False, k=15, n_init=n_init)
    new, ref = Spy(**kw), LockstepSpy(**kw)
    model = Float64(tiny_model)  # the bisections reach points whose label flips with the batch
    a = run_decision(new, model, x, y, budget)
    b = run_decision(ref, model, x, y, budget)
    assert torch.equal(a.queries, b.queries)
    assert torch.equal(a.distance, b.distance)
    assert torch.equal(a.x_adv, b.x_adv)
    assert torch.equal(new.state.g, ref.state.g) and torch.equal(new.state.theta, ref.state.theta)
    assert int(a.queries.sum()) > 40 * len(y)  # several iterations ran


class LockstepSpy(LockstepSignOPT, Spy):
    pass


class Float64(torch.nn.Module):
    """The model in float64: an image's answer does not depend on the batch it is queried in (a
    batched float32 forward may round differently from a single one, enough to flip the label of a
    point 1e-5 from the boundary, where the bisections end; float64's rounding is 1e-16)."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = copy.deepcopy(model).double()
        self.input_shape, self.num_classes = model.input_shape, model.num_classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x.double()).float()


def test_stops_at_the_trial_that_succeeds(tiny_model, attack_batch):
    """With stop_at_eps an image stops once the trial that brings it within eps ends, not at the
    end of its iteration's line search: never more queries than the lock-step iteration, fewer
    for some image, the same successes."""
    x, y = attack_batch
    kw = dict(eps=2.5, norm="l2", seed=8, k=15, n_init=8)
    a = run_decision(SignOPT(**kw), Float64(tiny_model), x, y, 600)
    b = run_decision(LockstepSignOPT(**kw), Float64(tiny_model), x, y, 600)
    assert torch.equal(a.success, b.success) and int(a.success.sum()) >= 4
    assert bool((a.queries <= b.queries).all()) and bool((a.queries < b.queries).any())


def test_probes_in_chunks_give_the_same_result(tiny_model, attack_batch, monkeypatch):
    """The sign probes are queried at most _PROBE_ELEMS pixels at a time (memory: 500 images x 200
    probes are 313 MB of 28 x 28 points), the first chunk beside the line searches: with chunks of
    3 images the result is that of one chunk."""
    import rnd.attacks.sign_opt as so

    x, y = attack_batch
    kw = dict(eps=0.01, norm="l2", seed=9, stop_at_eps=False, k=15, n_init=8)
    model = Float64(tiny_model)
    whole = run_decision(SignOPT(**kw), model, x, y, 300)
    monkeypatch.setattr(so, "_PROBE_ELEMS", 3 * 15 * x[0].numel())
    chunked = run_decision(SignOPT(**kw), model, x, y, 300)
    assert torch.equal(whole.queries, chunked.queries)
    assert torch.equal(whole.distance, chunked.distance)
