"""A standard Open Inference Protocol client, NVIDIA's `tritonclient.http`, against `rnd serve` over
real loopback HTTP (issue 15): metadata, JSON and binary tensors, the API key as a header; the
answers are probabilities of the right shape, and RND makes the same image answer differently."""

from __future__ import annotations

import socket

import numpy as np
import pytest
import torch

from rnd.models import build_model, save_checkpoint
from rnd.serving.keys import SQLiteKeyStore
from tests.serving.test_quota_http import start_server

httpclient = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("triton")
    torch.manual_seed(0)
    save_checkpoint(build_model("small-cnn", width=4, hidden=16), root / "tiny", dataset="fashion-mnist")
    keys = root / "keys.sqlite"
    with SQLiteKeyStore(keys) as store:
        key = store.add("triton", budget=10_000)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc, url = start_server(root / "tiny", keys, port, "--defense", "rnd:nu=0.02", "--output", "probs")
    try:
        yield url.removeprefix("http://"), key, keys
    finally:
        proc.terminate()
        proc.wait(20)


def infer(client, x: np.ndarray, key: str, binary: bool) -> np.ndarray:
    inp = httpclient.InferInput("input", list(x.shape), "FP32")
    inp.set_data_from_numpy(x, binary_data=binary)
    out = httpclient.InferRequestedOutput("output", binary_data=binary)
    # tritonclient mutates the headers dict it is given: a fresh one per call
    result = client.infer("tiny", [inp], outputs=[out], headers={"Authorization": f"Bearer {key}"})
    return result.as_numpy("output")


def test_tritonclient_reads_metadata_and_gets_noisy_probabilities(served):
    url, key, keys = served
    client = httpclient.InferenceServerClient(url=url)
    try:
        assert client.is_server_live() and client.is_server_ready()
        meta = client.get_model_metadata("tiny", headers={"Authorization": f"Bearer {key}"})
        assert meta["name"] == "tiny"
        assert meta["inputs"][0]["datatype"] == "FP32" and meta["inputs"][0]["shape"][1:] == [1, 28, 28]
        x = np.random.default_rng(0).random((3, 1, 28, 28), dtype=np.float32)
        for binary in (False, True):
            first, second = infer(client, x, key, binary), infer(client, x, key, binary)
            assert first.shape == (3, 10) and first.dtype == np.float32
            np.testing.assert_allclose(first.sum(1), 1.0, atol=1e-5)
            assert (first >= 0).all()
            assert not np.allclose(first, second)  # fresh noise per query, never replayed
    finally:
        client.close()
    with SQLiteKeyStore(keys) as store:
        assert store.list()[0]["used"] == 12


def test_tritonclient_sees_refusals_as_errors(served):
    url, key, _ = served
    client = httpclient.InferenceServerClient(url=url)
    x = np.full((1, 1, 28, 28), 2.0, dtype=np.float32)  # pixels outside [0, 1]
    try:
        with pytest.raises(InferenceServerException, match=r"\[0, 1\]|range"):
            infer(client, x, key, binary=True)
        with pytest.raises(InferenceServerException, match=r"401|key"):
            infer(client, np.zeros((1, 1, 28, 28), np.float32), "wrong-key", binary=True)
        assert infer(client, np.zeros((1, 1, 28, 28), np.float32), key, binary=True).shape == (1, 10)
    finally:
        client.close()
