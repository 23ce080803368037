"""Small real models and data for the training tests (GF, AT)."""

from __future__ import annotations

from rnd.data import make_synthetic
from rnd.data.base import ImageDataset
from rnd.models import save_checkpoint
from rnd.training import TrainConfig, fit
from rnd.training.standard import init_model


def synthetic_parent(path, seed=0):
    """A narrow CNN trained for one epoch on 300 synthetic images, saved as a checkpoint."""
    data = make_synthetic(300, seed=0)
    model = init_model("small-cnn", data, seed=seed, width=4, hidden=16)
    fit(model, data, TrainConfig(epochs=1, batch_size=50, lr=3e-3, seed=seed), progress=False)
    save_checkpoint(model, path, dataset="synthetic", recipe={"kind": "standard"})
    return path


def syn_data():
    """(train, test) synthetic sets of 200 and 100 images."""
    return make_synthetic(200, seed=2), make_synthetic(100, seed=3)


def fmnist_slice(data: ImageDataset, n: int, start: int = 0) -> ImageDataset:
    return ImageDataset(data.name, data.split, data.images[start : start + n], data.labels[start : start + n])


class Interrupted(RuntimeError):
    pass


class InterruptedData(ImageDataset):
    """A real data set whose iteration fails after `ok` batches, like a run killed mid-epoch."""

    ok = 2

    def batches(self, batch_size, indices=None):
        for i, batch in enumerate(super().batches(batch_size, indices)):
            if i == self.ok:
                raise Interrupted("training interrupted")
            yield batch
