import pytest
import torch
from torch import nn

from rnd import RandomNoiseDefense
from rnd.errors import InputError


class Identity(nn.Module):
    def forward(self, x):
        return x


def test_nu_zero_is_identity():
    x = torch.rand(4, 1, 8, 8)
    assert torch.equal(RandomNoiseDefense(Identity(), nu=0.0)(x), x)


def test_fresh_noise_on_repeated_identical_queries():
    d = RandomNoiseDefense(Identity(), nu=0.05)
    x = torch.full((3, 1, 8, 8), 0.5)
    a, b = d(x), d(x)
    assert not torch.equal(a, b)
    # and different images of one batch get different noise
    assert not torch.equal(a[0], a[1])


def test_noise_statistics_and_clip():
    d = RandomNoiseDefense(Identity(), nu=0.1, seed=3)
    x = torch.full((200, 1, 16, 16), 0.5)
    noise = d(x) - x
    assert abs(float(noise.mean())) < 0.005
    assert abs(float(noise.std()) - 0.1) < 0.005
    out = RandomNoiseDefense(Identity(), nu=1.0, seed=3)(torch.zeros(10, 1, 8, 8))
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0


def test_random_under_global_reseed():
    d = RandomNoiseDefense(Identity(), nu=0.05)
    x = torch.full((2, 1, 8, 8), 0.5)
    torch.manual_seed(0)
    a = d(x)
    torch.manual_seed(0)
    b = d(x)
    assert not torch.equal(a, b)


def test_does_not_touch_global_rng():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    RandomNoiseDefense(Identity(), nu=0.05)(
        torch.rand(2, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    )
    assert torch.equal(torch.rand(3), expected)


def test_reproducible_with_seed_or_generator():
    x = torch.full((2, 1, 8, 8), 0.5)
    a = RandomNoiseDefense(Identity(), nu=0.05, seed=7)(x)
    b = RandomNoiseDefense(Identity(), nu=0.05, seed=7)(x)
    assert torch.equal(a, b)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    assert torch.equal(
        RandomNoiseDefense(Identity(), nu=0.05, generator=g1)(x),
        RandomNoiseDefense(Identity(), nu=0.05, generator=g2)(x),
    )


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16, torch.float16])
def test_dtypes(dtype):
    x = torch.full((2, 1, 4, 4), 0.5, dtype=dtype)
    out = RandomNoiseDefense(Identity(), nu=0.05, seed=1)(x)
    assert out.dtype == dtype and not torch.equal(out, x)


def test_is_module_and_wraps_parameters(tiny_model):
    d = RandomNoiseDefense(tiny_model, nu=0.02)
    assert isinstance(d, nn.Module)
    assert len(list(d.parameters())) == len(list(tiny_model.parameters()))
    assert d(torch.rand(3, 1, 28, 28)).shape == (3, 10)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_reproducible():
    x = torch.full((2, 1, 8, 8), 0.5, device="cuda")
    a = RandomNoiseDefense(Identity(), nu=0.05, seed=7)(x)
    b = RandomNoiseDefense(Identity(), nu=0.05, seed=7)(x)
    assert a.device.type == "cuda" and torch.equal(a, b)


@pytest.mark.parametrize("nu", [-0.1, float("nan"), float("inf"), "a"])
def test_bad_nu(nu):
    with pytest.raises(InputError, match="nu"):
        RandomNoiseDefense(Identity(), nu=nu)


def test_bad_clip_and_both_seed_and_generator():
    with pytest.raises(InputError):
        RandomNoiseDefense(Identity(), nu=0.1, clip=(1.0, 0.0))
    with pytest.raises(InputError):
        RandomNoiseDefense(Identity(), nu=0.1, seed=1, generator=torch.Generator())


def test_unseeded_defenses_draw_different_noise_even_after_the_same_global_seed():
    """Default seeding is OS entropy: two defenses built without a seed (even right after the same
    torch.manual_seed) give different noise, and building and using them leaves the global RNG alone."""
    x = torch.full((2, 1, 8, 8), 0.5)
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    a = RandomNoiseDefense(Identity(), nu=0.05)
    b = RandomNoiseDefense(Identity(), nu=0.05)
    na, nb = a(x) - x, b(x) - x
    assert torch.equal(torch.rand(3), expected)  # global RNG untouched by construction and calls
    assert not torch.equal(na, nb)
    assert float((na - nb).abs().mean()) > 0.01  # independent draws, not a shifted copy
    assert a.generator.initial_seed() != b.generator.initial_seed()


@pytest.mark.parametrize("seed", [0, 7, 2**62])
def test_seeded_noise_is_the_documented_generator_stream(seed):
    """seed=s means noise = nu * randn from torch.Generator().manual_seed(s), call after call (seed=0
    included: it is a seed, not 'no seed')."""
    x = torch.full((3, 1, 8, 8), 0.5)
    d = RandomNoiseDefense(Identity(), nu=0.05, seed=seed)
    g = torch.Generator().manual_seed(seed)
    for _ in range(2):
        expected = (0.5 + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
        assert torch.equal(d(x), expected)


@pytest.mark.parametrize("nu", ["0.1", True, False, b"0.1"])
def test_nu_as_string_or_boolean_is_refused(nu):
    with pytest.raises(InputError, match=r"nu must be a number, got (str|bool|bytes)"):
        RandomNoiseDefense(Identity(), nu=nu)


@pytest.mark.parametrize(
    "kwargs, msg",
    [({"seed": "7"}, "seed must be an integer"), ({"seed": 7.5}, "seed"), ({"clip": ("0", 1)}, "clip low")],
)
def test_bad_seed_and_clip_types(kwargs, msg):
    with pytest.raises(InputError, match=msg):
        RandomNoiseDefense(Identity(), nu=0.1, **kwargs)


@pytest.mark.parametrize("nu", [0.0, 0.05])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_input_is_refused_not_clipped(nu, bad):
    """clip(NaN + noise) stays NaN and clip(inf) becomes a valid pixel: both would be garbage."""
    x = torch.rand(3, 1, 4, 4)
    x[1, 0, 2, 2] = bad
    defense = RandomNoiseDefense(Identity(), nu=nu, seed=0)
    with pytest.raises(InputError, match="NaN or infinite"):
        defense(x)
    with pytest.raises(InputError, match="NaN or infinite"):
        defense.perturb(x)


def test_huge_finite_input_is_not_mistaken_for_infinite():
    """check_finite's fast path (a finite sum) falls back to a value-by-value check when the sum
    overflows: finite values are accepted, an inf among them still refused."""
    x = torch.full((2, 1, 4, 4), 3e38)
    assert bool(torch.isinf(x.sum()))
    out = RandomNoiseDefense(Identity(), nu=0.05, seed=0)(x)
    assert float(out.max()) <= 1.0
    x[0, 0, 0, 0] = float("inf")
    with pytest.raises(InputError, match="NaN or infinite"):
        RandomNoiseDefense(Identity(), nu=0.05, seed=0)(x)
