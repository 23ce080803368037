import hashlib
from collections import Counter

import numpy as np
import pytest
import torch

from rnd.data.synthetic import make_synthetic
from rnd.defenses import DEFENSES, build_defense
from rnd.defenses.stateful import Blacklight
from rnd.errors import InputError
from rnd.models import build_model
from rnd.oracle import REFUSED, Oracle


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return build_model("small-cnn", (1, 28, 28), 10, width=4, hidden=16).eval()


@pytest.fixture(scope="module")
def images():
    x, _ = make_synthetic(64, seed=5).get(torch.arange(64))
    return x


def spec_flags(det: Blacklight, x: torch.Tensor) -> list[bool]:
    """The spec, one query at a time, with hashlib on hex digests (as the authors' code ranks them)."""
    salt = det.salt_for(tuple(x.shape[1:]))
    stored: dict[str, list[int]] = {}
    flags = []
    for i, xi in enumerate(x):
        v = np.mod(xi.double().flatten().numpy() * 255.0 + salt, 255.0)
        q = (np.around(v / det.step) * det.step).astype(np.int16)
        hexes = {
            hashlib.sha256(q[j : j + det.window].tobytes()).hexdigest()
            for j in range(q.size - det.window + 1)
        }
        kept = sorted((h[::-1] for h in hexes), reverse=True)[: det.top]
        counts = Counter(k for h in kept for k in stored.get(h, []))
        flags.append(bool(counts) and counts.most_common(1)[0][1] > det.threshold)
        for h in kept:
            stored.setdefault(h, []).append(i)
    return flags


def square_walk(x0: torch.Tensor, n: int, seed: int = 0) -> torch.Tensor:
    """A Square-like sequence: each query changes one 5 x 5 square of the previous one by +-0.1."""
    g = torch.Generator().manual_seed(seed)
    out, cur = [], x0.clone()
    for _ in range(n):
        r, c = torch.randint(0, 23, (2,), generator=g).tolist()
        cur = cur.clone()
        sign = torch.randint(0, 2, (1,), generator=g).item() * 2 - 1
        cur[:, r : r + 5, c : c + 5] = (x0[:, r : r + 5, c : c + 5] + 0.1 * sign).clamp(0, 1)
        out.append(cur)
    return torch.stack(out)


def test_matches_the_spec_query_by_query(model, images):
    g = torch.Generator().manual_seed(1)
    base = images[0]
    stream = [base + s * torch.randn(base.shape, generator=g) for s in (0, 0, 0.002, 0.005, 0.02, 0.1)]
    x = torch.cat([torch.stack(stream).clamp(0, 1), images[1:6], square_walk(images[7], 4)])
    expected = spec_flags(Blacklight(model, seed=3), x)
    assert any(expected) and not all(expected)
    batched = Blacklight(model, seed=3)
    batched(x)  # one batch: each row is checked against the rows before it
    assert batched.last_flagged.tolist() == expected
    one = Blacklight(model, seed=3, cache_size=0)
    assert [bool(one(xi[None]).isnan().all()) for xi in x] == expected


def test_long_posting_lists_take_the_exact_path_and_still_match_the_spec(model, images):
    # copies of one image with a few pixels changed each: every kept hash recurs in many stored
    # queries (lists longer than the first round looks at), some pairs over the threshold
    g = torch.Generator().manual_seed(2)
    base = images[0].clone()
    base[:, :14] = 0.0  # a black half, as Fashion-MNIST backgrounds are
    mask = torch.rand(40, 1, 28, 28, generator=g) < torch.linspace(0.005, 0.05, 40).view(-1, 1, 1, 1)
    x = torch.where(mask, torch.rand(40, 1, 28, 28, generator=g), base.expand(40, -1, -1, -1))
    expected = spec_flags(Blacklight(model, seed=3), x)
    assert 5 < sum(expected) < 35
    det = Blacklight(model, seed=3)
    for chunk in x.split(7):
        det(chunk)
    assert det.queries_flagged == sum(expected)
    assert max((hi - lo).max() for lo, hi in det._ranges(*_all_ranges(det, x[:1]))) > 4


