"""Models for pixel inputs in [0, 1] (normalisation inside), a registry, safe checkpoints, and
`load_model`: one loader for a checkpoint, a TorchScript file or the user's own factory."""

from rnd.models.checkpoint import (
    CheckpointMeta,
    check_checkpoint_files,
    checkpoint_paths,
    load_checkpoint,
    read_meta,
    save_checkpoint,
    sha256_file,
)
from rnd.models.cnn import SmallCNN
from rnd.models.layers import Classifier, Normalize
from rnd.models.registry import ARCHITECTURES, DATASET_STATS, MAX_PARAMETERS, build_model
from rnd.models.resnet import ResNet
from rnd.models.source import ModelInfo, load_model, model_kind, model_sha256
from rnd.models.vgg import VGG

__all__ = [
    "ARCHITECTURES",
    "DATASET_STATS",
    "MAX_PARAMETERS",
    "VGG",
    "CheckpointMeta",
    "Classifier",
    "ModelInfo",
    "Normalize",
    "ResNet",
    "SmallCNN",
    "build_model",
    "check_checkpoint_files",
    "checkpoint_paths",
    "load_checkpoint",
    "load_model",
    "model_kind",
    "model_sha256",
    "read_meta",
    "save_checkpoint",
    "sha256_file",
]
