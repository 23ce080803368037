"""Quotas count images, not requests (issue 15): over real loopback HTTP with the real KeyStore,
clients send requests of 3 and 5 images concurrently on a key of Q images. The existing load tests
send one-image requests, where a charge per request and a charge per image agree; here they do not.

The server's rule (`rnd.serving.app`, `KeyStore.charge`): a request of n images is charged n,
atomically, before it is answered; a request asking for more than what is left is refused whole
(429, nothing answered, nothing charged; no partial answer), with `Retry-After` and the unchanged
remainder in `X-Quota-Remaining`; an answered request's `X-Quota-Remaining` is what is left after its
own charge."""

from __future__ import annotations

import os
import signal
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest
import torch
from torch import nn

from rnd.defenses import build_defense
from rnd.models import build_model, save_checkpoint
from rnd.oip import QUOTA_RETRY_AFTER_S
from rnd.serving.app import create_app
from rnd.serving.keys import KeyStore, SQLiteKeyStore
from tests.serving.test_quota_http import start_server
from tests.serving.test_server import INFER, Served, binary_request, decode, images, json_body

SIZES = (3, 5)


@dataclass
class Answer:
    size: int  # images sent
    status: int
    remaining: int  # X-Quota-Remaining
    answered: int  # rows in the answer (0 when refused)


def post(http: httpx.Client, url: str, size: int, seed: int) -> Answer:
    content, headers = binary_request(images(size, seed))
    r = http.post(url, content=content, headers=headers)
    answered = 0
    if r.status_code == 200:
        out = decode(r)
        assert out.shape == (size, 10)
        answered = out.shape[0]
    elif r.status_code == 429:
        assert int(r.headers["retry-after"]) == QUOTA_RETRY_AFTER_S  # waiting will not lift a quota
        left = int(r.headers["x-quota-remaining"])
        # refused at the charge (the size is known), or, with nothing left, before the body is read
        wants = [f"quota exhausted: {size} images asked"]
        wants += [] if left else ["quota exhausted: 0 images left"]
        assert any(w in r.json()["error"] for w in wants), r.json()
    assert r.status_code in (200, 429), (r.status_code, r.text)
    return Answer(size, r.status_code, int(r.headers["x-quota-remaining"]), answered)


def load(client, clients: int, per_client: int) -> list[Answer]:
    """`clients` threads, each `client(c, sizes)` over its own alternation of 3- and 5-image
    requests (half start with 3, half with 5); every answer collected."""
    answers: list[Answer] = []
    errors: list[BaseException] = []
    lock = threading.Lock()

    def run(c: int) -> None:
        sizes = [SIZES[(c + i) % 2] for i in range(per_client)]
        try:
            got = client(c, sizes)
        except BaseException as exc:  # a failed check in a client fails the test, not just its thread
            with lock:
                errors.append(exc)
            return
        with lock:
            answers.extend(got)

    threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return answers


def check_per_image(answers: list[Answer], budget: int, used: int, left: int) -> int:
    """The quota of `budget` images was charged per image under the load `answers`; returns the
    images answered."""
    ok = [a for a in answers if a.status == 200]
    refused = [a for a in answers if a.status == 429]
    assert len(ok) + len(refused) == len(answers), sorted({a.status for a in answers})
    images_answered = sum(a.answered for a in ok)
    assert sum(a.size for a in ok) == images_answered
    # never more images than the quota, and the store charged exactly the images answered
    assert images_answered <= budget
    assert used == images_answered and left == budget - images_answered
    assert len(ok) < images_answered  # so per request would have said otherwise
    # the charges were serialised, one image at a time: ordered by what they left, each answered
    # request took exactly its own images off what the previous one left
    chain = sorted(ok, key=lambda a: -a.remaining)
    before = budget
    for a in chain:
        assert a.remaining == before - a.size, (before, a)
        before = a.remaining
    assert before == left
    # a refusal asked for more than what was left at that moment (one of the chain's figures)
    figures = {budget} | {a.remaining for a in ok}
    for a in refused:
        assert a.answered == 0 and a.remaining < a.size and a.remaining in figures, a
    # the 3-image requests alone ask for more than the budget, so one was refused: fewer than 3 were
    # left then, and what is left never grows
    assert 3 * sum(a.size == 3 for a in answers) > budget
    assert any(a.size == 3 for a in refused) and left < min(SIZES)
    return images_answered


