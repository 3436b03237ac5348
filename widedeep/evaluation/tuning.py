"""The baselines' settings, chosen on the valid split: a comparison against an untuned baseline
is a comparison against a weakened one.

Each baseline is fitted on the train split's positives and scored on the valid split's users
(the same ``EvalData`` definitions, exclusions and engine as the final evaluation); the setting
with the best ``SELECT_BY`` on valid is the one evaluated on test, fitted there on what the
evaluated models were fitted on (``EvalData.fit``: train and valid for a refit pair). The grids span the ranges the
literature reports as useful on implicit-feedback data of very different sizes, so no point of
them is fitted to one data set:

- item-kNN (Sarwar et al. 2001): neighbours kept per item and the shrinkage of the cosine;
- EASE (Steck 2019): the L2 weight ``lambda``; the paper's best values run from ~100 (small
  catalogs) to a few thousand (ML-20M, Netflix), so the grid runs over 1..20,000 geometrically;
- the item-to-item candidate source (``tune_source``): the better of the two, EASE pruned to the
  neighbours per item that keep it best.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from widedeep.evaluation.baselines import EASE, EaseRefused, ItemKNN
from widedeep.retrieval.neighbors import ItemNeighbors, NeighborSettings, ease_weights
from widedeep.retrieval.topk import rank_topk, ranking_metrics

log = logging.getLogger(__name__)

SELECT_BY = "ndcg@10"
KNN_NEIGHBORS = (10, 25, 50, 100, 200, 400)
KNN_SHRINK = (0.0, 10.0, 50.0, 100.0)
EASE_LAMBDAS = (1.0, 10.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 20000.0)
TUNE_KS = (10, 50)


@dataclass(frozen=True)
class Tuned:
    """The chosen setting of one baseline and the valid-split figures of every setting tried."""

    params: dict[str, float]
    valid: dict[str, float]
    grid: list[dict[str, float]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        """What the metrics JSON records: the setting, its valid figures and the grid."""
        return {"params": self.params, "selected_on": "valid", "select_by": SELECT_BY, "valid": self.valid}


def valid_metrics(data: Any, score: Callable[[int, int], torch.Tensor], label: str) -> dict[str, float]:
    """Recall/NDCG@10/50 of one scorer on an ``EvalData``'s users (train history, train exclusions)."""
    rows, _ = rank_topk(score, len(data.users), data.catalog.n_items, max(TUNE_KS), data.exclude, label=label)
    return ranking_metrics(rows, data.relevant, TUNE_KS, kinds=("recall", "ndcg"))


def _best(tried: list[tuple[dict[str, float], dict[str, float]]]) -> Tuned:
    """The setting with the best ``SELECT_BY`` (on ties, the first in grid order)."""
    grid = [{**p, **{k: v for k, v in m.items() if k != "users"}} for p, m in tried]
    best = max(range(len(tried)), key=lambda i: (tried[i][1][SELECT_BY], -i))
    params, metrics = tried[best]
    return Tuned(params, {k: v for k, v in metrics.items() if k != "users"}, grid)


def tune_item_knn(valid: Any) -> Tuned:
    """Neighbours and shrinkage of item-kNN with the best ``SELECT_BY`` on ``valid``."""
    t0 = time.monotonic()
    tried = []
    for shrink in KNN_SHRINK:
        for k in KNN_NEIGHBORS:
            knn = ItemKNN(valid.train_pos, neighbors=k, shrink=shrink)
            m = valid_metrics(valid, lambda lo, hi, knn=knn: knn.score(valid.history, lo, hi), "item-kNN (valid)")
            tried.append(({"neighbors": float(k), "shrink": shrink}, m))
    out = _best(tried)
    log.info("item-kNN on valid: %s (%s %.4f) of %d settings in %.1fs", out.params, SELECT_BY,
             out.valid[SELECT_BY], len(tried), time.monotonic() - t0)  # fmt: skip
    return out


def tune_ease(valid: Any) -> Tuned:
    """EASE's ``lambda`` with the best ``SELECT_BY`` on ``valid`` (raises ``EaseRefused`` above
    ``EASE_MAX_ITEMS``)."""
    t0 = time.monotonic()
    tried = []
    for m in EASE.grid(valid.train_pos, EASE_LAMBDAS):
        res = valid_metrics(valid, lambda lo, hi, m=m: m.score(valid.history, lo, hi), "EASE (valid)")
        tried.append(({"lambda": m.lam}, res))
    out = _best(tried)
    log.info("EASE on valid: %s (%s %.4f) of %d settings in %.1fs", out.params, SELECT_BY,
             out.valid[SELECT_BY], len(tried), time.monotonic() - t0)  # fmt: skip
    return out


def tune_source(valid: Any, knn: Tuned, ease: Tuned | None) -> tuple[NeighborSettings, dict[str, Any]]:
    """The item-to-item source's neighbourhood: the better of the two valid-tuned item-item models
    by ``SELECT_BY``, EASE with its weights pruned to the number of neighbours per item that keeps
    the valid figure best (a candidate source must be sparse to serve)."""
    if ease is None or ease.valid[SELECT_BY] <= knn.valid[SELECT_BY]:
        s = NeighborSettings(int(knn.params["neighbors"]), float(knn.params["shrink"]))
        return s, {"kind": "cosine", "valid": knn.valid}
    lam = float(ease.params["lambda"])
    b = ease_weights(valid.train_pos, lam)
    tried = []
    for k in KNN_NEIGHBORS:
        nb = ItemNeighbors.fit(valid.train_pos, NeighborSettings(k, 0.0, "ease", lam), weights=b)
        m = valid_metrics(valid, lambda lo, hi, nb=nb: nb.score(valid.history, lo, hi), "pruned EASE (valid)")
        tried.append(({"neighbors": float(k)}, m))
    best = _best(tried)
    if best.valid[SELECT_BY] <= knn.valid[SELECT_BY]:  # pruning lost EASE's edge
        s = NeighborSettings(int(knn.params["neighbors"]), float(knn.params["shrink"]))
        return s, {"kind": "cosine", "valid": knn.valid, "pruned_ease": best.valid}
    s = NeighborSettings(int(best.params["neighbors"]), 0.0, "ease", lam)
    return s, {"kind": "ease", "valid": best.valid, "grid": best.grid}


__all__ = ["EaseRefused", "Tuned", "tune_ease", "tune_item_knn", "tune_source", "valid_metrics"]
