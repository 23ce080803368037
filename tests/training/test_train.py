import torch

from rnd.data import make_synthetic
from rnd.evaluation import accuracy
from rnd.models import load_checkpoint
from rnd.training import TrainConfig, train_model


def _train(tmp_path, name, seed=0):
    train, test = make_synthetic(400, seed=0), make_synthetic(200, seed=1)
    cfg = TrainConfig(epochs=2, batch_size=32, lr=3e-3, seed=seed)
    return train_model(
        "small-cnn", "synthetic", tmp_path / name, cfg, train_data=train, test_data=test, progress=False
    )


def test_train_learns_and_saves(tmp_path):
    _, info = _train(tmp_path, "a")
    assert info["metrics"]["test_accuracy"] > 0.9
    loaded, meta = load_checkpoint(tmp_path / "a")
    assert meta.recipe["kind"] == "standard" and meta.recipe["seed"] == 0
    assert accuracy(loaded, make_synthetic(200, seed=1)) == info["metrics"]["test_accuracy"]


def test_deterministic_under_seed_and_global_rng_untouched(tmp_path):
    torch.manual_seed(5)
    expected = torch.rand(2)
    torch.manual_seed(5)
    a, _ = _train(tmp_path, "a", seed=1)
    assert torch.equal(torch.rand(2), expected)
    b, _ = _train(tmp_path, "b", seed=1)
    c, _ = _train(tmp_path, "c", seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not all(torch.equal(sa[k], sc[k]) for k in sa)
