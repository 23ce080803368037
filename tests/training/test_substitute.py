"""Papernot et al.'s substitute: every label is one counted query of the oracle, each round doubles
the set, the substitute agrees with the target far above chance, it saves as a checkpoint with its
provenance, and a transfer attack crafted on it fools an undefended target more often than noise."""

from __future__ import annotations

import pytest
import torch

from rnd.attacks import MIFGSM
from rnd.errors import InputError
from rnd.models import load_checkpoint
from rnd.models.predict import predict
from rnd.oracle import Oracle
from rnd.training.substitute import SUBSTITUTE_KIND, jacobian_step, train_substitute


@pytest.fixture(scope="module")
def trained(tiny_model, fmnist_test):
    """A substitute of the tiny CNN from 60 test images (the last ones), 3 rounds: 240 labels."""
    oracle = Oracle(tiny_model, output="labels")
    x, _ = fmnist_test.get(torch.arange(len(fmnist_test) - 60, len(fmnist_test)))
    sub = train_substitute(oracle, x, rounds=3, epochs=8, lr=3e-3, dataset="fashion-mnist", progress=False)
    return oracle, sub


def test_every_label_is_one_counted_query(trained):
    oracle, sub = trained
    assert sub.round_sizes == [60, 120, 240]  # each round doubles the set
    assert sub.queries == int(oracle.counts.sum()) == sub.labels == 240 and sub.refused == 0
    assert bool((oracle.counts == 1).all())  # one id per point, one query each


def test_the_substitute_agrees_with_the_target_above_chance(trained, tiny_model, fmnist_test):
    _, sub = trained
    x, _ = fmnist_test.get(torch.arange(1000))
    agreement = float((predict(sub.model, x) == predict(tiny_model, x)).float().mean())
    assert agreement > 0.5  # chance is about 0.1 on 10 classes (measured: 0.77)


def test_it_saves_as_a_checkpoint_with_its_provenance(trained, tmp_path):
    _, sub = trained
    meta = sub.save(tmp_path / "sub", target="abc123")
    loaded, read = load_checkpoint(tmp_path / "sub")
    assert read.recipe["kind"] == SUBSTITUTE_KIND and read.recipe["lam"] == 0.1
    assert read.recipe["provenance"] == "trained from 240 labels of the target, 240 queries"
    assert read.metrics["queries"] == 240 and read.parent == {"target": "abc123"}
    assert read.sha256 == meta.sha256
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(loaded(x), sub.model(x))


def test_the_jacobian_step_moves_by_lambda_on_the_pixel_grid(tiny_model, fmnist_test):
    x, y = fmnist_test.get(torch.arange(8))
    new = jacobian_step(tiny_model, x, y, 0.1)
    assert torch.equal(new, (new * 255).round() / 255) and 0 <= float(new.min()) <= float(new.max()) <= 1
    assert float((new - x).abs().max()) <= 0.1 + 1 / 255
    assert not torch.equal(new, x)


def test_refused_answers_cost_and_are_dropped(tiny_model, fmnist_test):
    class Refusing(torch.nn.Module):
        """Refuses (all-NaN logits) every image whose first pixel is dark."""

        input_shape, num_classes = (1, 28, 28), 10

        def forward(self, x):
            z = tiny_model(x)
            return torch.where((x[:, 0, 0, 0] < 0.5)[:, None], torch.nan, z)

    oracle = Oracle(Refusing(), output="labels")
    x, _ = fmnist_test.get(torch.arange(10))
    x[:4, 0, 0, 0] = 1.0
    sub = train_substitute(oracle, x, rounds=1, epochs=1, progress=False)
    assert sub.queries == 10 and sub.refused == 6 and sub.labels == 4 and sub.round_sizes == [4]
    with pytest.raises(InputError, match="refused every seed"):
        train_substitute(Oracle(Refusing(), output="labels"), x[4:], rounds=1, progress=False)


def test_bad_arguments_fail_before_any_query(tiny_model, fmnist_test):
    oracle = Oracle(tiny_model, output="labels")
    x, _ = fmnist_test.get(torch.arange(4))
    for kwargs in ({"rounds": 0}, {"lam": -0.1}, {"tau": 0}):
        with pytest.raises(InputError):
            train_substitute(oracle, x, progress=False, **kwargs)
    with pytest.raises(InputError):
        train_substitute(oracle, torch.rand(4, 3, 28, 28), progress=False)
    assert int(oracle.counts.sum()) == 0


def test_a_transfer_attack_from_the_substitute_beats_random_noise(trained, tiny_model, attack_batch):
    _, sub = trained
    x, y = attack_batch
    eps = 0.2
    result = MIFGSM(eps, surrogate=sub.model, mu=eps / 5)(Oracle(tiny_model, budget=1), x, y)
    g = torch.Generator().manual_seed(0)
    noise = (x + eps * torch.randint(0, 2, x.shape, generator=g).mul(2).sub(1)).clamp(0, 1)
    fooled_by_noise = int((predict(tiny_model, noise) != y).sum())
    fooled = int((predict(tiny_model, result.x_adv) != y).sum())
    assert fooled >= fooled_by_noise + 6, (fooled, fooled_by_noise)  # measured: 13 of 20 against 1
