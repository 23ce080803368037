"""Training: standard, Gaussian-augmentation fine-tuning (GF) and adversarial training (AT); the
attacker's surrogates (a zoo, a Papernot substitute) and their provenance."""

from rnd.training.default import load_or_train_default
from rnd.training.loop import TrainConfig, fit
from rnd.training.provenance import SurrogateProvenance, surrogate_provenance
from rnd.training.standard import default_checkpoint_path, rnd_home, train_model
from rnd.training.substitute import Substitute, train_substitute
from rnd.training.surrogates import SURROGATES, default_surrogate_specs, load_or_train_surrogates

__all__ = [
    "SURROGATES",
    "Substitute",
    "SurrogateProvenance",
    "TrainConfig",
    "default_checkpoint_path",
    "default_surrogate_specs",
    "fit",
    "load_or_train_default",
    "load_or_train_surrogates",
    "rnd_home",
    "surrogate_provenance",
    "train_model",
    "train_substitute",
]
