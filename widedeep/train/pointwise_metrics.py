"""Classification / regression metrics on plain numpy arrays.

One implementation used by training-time validation (after gathering every rank's
predictions), ``widedeep evaluate`` and the tests, so the number a run reports and the
number an evaluation prints are computed the same way. AUC is the exact rank statistic
(ties get their average rank), not a histogram approximation: validation sets here are
small enough to gather, and an exact figure is what the acceptance targets compare against.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-7


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U); NaN when one class is absent."""
    y = np.asarray(labels, dtype=np.float64).ravel() > 0.5
    s = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(y.sum())
    n_neg = int(y.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    s_sorted = s[order]
    # average ranks over ties (1-based)
    _, first, counts = np.unique(s_sorted, return_index=True, return_counts=True)
    avg_rank = first + (counts + 1) / 2.0
    ranks = np.empty_like(s)
    ranks[order] = np.repeat(avg_rank, counts)
    u = ranks[y].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic


def binary_metrics(labels: np.ndarray, logits: np.ndarray) -> dict[str, float]:
    """AUC, log loss, accuracy at 0.5, calibration (mean prediction / mean label)."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = sigmoid(logits)
    pc = np.clip(p, _EPS, 1 - _EPS)
    logloss = float(-np.mean(y * np.log(pc) + (1 - y) * np.log(1 - pc))) if y.size else float("nan")
    mean_label = float(y.mean()) if y.size else float("nan")
    mean_pred = float(p.mean()) if y.size else float("nan")
    return {
        "auc": roc_auc(y, p),
        "logloss": logloss,
        "accuracy": float(np.mean((p >= 0.5) == (y > 0.5))) if y.size else float("nan"),
        "calibration": mean_pred / mean_label if mean_label > 0 else float("nan"),
        "mean_prediction": mean_pred,
        "mean_label": mean_label,
        "num_examples": int(y.size),
    }


def regression_metrics(labels: np.ndarray, preds: np.ndarray) -> dict[str, float]:
    """RMSE, MAE, calibration (mean prediction / mean label)."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.asarray(preds, dtype=np.float64).ravel()
    mean_label = float(y.mean()) if y.size else float("nan")
    return {
        "rmse": float(np.sqrt(np.mean((p - y) ** 2))) if y.size else float("nan"),
        "mae": float(np.mean(np.abs(p - y))) if y.size else float("nan"),
        "mse": float(np.mean((p - y) ** 2)) if y.size else float("nan"),
        "calibration": float(p.mean()) / mean_label if y.size and mean_label != 0 else float("nan"),
        "num_examples": int(y.size),
    }


def task_metrics(task: str, labels: np.ndarray, outputs: np.ndarray) -> dict[str, float]:
    """Metrics for a FeatureSpace task ("binary" -> logits in, "regression" -> predictions in)."""
    if task == "binary":
        return binary_metrics(labels, outputs)
    return regression_metrics(labels, outputs)
