"""Is the final list better than the best baseline, or is the gap noise? A paired bootstrap.

Why paired: both lists are evaluated on the same users, and users differ far more from each other
than two methods differ on one user; resampling users and keeping each user's pair of values
together measures only the difference (Efron & Tibshirani 1993; the usual test for IR metrics,
Sakai 2006). The confidence interval is the percentile interval of the mean per-user difference
over ``resamples`` resamples of the users, seeded so a report is reproducible.
"""

from __future__ import annotations

from typing import Any

import numpy as np

RESAMPLES = 2000
LEVEL = 0.95


def paired_bootstrap(
    a: np.ndarray, b: np.ndarray, resamples: int = RESAMPLES, level: float = LEVEL, seed: int = 0
) -> dict[str, Any]:
    """Mean of ``a - b`` (per-user values of two methods, aligned) and its bootstrap interval.

    Returns ``{"mean_diff", "ci_low", "ci_high", "level", "resamples", "users",
    "share_resamples_above_0"}``.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"paired_bootstrap: need two aligned non-empty 1-d arrays, got {a.shape} and {b.shape}")
    d = a - b
    rng = np.random.default_rng(seed)
    means = np.empty(resamples, dtype=np.float64)
    step = max(1, 2_000_000 // d.size)  # resamples per block: bounded memory
    for lo in range(0, resamples, step):
        hi = min(resamples, lo + step)
        means[lo:hi] = d[rng.integers(0, d.size, size=(hi - lo, d.size))].mean(1)
    tail = (1.0 - level) / 2.0
    return {
        "mean_diff": float(d.mean()),
        "ci_low": float(np.quantile(means, tail)),
        "ci_high": float(np.quantile(means, 1.0 - tail)),
        "level": level,
        "resamples": resamples,
        "users": int(d.size),
        "share_resamples_above_0": float((means > 0).mean()),
    }


def seed_summary(values: list[float]) -> dict[str, Any]:
    """Mean and sample standard deviation of one metric over runs with different seeds."""
    v = np.asarray(values, np.float64)
    return {"mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0, "values": v.tolist()}
