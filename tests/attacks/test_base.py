import pytest
import torch

from rnd import Oracle, RandomNoiseDefense
from rnd.attacks import QUERY_ATTACKS, Square, make_attack
from rnd.errors import InputError, UnknownNameError


def test_unknown_attack_name():
    with pytest.raises(UnknownNameError, match="square"):
        make_attack("sqaure", eps=0.1)


@pytest.mark.parametrize("name", sorted(QUERY_ATTACKS))  # transfer attacks: test_transfer.py
def test_bad_hyper_parameters(name):
    with pytest.raises(InputError, match="eps"):
        make_attack(name, eps=0.0)
    with pytest.raises(InputError, match="eps"):
        make_attack(name, eps=-1)
    with pytest.raises(InputError, match="norm"):
        make_attack(name, eps=0.1, norm="l1")
    with pytest.raises(InputError, match="eot"):
        make_attack(name, eps=0.1, eot=0)
    with pytest.raises(InputError, match="mu"):
        make_attack(name, eps=0.1, mu=-0.1)


def test_bad_call_inputs(tiny_model, attack_batch):
    x, y = attack_batch
    oracle = Oracle(tiny_model, budget=50)
    attack = Square(eps=0.1, seed=0)
    with pytest.raises(InputError, match="labels"):
        attack(oracle, x, y[:-1])
    with pytest.raises(InputError, match=r"\[0, 10\)"):
        attack(oracle, x, y + 10)
    with pytest.raises(InputError, match="targets"):
        attack(oracle, x, y, targets=y)
    with pytest.raises(InputError, match="targets"):
        Square(eps=0.1, targeted=True)(oracle, x, y)
    with pytest.raises(InputError, match=r"\[0, 10\)"):
        Square(eps=0.1, targeted=True)(oracle, x, y, (y + 1) % 10 + 10)
    with pytest.raises(InputError, match="budget"):
        attack(Oracle(tiny_model), x, y)
    with pytest.raises(InputError, match="scores"):
        attack(Oracle(tiny_model, output="labels", budget=10), x, y)
    with pytest.raises(InputError, match="per image"):
        attack(oracle, x[:, :, :20], y)
    assert int(oracle.counts.sum()) == 0


def test_adaptive_mu_scales_with_nu():
    attack = make_attack("nes", eps=0.1, mu=0.01, mu_nu_ratio=2.0)
    assert attack.effective_mu(0.0) == 0.01
    assert attack.effective_mu(0.02) == pytest.approx(0.04)


def test_attack_does_not_touch_global_rng(tiny_model, attack_batch):
    x, y = attack_batch
    torch.manual_seed(1)
    expected = torch.rand(3)
    torch.manual_seed(1)
    Square(eps=0.1, seed=0)(Oracle(tiny_model, budget=20), x[:4], y[:4])
    assert torch.equal(torch.rand(3), expected)


def _bisection_projection(x, x0, eps):
    """Reference KKT point of the l_2 ball-and-box projection, z = clip(x0 + t (x - x0)), by bisection."""
    shape = (-1,) + (1,) * (x.dim() - 1)
    lo, hi = torch.zeros(x.shape[0]).view(shape), torch.ones(x.shape[0]).view(shape)
    for _ in range(60):
        t = (lo + hi) / 2
        n = ((x0 + t * (x - x0)).clamp(0, 1) - x0).flatten(1).norm(dim=1).view(shape)
        lo, hi = torch.where(n <= eps, t, lo), torch.where(n <= eps, hi, t)
    return (x0 + lo * (x - x0)).clamp(0, 1)


def test_l2_projection_is_the_euclidean_projection_onto_ball_and_box():
    g = torch.Generator().manual_seed(0)
    # half the pixels at 0, as on Fashion-MNIST backgrounds, so the box cuts deep
    x0 = torch.rand(20, 1, 28, 28, generator=g) * (torch.rand(20, 1, 28, 28, generator=g) > 0.5)
    attack = make_attack("nes", eps=1.5, norm="l2", seed=0)
    far = x0 + 0.2 * torch.randn(20, 1, 28, 28, generator=g)
    z = attack.project(far, x0)
    assert torch.allclose(z, _bisection_projection(far, x0, 1.5), atol=1e-5)
    assert torch.allclose((z - x0).flatten(1).norm(dim=1), torch.full((20,), 1.5), atol=1e-4)
    # no other point of the feasible set is closer: compare with the naive scale-then-clip point
    naive = (x0 + (far - x0) * (1.5 / (far - x0).flatten(1).norm(dim=1)).view(-1, 1, 1, 1)).clamp(0, 1)
    assert bool(((z - far).flatten(1).norm(dim=1) <= (naive - far).flatten(1).norm(dim=1) + 1e-6).all())
    near = x0 + 0.01 * torch.randn(20, 1, 28, 28, generator=g)
    assert torch.equal(attack.project(near, x0), near.clamp(0, 1))  # inside the ball: just the box


