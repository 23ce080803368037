"""RemoteOracle's EOT answers by value, over real loopback HTTP: with M answers per query, a scores
answer is the mean of the M answers and a labels answer their vote (ties to the smallest class,
refused repeats left out), at a cost of M queries per image. The served models here answer a known,
different row on every forward (or a seeded RND whose single answers a second server reproduces),
so the M answers behind every EOT answer are known."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from rnd.defenses import build_defense
from rnd.models import build_model
from rnd.oracle import REFUSED, Oracle, RemoteOracle
from rnd.serving.app import create_app
from tests.serving.test_server import NAME, SHAPE, FakeKeys, Served, images, serve

CLASSES = 10
NAN_ROW = torch.full((CLASSES,), float("nan"))


class Scripted(nn.Module):
    """Answers the j-th row it ever forwards with the logits `script[j]`, whatever the input: a
    deterministic model that answers differently on every call. Keeps every input row it saw."""

    input_shape = SHAPE
    num_classes = CLASSES

    def __init__(self, script: torch.Tensor) -> None:
        super().__init__()
        self.script = script
        self.used = 0
        self.seen: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        assert self.used + n <= self.script.shape[0], "the script ran out of answers"
        self.seen.append(x.clone())
        out = self.script[self.used : self.used + n].clone()
        self.used += n
        return out


def serve_scripted(script: torch.Tensor, **kw: Any) -> tuple[Served, Scripted]:
    scripted = Scripted(script)
    return Served(create_app(scripted, scripted, name=NAME, **kw)), scripted


def label_logits(labels: list[list[int]]) -> torch.Tensor:
    """Logits whose argmax row by row is `labels` (flattened, one row per answer); REFUSED gives an
    all-NaN row (a refusal)."""
    rows = []
    for label in (v for group in labels for v in group):
        row = NAN_ROW.clone() if label == REFUSED else torch.zeros(CLASSES)
        if label != REFUSED:
            row[label] = 5.0
            row[(label + 1) % CLASSES] = 1.0  # a runner-up, so the scores are not one-hot
        rows.append(row)
    return torch.stack(rows)


@pytest.fixture(scope="module")
def small_cnn() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build_model("small-cnn", width=4, hidden=16).eval()


@pytest.mark.parametrize("max_request", [1024, 3])
def test_eot_scores_are_the_mean_of_the_m_answers(max_request: int) -> None:
    """Each row is the mean of its own image's M probabilities (not the first, the last, or another
    image's), differs from every single answer, and costs M queries: in the oracle's counts and in
    the server's charge. max_request=3 splits one image's M answers across two requests."""
    n, m = 2, 4
    script = 3 * torch.randn(n * m, CLASSES, generator=torch.Generator().manual_seed(1))
    singles = script.softmax(1).view(n, m, CLASSES)  # what the server answers, row by row
    want = singles.mean(1)
    keys = FakeKeys(budget=100)
    served, scripted = serve_scripted(script, keys=keys)
    x = torch.from_numpy(images(n, seed=3))
    with served as s, RemoteOracle(s.url, NAME, "secret", budget=m, max_request=max_request) as oracle:
        ids = oracle.new_ids(n)
        p = oracle.query(x, ids, eot=m)
        assert oracle.requests == -(-n * m // min(max_request, n * m))
        assert s.metric("rnd_images_total") == n * m
    assert p.shape == (n, CLASSES) and p.dtype == torch.float32
    assert torch.allclose(p, want, atol=1e-6, rtol=0), f"EOT scores {p} are not the mean {want}"
    for i in range(n):
        for j in range(m):
            gap = float((p[i] - singles[i, j]).abs().max())
            assert gap > 1e-3, f"image {i}: the EOT answer is its single answer {j} (gap {gap})"
    assert scripted.used == n * m
    sent = torch.cat(scripted.seen)
    assert torch.equal(sent, x.repeat_interleave(m, dim=0)), "the server was not sent M copies per image"
    assert oracle.counts_of(ids).tolist() == [m] * n  # the cost: M per image
    assert keys.left["k1"] == 100 - n * m


def test_eot_labels_are_the_majority_vote() -> None:
    """Each label is the most frequent of its image's M labels, which is neither the first nor the
    last answer nor the rounded mean label; a tie goes to the smallest class (as `Oracle.query`);
    the cost is M per image."""
    votes = [
        [2, 7, 7, 7, 3],  # majority 7; first 2, last 3, rounded mean 5
        [0, 6, 3, 6, 2],  # plurality 6 (two of five); first 0, last 2
        [9, 1, 1, 1, 8],  # majority 1; first 9, last 8
        [8, 3, 3, 8, 5],  # tie of 3 and 8: the smaller, 3; first and last 8 and 5
    ]
    want = [7, 6, 1, 3]
    n, m = len(votes), len(votes[0])
    for group, label in zip(votes, want, strict=True):
        assert label not in (group[0], group[-1])
    keys = FakeKeys(budget=100)
    served, scripted = serve_scripted(label_logits(votes), output="labels", keys=keys)
    x = torch.from_numpy(images(n, seed=4))
    with served as s, RemoteOracle(s.url, NAME, "secret", budget=2 * m) as oracle:
        assert oracle.output == "labels"
        ids = oracle.new_ids(n)
        labels = oracle.query(x, ids, eot=m)
        assert s.metric("rnd_images_total") == n * m
    assert labels.dtype == torch.int64 and labels.shape == (n,)
    assert labels.tolist() == want, f"EOT labels {labels.tolist()} are not the vote {want}"
    assert scripted.used == n * m
    assert oracle.counts_of(ids).tolist() == [m] * n
    assert keys.left["k1"] == 100 - n * m
    assert oracle.refusals.tolist() == [0] * n


@pytest.mark.parametrize("output", ["probs", "labels"])
def test_eot_leaves_refused_repeats_out_as_the_local_oracle_does(output: str) -> None:
    """A refused repeat (NaN scores / REFUSED) is left out of the mean or vote; a row all of whose M
    answers are refused is refused (and recorded). The same script behind the local Oracle gives
    the same answers."""
    r = REFUSED
    votes = [
        [r, r, r, 6, 6],  # REFUSED is the most frequent answer, yet the vote is 6 (not class 0)
        [4, r, 2, 2, r],  # 2
        [r, r, r, r, r],  # all refused
        [5, 5, 1, 1, 1],  # 1, nothing refused
    ]
    n, m = len(votes), len(votes[0])
    script = label_logits(votes)
    served, _ = serve_scripted(script, output=output)
    x = torch.from_numpy(images(n, seed=5))
    local = Oracle(Scripted(script), output=output, budget=m)  # type: ignore[arg-type]
    with served as s, RemoteOracle(s.url, NAME, budget=m) as remote:
        far = remote.query(x, remote.new_ids(n), eot=m)
    near = local.query(x, local.new_ids(n), eot=m)
    assert remote.refusals.tolist() == local.refusals.tolist() == [0, 0, 1, 0]
    assert remote.first_refusal.tolist() == local.first_refusal.tolist() == [-1, -1, m, -1]
    assert remote.counts.tolist() == local.counts.tolist() == [m] * n
    if output == "labels":
        assert far.tolist() == near.tolist() == [6, 2, REFUSED, 1]
        return
    rows = script.softmax(1).view(n, m, CLASSES)
    want = torch.stack([rows[i][rows[i].isfinite().all(1)].mean(0) for i in (0, 1, 3)])
    assert far[2].isnan().all() and near[2].isnan().all()
    assert torch.allclose(far[[0, 1, 3]], want, atol=1e-6, rtol=0), (
        f"{far} is not the mean of the answered {want}"
    )
    assert torch.allclose(far[[0, 1, 3]], near[[0, 1, 3]], atol=1e-6, rtol=0), f"remote {far} != local {near}"


def test_eot_on_seeded_rnd_is_the_mean_of_the_same_servers_single_answers(small_cnn: nn.Module) -> None:
    """RND served with seed 0: the EOT answer of one server is the mean of the M single answers
    (eot=1) that a second server with the same seed gives to the M copies, differs from each of
    them, and equals the local Oracle's EOT answer on the same seeded defense."""
    spec, n, m = "rnd:nu=0.1", 3, 5
    x = torch.from_numpy(images(n, seed=6))
    with serve(small_cnn, spec) as s, RemoteOracle(s.url, NAME, budget=m) as oracle:
        ids = oracle.new_ids(n)
        p = oracle.query(x, ids, eot=m)
        assert oracle.counts_of(ids).tolist() == [m] * n and s.metric("rnd_images_total") == n * m
    with serve(small_cnn, spec) as s, RemoteOracle(s.url, NAME) as twin:
        singles = twin.query(x.repeat_interleave(m, dim=0), twin.new_ids(n * m), eot=1).view(n, m, -1)
    local = Oracle(build_defense(spec, small_cnn, seed=0), eot=m)
    near = local.query(x, local.new_ids(n))
    want = singles.mean(1)
    assert torch.allclose(p, want, atol=1e-6, rtol=0), f"EOT scores {p} are not the mean {want}"
    assert torch.allclose(p, near, atol=1e-6, rtol=0), f"remote {p} != local {near}"
    gaps = (p[:, None, :] - singles).abs().amax(2)
    assert bool((gaps > 1e-4).all()), f"an EOT answer is one of its single answers: gaps {gaps}"
