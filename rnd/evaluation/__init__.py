"""Evaluation: metrics, the demo, sweeps, results store and reports."""

from rnd.models.predict import accuracy, correctly_classified, noisy_accuracy, predict
from rnd.stats import failure_rate, query_stats

__all__ = ["accuracy", "correctly_classified", "failure_rate", "noisy_accuracy", "predict", "query_stats"]
