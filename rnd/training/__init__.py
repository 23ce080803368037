"""Training: standard, Gaussian-augmentation fine-tuning (GF) and adversarial training (AT)."""

from rnd.training.default import load_or_train_default
from rnd.training.loop import TrainConfig, fit
from rnd.training.standard import default_checkpoint_path, rnd_home, train_model

__all__ = [
    "TrainConfig",
    "default_checkpoint_path",
    "fit",
    "load_or_train_default",
    "rnd_home",
    "train_model",
]
