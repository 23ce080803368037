"""Evaluation: metrics, the demo, sweeps, results store and reports."""

from rnd.evaluation.metrics import (
    accuracy,
    correctly_classified,
    failure_rate,
    noisy_accuracy,
    predict,
    query_stats,
)

__all__ = ["accuracy", "correctly_classified", "failure_rate", "noisy_accuracy", "predict", "query_stats"]
