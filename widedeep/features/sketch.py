"""A deterministic, mergeable quantile sketch: exact counts of values rounded to a relative grid.

Why this sketch: the fit runs as many Ray tasks whose partial results are merged on the driver,
and ``prepare`` must give a byte-identical ``feature_space.json`` when run twice, however Ray
schedules the tasks. A summary that depends on which rows met in which block (KLL, t-digest,
sampled quantiles) breaks that. Here each finite value is truncated to ``mantissa_bits`` bits of
mantissa (toward zero) and the sketch is the exact count per truncated value. Merging is adding
counts, so it is independent of partitioning and order.

Error bound: a reported quantile is a truncated data value ``v'`` with ``|v - v'| <= 2**-bits * |v|``
(relative error <= 0.1 % with the default 10 bits) and its rank is exact among the truncated
values. Integers below ``2**(bits+1)`` (ages, counts, hours) are represented exactly.
The sketch holds at most ``2**bits`` keys per power of two spanned by the data.
"""

from __future__ import annotations

import numpy as np

DEFAULT_BITS = 10


def sketch_keys(values: np.ndarray, bits: int = DEFAULT_BITS) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique keys, counts) for the finite ``values``."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    v = np.where(v == 0.0, 0.0, v)  # -0.0 and 0.0 are one key
    keys = v.view(np.int64) >> np.int64(52 - bits)
    return np.unique(keys, return_counts=True)


def merge(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Merge (keys, counts) pairs into one by adding counts."""
    parts = [p for p in parts if len(p[0])]
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    if len(parts) == 1:
        return parts[0]
    keys = np.concatenate([p[0] for p in parts])
    counts = np.concatenate([p[1] for p in parts])
    uk, inv = np.unique(keys, return_inverse=True)
    return uk, np.bincount(inv, weights=counts, minlength=len(uk)).astype(np.int64)


def decode(keys: np.ndarray, bits: int = DEFAULT_BITS) -> np.ndarray:
    """The truncated float value of each key."""
    return (np.asarray(keys, dtype=np.int64) << np.int64(52 - bits)).view(np.float64)


def quantiles(keys: np.ndarray, counts: np.ndarray, qs: np.ndarray, bits: int = DEFAULT_BITS) -> np.ndarray:
    """Values at the quantile levels ``qs`` (in [0, 1]); empty sketch -> empty array."""
    if len(keys) == 0:
        return np.zeros(0, dtype=np.float64)
    vals = decode(keys, bits)
    order = np.argsort(vals, kind="stable")
    vals, cnt = vals[order], np.asarray(counts)[order]
    cum = np.cumsum(cnt)
    idx = np.searchsorted(cum, np.asarray(qs) * cum[-1], side="left")
    return vals[np.clip(idx, 0, len(vals) - 1)]
