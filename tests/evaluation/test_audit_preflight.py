"""The audit's preflight (`rnd.audit.preflight`): what a target answers, whether it is random,
stateful, quantising or rate limited, found by asking it, with every query counted; locally for
each kind of defense, and over real loopback HTTP against four `rnd serve` endpoints (undefended
labels, RND probabilities, Blacklight, AAA) and a rate-limited key. The suite follows what it
finds, and `--assume-defense` overrides it."""

from __future__ import annotations

import pytest
import torch

from rnd.audit.preflight import Fingerprint, output_kind, preflight
from rnd.audit.suite import COUNTERS, endpoint_traits, suite
from rnd.defenses import build_defense
from rnd.errors import InputError
from rnd.oracle import Oracle
from rnd.serving.app import create_app
from rnd.serving.keys import SQLiteKeyStore
from tests.serving.test_server import Served

#: (defense, output) -> (output, randomised, stateful, quantises) the preflight must report.
EXPECTED = {
    ("none", "labels"): ("labels", False, False, False),
    ("none", "probs"): ("probs", False, False, False),
    ("none", "logits"): ("logits", False, False, False),
    ("rnd:nu=0.02", "probs"): ("probs", True, False, None),
    ("rnd:nu=0.05", "labels"): ("labels", True, False, None),
    ("blacklight", "probs"): ("probs", None, True, None),
    # AAA with 10 of its 100 Adam steps: the same answers' kind, ten times faster
    ("aaa:iterations=10", "probs"): ("probs", False, False, True),
    ("aaa:iterations=10", "labels"): ("labels", False, False, True),
}


@pytest.fixture(scope="module")
def probe_images(fmnist_test):
    return fmnist_test.get(torch.arange(10))[0]


def found(fp: Fingerprint) -> tuple:
    return fp.output, fp.randomised, fp.stateful, fp.quantises


@pytest.mark.parametrize(("defense", "output"), list(EXPECTED))
def test_the_preflight_tells_each_local_defense(tiny_model, probe_images, defense, output):
    oracle = Oracle(build_defense(defense, tiny_model, seed=0), output=output)
    fp = preflight(oracle, probe_images, remote=False)
    assert found(fp) == EXPECTED[(defense, output)], fp.line()
    assert fp.queries == int(oracle.counts_of(torch.arange(oracle.counts.numel())).sum()) > 0
    assert fp.rate_limited is None and fp.declared == output
    assert (fp.first_refusal is not None) == bool(fp.stateful)
    assert fp.line().startswith(f"preflight ({fp.queries} queries): answers {EXPECTED[(defense, output)][0]}")
    again = preflight(
        Oracle(build_defense(defense, tiny_model, seed=0), output=output), probe_images, remote=False
    )
    assert again == fp  # seeded: a resumed audit finds the same


def test_output_kinds_from_the_answers():
    p = torch.tensor([[0.7, 0.2, 0.1, 0.0], [0.1, 0.1, 0.8, 0.0]])
    assert output_kind(p) == "probs"
    assert output_kind(torch.tensor([[2.0, -1.0, 0.5, 3.0]])) == "logits"
    assert output_kind(torch.tensor([[0.7, 0.0, 0.0, 0.0], [0.0, 0.0, 0.9, 0.0]])) == "topk"
    assert output_kind(torch.tensor([[0.7, float("nan"), float("nan"), 0.2]])) == "topk"
    assert output_kind(torch.tensor([3, 1])) == "labels"
    assert output_kind(torch.full((2, 4), float("nan"))) == "unknown"  # every row refused


def test_one_image_or_raw_bytes_are_refused(tiny_model, probe_images, fmnist_test):
    with pytest.raises(InputError, match="two images"):
        preflight(Oracle(tiny_model), probe_images[:1], remote=False)
    with pytest.raises(InputError, match=r"pixels in \[0, 1\]"):
        preflight(Oracle(tiny_model), fmnist_test.images[:10], remote=False)  # uint8, not pixels


