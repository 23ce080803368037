"""Data sets in pixel space [0, 1]: Fashion-MNIST (Debian), CIFAR-10 and image folders (user's
copies), ImageNet (foolbox's 20 samples, or the user's folders at 224 x 224), and a synthetic set
for tests."""

from __future__ import annotations

from pathlib import Path

from rnd.data.base import ImageDataset
from rnd.data.cifar10 import load_cifar10
from rnd.data.fashion_mnist import load_fashion_mnist
from rnd.data.imagefolder import load_image_folder
from rnd.data.imagenet import load_imagenet_folder, load_imagenet_samples
from rnd.data.synthetic import make_synthetic
from rnd.errors import InputError, unknown_name

#: Data set names `load_dataset` takes.
DATASETS = ("fashion-mnist", "cifar10", "imagefolder", "imagenet-samples", "imagenet-folder", "synthetic")


def load_dataset(name: str, split: str = "test", root: str | Path | None = None) -> ImageDataset:
    """Load a data set by name: fashion-mnist, cifar10, imagefolder (root required),
    imagenet-samples (test split only), imagenet-folder (root required), synthetic."""
    if name == "fashion-mnist":
        return load_fashion_mnist(split, root)  # type: ignore[arg-type]
    if name == "cifar10":
        return load_cifar10(split, root)  # type: ignore[arg-type]
    if name == "imagefolder":
        if root is None:
            raise InputError("the imagefolder data set needs root=<folder with one sub-folder per class>")
        return load_image_folder(root)
    if name == "imagenet-samples":
        if split != "test":
            raise InputError("the imagenet-samples data set has only a test split (20 images)")
        return load_imagenet_samples(root)
    if name == "imagenet-folder":
        if root is None:
            raise InputError("the imagenet-folder data set needs root=<folder with one sub-folder per class>")
        return load_imagenet_folder(root)
    if name == "synthetic":
        return make_synthetic(n=2000 if split == "train" else 500, seed=0 if split == "train" else 1)
    raise unknown_name("data set", name, DATASETS)


__all__ = [
    "DATASETS",
    "ImageDataset",
    "load_cifar10",
    "load_dataset",
    "load_fashion_mnist",
    "load_image_folder",
    "load_imagenet_folder",
    "load_imagenet_samples",
    "make_synthetic",
]
