"""`Oracle(compile=...)`: a compiled forward gives the eager answers; a failing backend falls back."""

from __future__ import annotations

import logging

import pytest
import torch

import rnd.oracle.local as local
from rnd.defenses.input_noise import RandomNoiseDefense
from rnd.errors import InputError
from rnd.oracle import Oracle


def test_auto_is_eager_on_the_cpu(tiny_model, attack_batch):
    x, _ = attack_batch
    oracle = Oracle(tiny_model, output="logits")
    assert oracle.compiled is False and oracle._call is tiny_model
    assert torch.equal(oracle.query(x, oracle.new_ids(len(x))), tiny_model(x).detach())


def test_bad_compile_value():
    with pytest.raises(InputError, match="compile must be"):
        Oracle(torch.nn.Linear(2, 2), input_shape=(2,), num_classes=2, compile="yes")  # type: ignore[arg-type]


def test_failing_backend_falls_back_to_eager_with_one_warning(tiny_model, attack_batch, monkeypatch, caplog):
    def broken(*a, **k):
        raise RuntimeError("no C compiler found\nlong details")

    monkeypatch.setattr(local.torch, "compile", lambda model, **k: broken)
    x, _ = attack_batch
    oracle = Oracle(tiny_model, output="logits", compile=True)
    with caplog.at_level(logging.WARNING, logger="rnd.oracle.local"):
        a = oracle.query(x, oracle.new_ids(len(x)))
        b = oracle.query(x, oracle.new_ids(len(x)))
    assert torch.equal(a, tiny_model(x).detach()) and torch.equal(a, b)
    warnings = [r for r in caplog.records if "torch.compile failed" in r.getMessage()]
    assert len(warnings) == 1 and "long details" not in warnings[0].getMessage()


@pytest.mark.slow  # two torch.compile graphs: about 2 minutes on the 2-core machine
def test_compiled_answers_match_eager_and_keep_the_noise_stream(tiny_model, attack_batch):
    """torch.compile of the model, and of an RND-defended model: the eager answers within 1e-5, and
    the defense's seeded noise stream unchanged (dynamo keeps the generator's semantics)."""
    x, _ = attack_batch
    x = x[:7]
    eager = Oracle(tiny_model, output="logits", compile=False)
    fast = Oracle(tiny_model, output="logits", compile=True)
    for n in (7, 3):  # two batch sizes: one dynamic-shape graph
        assert (fast.query(x[:n], fast.new_ids(n)) - eager.query(x[:n], eager.new_ids(n))).abs().max() < 1e-5
    assert not fast._call.failed
    d_eager = Oracle(RandomNoiseDefense(tiny_model, 0.05, seed=3), output="logits", compile=False)
    d_fast = Oracle(RandomNoiseDefense(tiny_model, 0.05, seed=3), output="logits", compile=True)
    for _ in range(2):
        a = d_eager.query(x, d_eager.new_ids(len(x)))
        b = d_fast.query(x, d_fast.new_ids(len(x)))
        assert (a - b).abs().max() < 1e-5
