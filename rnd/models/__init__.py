"""Models for pixel inputs in [0, 1] (normalisation inside), a registry, and safe checkpoints."""

from rnd.models.checkpoint import (
    CheckpointMeta,
    checkpoint_paths,
    load_checkpoint,
    read_meta,
    save_checkpoint,
    sha256_file,
)
from rnd.models.cnn import SmallCNN
from rnd.models.layers import Classifier, Normalize
from rnd.models.registry import ARCHITECTURES, DATASET_STATS, build_model
from rnd.models.resnet import ResNet
from rnd.models.vgg import VGG

__all__ = [
    "ARCHITECTURES",
    "DATASET_STATS",
    "VGG",
    "CheckpointMeta",
    "Classifier",
    "Normalize",
    "ResNet",
    "SmallCNN",
    "build_model",
    "checkpoint_paths",
    "load_checkpoint",
    "read_meta",
    "save_checkpoint",
    "sha256_file",
]