ENDPOINTS = {  # name: (defense, served output)
    "plain": ("none", "labels"),
    "rnd": ("rnd:nu=0.02", "probs"),
    "blacklight": ("blacklight", "probs"),
    "aaa": ("aaa:iterations=10", "probs"),
}


def test_the_preflight_tells_four_served_endpoints_over_http(tiny_model, probe_images, tmp_path):
    from rnd.oracle.remote import RemoteOracle

    for name, (defense, output) in ENDPOINTS.items():
        store = SQLiteKeyStore(tmp_path / f"{name}.sqlite")
        key = store.add("auditor", budget=10_000)
        app = create_app(
            tiny_model, build_defense(defense, tiny_model, seed=0), name=name, output=output, keys=store
        )
        with Served(app) as served, RemoteOracle(served.url, name, key) as oracle:
            fp = preflight(oracle, probe_images, remote=True)
        want = EXPECTED[(defense, output)]
        assert found(fp) == want, (name, fp.line())
        assert fp.rate_limited is False and fp.retry_after is None
        assert store.list()[0]["used"] == fp.queries  # every probe query charged, and counted
        store.close()


def test_a_rate_limited_key_is_found(tiny_model, probe_images, tmp_path):
    from rnd.oracle.remote import RemoteOracle

    store = SQLiteKeyStore(tmp_path / "keys.sqlite")
    key = store.add("auditor", budget=10_000, rate=40.0)
    app = create_app(tiny_model, build_defense("none", tiny_model), name="m", keys=store)
    with Served(app) as served, RemoteOracle(served.url, "m", key) as oracle:
        fp = preflight(oracle, probe_images, remote=True)
    assert fp.rate_limited is True and fp.retry_after is not None and fp.retry_after > 0
    assert "rate limited" in fp.line() and any("rate limit" in n for n in fp.notes)
    assert store.list()[0]["used"] == fp.queries
    store.close()


def test_an_endpoint_s_suite_follows_the_fingerprint_unless_told():
    def fp(randomised: bool | None, stateful: bool) -> dict:
        return {"randomised": randomised, "stateful": stateful}

    def labels_of(traits: dict | None) -> set[str]:
        return {
            f"{a['name']} M={a['eot']} {sorted(a['params'].items())}"
            for a in suite("scores", "remote", traits=traits)
        }

    unknown = labels_of(None)  # not probed: taken as random
    deterministic = labels_of(endpoint_traits(None, fp(False, False)))
    random = labels_of(endpoint_traits(None, fp(True, False)))
    assert random == unknown == labels_of(endpoint_traits(None, fp(None, False)))
    assert deterministic < random and not any(" M=5 " in a or "mu_nu_ratio" in a for a in deterministic)
    stateful = labels_of(endpoint_traits(None, fp(False, True)))
    counters = {f"{a} M=1 {sorted(p.items())}" for a, n, p in COUNTERS["blacklight"] if a != "hsja-oars"}
    assert counters <= stateful and not counters & deterministic
    # --assume-defense overrides: what the attackers are told decides
    told = endpoint_traits("aaa", fp(True, True))
    assert told == {"randomised": False, "counters": "aaa", "from": "assume"}
    assert any(a.startswith("square-adaptive") for a in labels_of(told))
    assert endpoint_traits("rnd:nu=0.02", None)["randomised"] is True
    assert endpoint_traits(None, None) is None


def test_the_probes_never_touch_the_images_an_audit_attacks(fmnist_test):
    """The preflight asks about the last test images; the audit attacks from the first: a stateful
    endpoint's memory of the probes cannot refuse an attack's first queries."""
    from rnd.audit.plan import PROBE_IMAGES, _probe_images

    probes = _probe_images(fmnist_test)
    n = len(fmnist_test)
    assert len(probes) == PROBE_IMAGES and torch.equal(
        probes, fmnist_test.get(torch.arange(n - PROBE_IMAGES, n))[0]
    )
    assert probes.dtype == torch.float32 and float(probes.min()) >= 0 and float(probes.max()) <= 1
    first = fmnist_test.get(torch.arange(2000))[0]  # far more than any audit attacks from start 0
    assert not any(bool((first == p).flatten(1).all(1).any()) for p in probes)