# -- one worker (uvicorn in this process) -----------------------------------------------------------
@pytest.fixture(scope="module")
def served(tmp_path_factory) -> Iterator[tuple[Served, KeyStore]]:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model: nn.Module = build_model("small-cnn", width=4, hidden=16).eval()
    store = SQLiteKeyStore(tmp_path_factory.mktemp("keys") / "keys.sqlite")
    app = create_app(model, build_defense("rnd:nu=0.02", model, seed=0), name="tiny", keys=store)
    with Served(app) as s:
        yield s, store
    store.close()


def test_a_request_over_the_remainder_is_refused_whole(served):
    """12 images: 5 (7 left), 5 (2 left); 3 is refused whole with the 2 left untouched, not answered
    in part; 2 exactly takes the rest; then even 1 is refused."""
    s, store = served
    auth = {"authorization": f"Bearer {store.add('exact', budget=12)}"}
    steps = [(5, 200, 7), (5, 200, 2), (3, 429, 2), (2, 200, 0), (1, 429, 0)]
    for i, (size, status, left) in enumerate(steps):
        r = s.client.post(INFER, json=json_body(images(size, i)), headers=auth)
        assert (r.status_code, r.headers["x-quota-remaining"]) == (status, str(left)), r.text
        if status == 200:
            assert decode(r).shape == (size, 10)
        else:
            assert r.headers["retry-after"] == str(QUOTA_RETRY_AFTER_S)
            want = f"{size} images asked, {left} left" if left else "0 images left"  # 0: before the body
            assert r.json()["error"] == f"quota exhausted: {want} on this key"
        assert store.remaining("exact") == left
    (row,) = [k for k in store.list() if k["name"] == "exact"]
    assert row["used"] == 12  # three requests answered, twelve images charged


def test_16_clients_of_3_and_5_image_requests_charge_per_image(served):
    """16 clients, 12 requests each of 3 or 5 images (768 images asked) on a key of 200 images."""
    s, store = served
    budget = 200
    auth = {"authorization": f"Bearer {store.add('load', budget=budget)}"}
    images_before = s.metric("rnd_images_total")

    def client(c: int, sizes: list[int]) -> list[Answer]:
        with httpx.Client(base_url=s.url, headers=auth, timeout=60) as http:
            return [post(http, INFER, n, 100 * c + i) for i, n in enumerate(sizes)]

    answers = load(client, clients=16, per_client=12)
    assert len(answers) == 16 * 12
    (row,) = [k for k in store.list() if k["name"] == "load"]
    answered = check_per_image(answers, budget, row["used"], store.remaining("load"))
    assert s.metric("rnd_images_total") == images_before + answered


# -- two worker processes (`rnd serve --workers 2`) sharing the key store -----------------------------
def test_two_workers_charge_per_image(tmp_path):
    """The same over `rnd serve --workers 2` (a new connection per request, so both workers answer):
    8 clients, 10 requests each of 3 or 5 images (320 asked) on a key of 100 images."""
    torch.manual_seed(0)
    save_checkpoint(build_model("small-cnn", width=4, hidden=16), tmp_path / "tiny", dataset="fashion-mnist")
    keys = tmp_path / "keys.sqlite"
    budget = 100
    with SQLiteKeyStore(keys) as store:
        key = store.add("two", budget=budget)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc, url = start_server(tmp_path / "tiny", keys, port, "--workers", "2", start_new_session=True)
    try:

        def client(c: int, sizes: list[int]) -> list[Answer]:
            out = []
            for i, n in enumerate(sizes):
                with httpx.Client(headers={"authorization": f"Bearer {key}"}, timeout=60) as http:
                    out.append(post(http, f"{url}{INFER}", n, 100 * c + i))
            return out

        answers = load(client, clients=8, per_client=10)
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(20)
    assert len(answers) == 80
    with SQLiteKeyStore(keys) as store:
        check_per_image(answers, budget, store.list()[0]["used"], store.remaining("two"))
