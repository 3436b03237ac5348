"""Distribution profiles of prepared data and the drift between two of them (one implementation
for the bundle's training profile, serving's sliding window and ``widedeep retrain``'s report).

A profile summarises one FeatureSpace's prepared rows per monitored feature:

- numeric: counts per bin of the fitted quantile boundaries (``states[name]["boundaries"]``): the
  bin of a value is recovered from its prepared form (``cdf``: the prepared value is the bin over
  the number of boundaries; ``standard`` / ``none``: undone, then ``searchsorted``), so the same
  bins come out of training shards and serving requests;
- vocabulary categorical / multivalent: counts over ``TOP_VALUES`` reference categories (the most
  frequent values of the training data), one "other" bucket for the rest of the vocabulary and
  one for the OOV id.

Drift of a window against a reference, per feature:

- ``psi`` (numerics): population stability index, ``sum((w - r) * ln(w / r))`` over bins with
  proportions floored at ``EPS``; the usual reading is < 0.1 stable, 0.1-0.25 moderate, > 0.25 a
  significant shift.
- ``oov_rate`` / ``oov_rate_ref`` (categoricals): the window's and the reference's share of OOV ids.
- ``top_shift`` (categoricals): total variation distance between the two distributions over the
  reference categories (in-vocabulary ids only, so it does not repeat the OOV change), in [0, 1].

Features are read from prepared columns only (no raw values, no Ray), so serving keeps its cost:
``categories`` maps an id column to category indexes with one ``take`` per request.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from widedeep.features.space import FeatureSpace
from widedeep.features.spec import CrossedFeature, NumericFeature, VocabularyFeature

PROFILE_KIND = "widedeep.profile"
TOP_VALUES = 20
EPS = 1e-4


def monitored(fs: FeatureSpace, sides: tuple[str, ...] | None = None) -> list[str]:
    """Features a profile covers: numerics and vocabulary features (not hashed, not crosses)."""
    out = []
    for f in fs.features:
        if isinstance(f, CrossedFeature) or (sides is not None and f.side not in sides):
            continue
        if isinstance(f, NumericFeature) or (isinstance(f, VocabularyFeature) and "vocab" in fs.states.get(f.name, {})):
            out.append(f.name)
    return out


def numeric_bins(fs: FeatureSpace, name: str, prepared: np.ndarray) -> np.ndarray:
    """Bin index (``0..len(boundaries)``) of each prepared value of numeric feature ``name``."""
    f = fs.feature(name)
    st = fs.states[name]
    b = np.asarray(st["boundaries"], dtype=np.float64)
    x = np.asarray(prepared, dtype=np.float64)
    if len(b) == 0:
        return np.zeros(len(x), dtype=np.int64)
    if isinstance(f, NumericFeature) and f.normalize == "cdf":
        return np.clip(np.rint(x * len(b)), 0, len(b)).astype(np.int64)
    if isinstance(f, NumericFeature) and f.normalize == "standard":
        std = st["std"] if st["std"] > 0 else 1.0
        x = x * std + st["mean"]
        x = x + 1e-5 * (np.abs(x) + std)  # undone float32 rounding must not drop a boundary value below it
    return np.searchsorted(b, x, side="right").astype(np.int64)


class Categories:
    """id -> category index of one vocabulary feature: its reference top values, then "other", then OOV."""

    def __init__(self, fs: FeatureSpace, name: str, top_ids: list[int]) -> None:
        st = fs.states[name]
        self.names = [str(fs.states[name]["vocab"][i]) for i in top_ids] + ["(other)", "(oov)"]
        self.other, self.oov = len(top_ids), len(top_ids) + 1
        lut = np.full(int(st["num_rows"]), self.other, dtype=np.int64)
        lut[int(st["oov_id"])] = self.oov
        lut[np.asarray(top_ids, dtype=np.int64)] = np.arange(len(top_ids))
        self.lut = lut

    def __len__(self) -> int:
        return len(self.names)

    def of(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.int64)
        return self.lut[np.clip(ids, 0, len(self.lut) - 1)]


def _ids(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        arr = pc.list_flatten(arr)
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.int64)


def top_ids(fs: FeatureSpace, name: str, k: int = TOP_VALUES) -> list[int]:
    """The reference categories of a feature before any data is seen: its ``k`` most frequent
    vocabulary values (the vocabulary is in count order)."""
    return list(range(min(k, len(fs.states[name]["vocab"]))))


class ProfileBuilder:
    """Accumulates a profile over prepared tables of ``fs`` (``add`` per batch, ``finish`` once)."""

    def __init__(self, fs: FeatureSpace, features: list[str] | None = None) -> None:
        self.fs = fs
        self.features = monitored(fs) if features is None else features
        self.rows = 0
        self.label_sum = 0.0
        self.cats = {
            n: Categories(fs, n, top_ids(fs, n)) for n in self.features if not isinstance(fs.feature(n), NumericFeature)
        }
        self.counts: dict[str, np.ndarray] = {}
        for n in self.features:
            size = len(self.cats[n]) if n in self.cats else len(fs.states[n]["boundaries"]) + 1
            self.counts[n] = np.zeros(size, dtype=np.int64)

    def add(self, table: pa.Table) -> None:
        self.rows += table.num_rows
        if "label" in table.column_names:
            self.label_sum += float(pc.sum(table.column("label")).as_py() or 0.0)
        for n in self.features:
            if n not in table.column_names:
                continue
            col = table.column(n)
            if n in self.cats:
                idx = self.cats[n].of(_ids(col))
            else:
                idx = numeric_bins(self.fs, n, col.to_numpy())
            self.counts[n] += np.bincount(idx, minlength=len(self.counts[n]))[: len(self.counts[n])]

    def finish(self) -> dict[str, Any]:
        feats: dict[str, Any] = {}
        for n in self.features:
            c = [int(x) for x in self.counts[n]]
            if n in self.cats:
                feats[n] = {"kind": "categorical", "categories": self.cats[n].names, "counts": c}
            else:
                feats[n] = {"kind": "numeric", "boundaries": list(self.fs.states[n]["boundaries"]), "counts": c}
        return {
            "kind": PROFILE_KIND,
            "feature_space_hash": self.fs.content_hash,
            "rows": self.rows,
            "label_mean": self.label_sum / self.rows if self.rows else None,
            "features": feats,
        }


def psi(reference: np.ndarray, window: np.ndarray) -> float:
    """Population stability index of two count vectors over the same bins (0 when identical)."""
    r = np.asarray(reference, dtype=np.float64)
    w = np.asarray(window, dtype=np.float64)
    if r.sum() <= 0 or w.sum() <= 0:
        return float("nan")
    r = np.maximum(r / r.sum(), EPS)
    w = np.maximum(w / w.sum(), EPS)
    return float(np.sum((w - r) * np.log(w / r)))


def categorical_drift(reference: np.ndarray, window: np.ndarray) -> dict[str, float]:
    """``oov_rate``, ``oov_rate_ref`` and ``top_shift`` of two count vectors (top values, other, OOV)."""
    r = np.asarray(reference, dtype=np.float64)
    w = np.asarray(window, dtype=np.float64)
    out = {
        "oov_rate": float(w[-1] / w.sum()) if w.sum() else float("nan"),
        "oov_rate_ref": float(r[-1] / r.sum()) if r.sum() else float("nan"),
    }
    ri, wi = r[:-1], w[:-1]
    out["top_shift"] = (
        float(0.5 * np.abs(ri / ri.sum() - wi / wi.sum()).sum()) if ri.sum() > 0 and wi.sum() > 0 else float("nan")
    )
    return out


def compare(reference: dict[str, Any], window: dict[str, Any]) -> dict[str, dict[str, float]]:
    """Per-feature drift of profile ``window`` against profile ``reference`` (features in both)."""
    out: dict[str, dict[str, float]] = {}
    for name, ref in reference["features"].items():
        win = window["features"].get(name)
        if win is None or win["kind"] != ref["kind"] or len(win["counts"]) != len(ref["counts"]):
            continue
        if ref["kind"] == "numeric":
            out[name] = {"psi": psi(ref["counts"], win["counts"])}
        else:
            out[name] = categorical_drift(np.asarray(ref["counts"]), np.asarray(win["counts"]))
        out[name]["rows"] = int(np.sum(win["counts"]))
    return out


def finite(x: float) -> float | None:
    """JSON-safe: NaN / inf -> None."""
    return x if isinstance(x, (int, float)) and math.isfinite(x) else None
