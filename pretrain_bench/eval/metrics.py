"""Task metrics as GLUE defines them, from the standard libraries: scikit-learn for the classification
metrics, scipy for the correlations. Predictions and labels are label indices (or floats for regression);
every metric returns a float in the task's natural range (a fraction, or a correlation in [-1, 1])."""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

POSITIVE = 1  # F1 is over label index 1 ("1" in MRPC and QQP: paraphrase / duplicate)


def accuracy(predictions: Sequence, labels: Sequence) -> float:
    from sklearn.metrics import accuracy_score

    return float(accuracy_score(labels, predictions))


def f1(predictions: Sequence, labels: Sequence) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(labels, predictions, pos_label=POSITIVE, average="binary", zero_division=0.0))


def matthews(predictions: Sequence, labels: Sequence) -> float:
    """Matthews correlation (CoLA); 0 when either side is constant, as scikit-learn defines it."""
    from sklearn.metrics import matthews_corrcoef

    return float(matthews_corrcoef(labels, predictions))


def _correlation(fn, predictions: Sequence, labels: Sequence) -> float:
    predictions, labels = np.asarray(predictions, dtype=float), np.asarray(labels, dtype=float)
    if not np.isfinite(predictions).all() or np.ptp(predictions) == 0 or np.ptp(labels) == 0:
        return 0.0  # undefined for a diverged or collapsed regressor, or constant labels: no correlation
    return float(fn(predictions, labels)[0])


def pearson(predictions: Sequence, labels: Sequence) -> float:
    from scipy.stats import pearsonr

    return _correlation(pearsonr, predictions, labels)


def spearman(predictions: Sequence, labels: Sequence) -> float:
    from scipy.stats import spearmanr

    return _correlation(spearmanr, predictions, labels)


METRICS: dict[str, Callable[[Sequence, Sequence], float]] = {
    "accuracy": accuracy, "f1": f1, "matthews": matthews, "pearson": pearson, "spearman": spearman,
}


def task_score(values: dict[str, float]) -> float:
    """GLUE's one number per task: the mean of its metrics (MRPC: F1 and accuracy; STS-B: Pearson and
    Spearman; MNLI: matched and mismatched accuracy)."""
    return float(np.mean(list(values.values())))


def summarize(values: Sequence[float]) -> dict:
    """Median and spread over fine-tuning seeds."""
    array = np.asarray(values, dtype=float)
    return {"median": float(np.median(array)), "min": float(array.min()), "max": float(array.max()),
            "std": float(array.std(ddof=1)) if len(array) > 1 else 0.0, "n": len(array),
            "values": [float(v) for v in array]}