def test_box_fill_reaches_the_norm_inside_the_box():
    from rnd.attacks.base import box_fill

    g = torch.Generator().manual_seed(1)
    x0 = torch.rand(10, 1, 28, 28, generator=g) * (torch.rand(10, 1, 28, 28, generator=g) > 0.5)
    delta = torch.randn(10, 1, 28, 28, generator=g)
    out = box_fill(x0, delta, 2.0)
    assert torch.allclose(out.flatten(1).norm(dim=1), torch.full((10,), 2.0), atol=1e-4)
    assert float((x0 + out).min()) >= -1e-6 and float((x0 + out).max()) <= 1 + 1e-6
    assert bool((out * delta >= 0).all())  # never against the direction asked for
    # a norm larger than the whole box allows: every pixel goes to its box face
    full = box_fill(x0, delta, 1e6)
    assert torch.allclose(x0 + full, torch.where(delta > 0, 1.0, 0.0).expand_as(x0), atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_non_float32_images_rejected_like_the_oracle(tiny_model, attack_batch, dtype):
    """Attacks apply the oracle's rule (float32 only), not a silent conversion; nothing is queried."""
    x, y = attack_batch
    oracle = Oracle(tiny_model, budget=50)
    with pytest.raises(InputError, match=rf"float32.*{dtype}.*x\.float\(\)"):
        Square(eps=0.1, seed=0)(oracle, x.to(dtype), y)
    assert oracle.counts.numel() == 0  # no ids allocated, no queries


def test_l2_projection_when_x_is_outside_the_ball_but_its_clip_is_inside():
    """x far outside the ball only along coordinates the box cuts away: the projection is clip(x)
    itself (t = 1 in the KKT form), not a point rescaled to norm eps."""
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(8, 1, 28, 28, generator=g) * (torch.rand(8, 1, 28, 28, generator=g) > 0.5)
    background = x0 == 0
    # 3 per background pixel straight out of the box, plus a small move inside it elsewhere
    x = x0 + torch.where(background, -3.0, 0.02 * torch.randn(8, 1, 28, 28, generator=g))
    attack = make_attack("nes", eps=1.5, norm="l2", seed=0)
    assert bool(((x - x0).flatten(1).norm(dim=1) > 30).all())
    assert bool(((x.clamp(0, 1) - x0).flatten(1).norm(dim=1) < 1.0).all())
    z = attack.project(x, x0)
    assert torch.allclose(z, x.clamp(0, 1), atol=1e-6)
    assert torch.allclose(z, _bisection_projection(x, x0, 1.5), atol=1e-5)
    # optimality against the whole feasible set: <x - z, w - z> <= 0 for feasible w (sampled)
    for _ in range(20):
        w = x0 + torch.randn(8, 1, 28, 28, generator=g)
        w = _bisection_projection(w, x0, 1.5)  # a feasible point: in the box and the ball
        assert float(((x - z).flatten(1) * (w - z).flatten(1)).sum(1).max()) <= 1e-5


@pytest.mark.parametrize("name", sorted(QUERY_ATTACKS))  # transfer attacks: test_transfer.py
@pytest.mark.parametrize(
    "kwargs, msg",
    [
        ({"eps": "0.1"}, "eps must be a number, got str"),
        ({"eps": True}, "eps must be a number, got bool"),
        ({"mu": "0.01"}, "mu must be a number, got str"),
        ({"mu": True}, "mu must be a number, got bool"),
        ({"eot": "2"}, "eot must be an integer, got str"),
        ({"eot": True}, "eot must be an integer, got bool"),
        ({"mu_nu_ratio": "2"}, "mu_nu_ratio must be a number"),
        ({"targeted": "no"}, "targeted must be True or False"),
        ({"seed": "3"}, "seed must be an integer"),
    ],
)
def test_strings_and_booleans_are_refused(name, kwargs, msg):
    with pytest.raises(InputError, match=msg):
        make_attack(name, **{"eps": 0.1, **kwargs})


def oracle_for(attack, model, **kwargs):
    """An oracle answering what `attack` works from: scores, or labels for a label-only attack."""
    return Oracle(model, output="labels" if attack.feedback == "labels" else "probs", **kwargs)


def _norms():
    return [(name, norm) for name in sorted(QUERY_ATTACKS) for norm in QUERY_ATTACKS[name].norms]


@pytest.mark.parametrize(("name", "norm"), _norms())
def test_no_attack_touches_the_global_rng(tiny_model, attack_batch, name, norm):
    """Every registered attack, in every norm, seeded or not (OS entropy), against RND: the global
    torch RNG state is the same before and after."""
    x, y = attack_batch
    for seed in (0, None):
        attack = make_attack(name, eps=0.1 if norm == "linf" else 1.0, norm=norm, seed=seed)
        oracle = oracle_for(
            attack, RandomNoiseDefense(tiny_model, nu=0.02, seed=0), budget=3 * attack.step_cost + 1
        )
        torch.manual_seed(1)
        state = torch.get_rng_state()
        attack(oracle, x[:3], y[:3])
        assert torch.equal(torch.get_rng_state(), state), (name, norm, seed)
        assert int(oracle.counts.sum()) > 3  # the attack took steps, not only the first query


@pytest.mark.parametrize("name", sorted(QUERY_ATTACKS))  # transfer attacks: test_transfer.py
@pytest.mark.parametrize(("mu", "ratio", "nu"), [(0.01, 2.0, 0.03), (0.05, 2.0, 0.01), (0.01, None, 0.03)])
def test_adaptive_attacker_uses_max_mu_ratio_nu_of_what_it_is_told(
    tiny_model, attack_batch, name, mu, ratio, nu
):
    """mu_used = max(mu, ratio * nu), nu from what the attacker is told (`assume`, a defense's
    public parameters); without a ratio, mu; told nothing, mu, even against an RND oracle (the
    attacker never reads the defense off the model)."""
    x, y = attack_batch
    defense = RandomNoiseDefense(tiny_model, nu=nu, seed=0)
    attack = make_attack(name, eps=0.1, mu=mu, mu_nu_ratio=ratio, assume=defense.public_params(), seed=0)
    budget = attack.step_cost + 1
    defended = attack(oracle_for(attack, defense, budget=budget), x[:2], y[:2])
    expected = mu if ratio is None else max(mu, ratio * nu)
    assert defended.params["mu_used"] == pytest.approx(expected)
    assert defended.params["assume"]["nu"] == nu
    untold = make_attack(name, eps=0.1, mu=mu, mu_nu_ratio=ratio, seed=0)
    plain = untold(oracle_for(untold, defense, budget=budget), x[:2], y[:2])
    assert plain.params["mu_used"] == pytest.approx(mu)


@pytest.mark.parametrize(("name", "norm"), _norms())
@pytest.mark.parametrize("eot", [1, 3])
def test_smallest_budget_runs_and_one_less_is_refused_clearly(tiny_model, attack_batch, name, norm, eot):
    """An attack runs to the end under `min_budget` (its start, or one step) without ever asking for
    a query over budget, and one query less is refused before any query with what it needs."""
    x, y = attack_batch
    attack = make_attack(name, eps=0.1 if norm == "linf" else 1.0, norm=norm, eot=eot, seed=0)
    assert attack.min_budget >= attack.init_cost >= eot and attack.min_budget >= attack.step_cost
    oracle = oracle_for(attack, tiny_model, budget=attack.min_budget)
    result = attack(oracle, x[:4], y[:4])
    assert int(result.queries.max()) <= attack.min_budget
    short = oracle_for(attack, tiny_model, budget=attack.min_budget - 1)
    with pytest.raises(InputError, match=rf"{name} needs {attack.min_budget} queries .*raise the budget"):
        attack(short, x[:4], y[:4])
    assert int(short.counts.sum()) == 0


def test_score_evaluate_reads_each_rows_own_image_when_rows_repeat(tiny_model, attack_batch):
    """Rows of a score attack's query may repeat an image (several candidates each); as many rows
    as images must still mean each row's own label and id, not the batch in order."""
    from rnd.attacks.score import ScoreState

    x, y = attack_batch
    two = torch.tensor([0, 1])
    if int(y[0]) == int(y[1]):
        two = torch.tensor([0, int((y != y[0]).nonzero()[0])])
    x, y = x[two], y[two]
    oracle = Oracle(tiny_model, budget=10)
    attack = Square(eps=0.1)
    attack.oracle = oracle
    state = ScoreState(x.clone(), y, None, oracle.new_ids(2))
    rows = torch.tensor([0, 0])  # two candidates of image 0, none of image 1: as many rows as images
    loss, _ = attack.evaluate(state, x[rows], rows)
    expected, _ = attack.evaluate(state, x[:1], torch.tensor([0]))
    assert torch.allclose(loss, expected.expand(2), atol=1e-5)  # a batch of 2 rounds differently
    assert oracle.counts.tolist() == [3, 0]  # every query charged to image 0


@pytest.mark.parametrize("name", ["square", "hsja"])
def test_results_and_the_oracle_outlive_the_attacks_inference_mode(tiny_model, attack_batch, name):
    """Attacks run under torch.inference_mode(); what they leave behind must not be inference
    tensors: the results train with autograd, and the oracle's counts take later queries."""
    x, y = attack_batch[0][:4], attack_batch[1][:4]
    labels = name == "hsja"
    oracle = Oracle(tiny_model, budget=60, output="labels" if labels else "probs")
    result = make_attack(name, eps=0.1, seed=0)(oracle, x, y)
    tensors = {k: v for k, v in vars(result).items() if isinstance(v, torch.Tensor)}
    assert tensors and not any(v.is_inference() for v in tensors.values())
    xa = result.x_adv.requires_grad_()
    torch.nn.functional.cross_entropy(tiny_model(xa), y).backward()
    assert xa.grad is not None
    before = int(oracle.counts.sum())
    oracle.budget = 1000  # more queries for the attacked images, outside inference mode
    oracle.query(x[:2], torch.tensor([0, 1]))
    assert int(oracle.counts.sum()) == before + 2
    result.success[0] = ~result.success[0]  # in place, outside inference mode