def _all_ranges(det: Blacklight, x: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    prefix = det.keys(x) >> np.int64(23)
    return prefix << np.int64(23), (prefix + 1) << np.int64(23)


def test_a_repeated_query_is_flagged_and_fresh_images_are_not(model, images):
    det = Blacklight(model, seed=0)
    out = det(images[:32])
    assert not det.last_flagged.any() and torch.isfinite(out).all()
    det(images[:4])
    assert det.last_flagged.all()
    assert (det.queries_seen, det.queries_flagged, det.stored) == (36, 4, 36)


def test_a_square_like_walk_is_flagged_within_a_few_queries(model, images):
    det = Blacklight(model, seed=0)
    det(images[:1])
    for x in square_walk(images[0], 5):
        det(x[None])
    assert det.queries_flagged >= 4  # the first modification already shares most windows


def test_the_refused_row_is_nan_and_the_others_are_the_models_logits(model, images):
    det = Blacklight(model, seed=0)
    x = torch.stack([images[0], images[1], images[0], images[2]])
    with torch.no_grad():
        out, ref = det(x), model(x)
    assert det.last_flagged.tolist() == [False, False, True, False]
    assert torch.isnan(out[2]).all()
    assert torch.equal(out[[0, 1, 3]], ref[[0, 1, 3]])


def test_the_salt_changes_the_hashes_and_the_seed_fixes_it(model, images):
    k0 = Blacklight(model, seed=0).keys(images[:2])
    assert np.array_equal(k0, Blacklight(model, seed=0).keys(images[:2]))
    k1 = Blacklight(model, seed=1).keys(images[:2])
    assert len(set(k0[0]) & set(k1[0])) < 5
    a, b = Blacklight(model), Blacklight(model)  # OS entropy: two detectors, two salts
    assert not np.array_equal(a.keys(images[:1]), b.keys(images[:1]))


def test_reset_forgets_the_history(model, images):
    det = Blacklight(model, seed=0)
    det(images[:3])
    det.reset()
    det(images[:3])
    assert not det.last_flagged.any() and det.stored == 3 and det.history_bytes == 3 * 50 * 8


def test_through_the_oracle_refusals_cost_and_are_recorded(model, images):
    det = Blacklight(model, seed=0)
    o = Oracle(det, output="labels", budget=10)
    ids = o.new_ids(2)
    o.query(images[:2], ids)
    labels = o.query(torch.stack([images[0], images[3]]), ids)
    assert labels[0] == REFUSED and labels[1] != REFUSED
    assert o.counts_of(ids).tolist() == [2, 2]
    assert o.refusals.tolist() == [1, 0] and o.first_refusal.tolist() == [2, -1]


def test_registry_spec_and_secret_salt(model, images):
    assert DEFENSES["blacklight"] is Blacklight
    det = build_defense("blacklight:threshold=20", model, seed=4)
    assert det.stateful and not det.randomised
    assert det.public_params() == {"step": 50, "window": 20, "top": 50, "threshold": 20}
    assert np.array_equal(det.keys(images[:1]), Blacklight(model, threshold=20, seed=4).keys(images[:1]))


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"threshold": 50}, "below top"),
        ({"step": 0}, "step"),
        ({"step": 300}, "at most 255"),
        ({"window": 0}, "window"),
        ({"cache_size": 3}, "power of two"),
    ],
)
def test_bad_parameters_are_refused(model, kwargs, words):
    with pytest.raises(InputError, match=words):
        Blacklight(model, **kwargs)


def test_a_new_image_shape_is_refused(model, images):
    det = Blacklight(model, seed=0)
    det.keys(images[:1])
    with pytest.raises(InputError, match="shape"):
        det.keys(torch.rand(1, 3, 8, 8))
