"""Attack state lives on the images' device; the loop reads little back from it (issue 16).

On the CPU: every result tensor is on the images' device, and the host transfers an attack makes
are counted by patching `Tensor.cpu` / `.item` / `.tolist`. With a GPU: the same numbers on CUDA
as on the CPU (float tolerance), and the same bounded number of read-backs per query.
"""

from __future__ import annotations

from contextlib import contextmanager

import pytest
import torch

from rnd.attacks import HopSkipJump, Square
from rnd.oracle import Oracle

GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")


@contextmanager
def count_readbacks():
    """Count Tensor.cpu / .item / .tolist calls (on any device) made inside the block."""
    counts = {"cpu": 0, "item": 0, "tolist": 0}
    originals = {name: getattr(torch.Tensor, name) for name in counts}

    def wrap(name):
        def f(self, *a, **k):
            counts[name] += 1
            return originals[name](self, *a, **k)

        return f

    try:
        for name in counts:
            setattr(torch.Tensor, name, wrap(name))
        yield counts
    finally:
        for name, f in originals.items():
            setattr(torch.Tensor, name, f)


class LedgerCounter(Oracle):
    """Counts the ledger's look-ups (a query, counts_of, remaining): each copies its ids to the host."""

    calls = 0

    def _ids_range(self, ids):
        self.calls += 1
        return super()._ids_range(ids)


def run(attack, model, x, y, output, budget):
    oracle = LedgerCounter(model, output=output, budget=budget)
    with count_readbacks() as counts:
        result = attack(oracle, x, y)
    return result, counts, oracle.calls


def result_tensors(result):
    names = ("x_adv", "success", "queries", "loss", "distance", "trace")
    return {n: getattr(result, n) for n in names if getattr(result, n) is not None}


@pytest.mark.parametrize("family", ["score", "labels"])
def test_state_stays_on_the_images_device_and_reads_back_little(tiny_model, attack_batch, one_thread, family):
    x, y = attack_batch
    x, y = x[:6], y[:6]
    if family == "score":
        result, counts, queries = run(Square(0.1, seed=0), tiny_model, x, y, "probs", 60)
    else:
        result, counts, queries = run(HopSkipJump(1.5, "l2", seed=0), tiny_model, x, y, "labels", 120)
    for name, t in result_tensors(result).items():
        assert t.device == x.device, name
    assert queries > 3
    # only the ledger copies to the host (the ids of each look-up); an attack adds none per step
    # (HSJA: the images once, for its per-image seeds)
    assert counts["cpu"] <= queries + (1 if family == "labels" else 0), (counts, queries)
    assert counts["item"] == 0, counts
    if family == "score":
        assert counts["tolist"] == 0, counts  # Square draws from one generator: no per-row choice


def same_numbers_on_cuda(attack_factory, model, x, y, output, budget):
    cpu = attack_factory()(Oracle(model, output=output, budget=budget), x, y)
    gpu_model = model.to("cuda")
    try:
        gpu = attack_factory()(Oracle(gpu_model, output=output, budget=budget), x.cuda(), y.cuda())
    finally:
        model.to("cpu")
    for name, t in result_tensors(gpu).items():
        assert t.device.type == "cuda", name
    same = cpu.queries == gpu.queries.cpu()
    assert same.float().mean() >= 0.8  # a near-tie may flip one decision (float rounding)
    assert torch.equal(cpu.success[same], gpu.success.cpu()[same])
    assert torch.allclose(cpu.x_adv[same], gpu.x_adv.cpu()[same], atol=1e-4)


@needs_gpu
def test_square_same_numbers_on_cuda(tiny_model, attack_batch):
    x, y = attack_batch
    same_numbers_on_cuda(lambda: Square(0.1, seed=0), tiny_model, x[:10], y[:10], "probs", 100)


@needs_gpu
def test_hsja_same_numbers_on_cuda(tiny_model, attack_batch):
    x, y = attack_batch
    same_numbers_on_cuda(lambda: HopSkipJump(1.5, "l2", seed=0), tiny_model, x[:6], y[:6], "labels", 200)


@needs_gpu
def test_no_extra_readbacks_on_cuda(tiny_model, attack_batch):
    """On CUDA the read-backs are the same bounded few per query as on the CPU."""
    x, y = attack_batch
    model = tiny_model.to("cuda")
    try:
        result, counts, queries = run(Square(0.1, seed=0), model, x[:6].cuda(), y[:6].cuda(), "probs", 60)
    finally:
        tiny_model.to("cpu")
    assert result.x_adv.device.type == "cuda"
    assert counts["cpu"] <= queries and counts["item"] == 0 and counts["tolist"] == 0, counts
