"""The baselines every retrieval result is compared with: most-popular, item-kNN and EASE.

Both only produce scores; ranking, exclusion of seen items and the metrics are done by the
same harness as the learned retriever (``widedeep.retrieval.topk.rank_topk``), so the
comparison is like for like.

Item-kNN is the classic item-based collaborative filter (Sarwar et al. 2001; Deshpande &
Karypis 2004): (shrunk) cosine similarity between the item columns of the binary training
user x item matrix, each item keeps its ``neighbors`` most similar items, and a user's score
for item j is the sum of j's similarities to the items in the user's history. It is the
item-to-item candidate source's neighbourhood (``widedeep.retrieval.neighbors``), one
implementation for both.

EASE (Steck 2019, "Embarrassingly Shallow Autoencoders for Sparse Data") is the closed-form
linear item-item model ``B = argmin ||X - XB||^2 + lambda ||B||^2`` with ``diag(B) = 0``:
``P = (X^T X + lambda I)^-1``, ``B = I - P / diag(P)`` (column-wise). It is the strongest simple
baseline on MovieLens-like data. It needs a dense ``items x items`` matrix, so it refuses catalogs
above ``EASE_MAX_ITEMS`` (``EaseRefused``; 20,000 items = 1.6 GB per float32 matrix, and the fit
holds about three) instead of exhausting memory. ``EASE.grid`` fits many ``lambda`` values from one
eigendecomposition of the Gram matrix (``P = Q diag(1 / (w + lambda)) Q^T``), which is how the
evaluation picks ``lambda`` on the valid split at the cost of one fit.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from widedeep.retrieval.interactions import CSR
from widedeep.retrieval.neighbors import (
    EASE_MAX_ITEMS,
    EaseRefused,
    ItemNeighbors,
    NeighborSettings,
    check_ease_size,
    ease_weights,
    gram,
    weights_from_inverse,
)

log = logging.getLogger(__name__)

__all__ = ["EASE", "EASE_MAX_ITEMS", "EaseRefused", "ItemKNN", "MostPopular"]


class MostPopular:
    """Scores every item by its popularity (same list for all users).

    Args:
        popularity: ``[n_items]`` per catalog row, ``widedeep.retrieval.popularity.item_popularity``
            (the train split's positive rows of each item).
    """

    def __init__(self, popularity: np.ndarray) -> None:
        self.counts = np.asarray(popularity, dtype=np.float32)

    def score(self, history: CSR, lo: int, hi: int) -> torch.Tensor:
        """Scores ``[hi - lo, n_items]`` (a fresh tensor: the ranking engine masks it in place)."""
        return torch.from_numpy(self.counts).unsqueeze(0).repeat(hi - lo, 1)


class ItemKNN:
    """Item-based kNN with (shrunk) cosine similarity over the binary training interaction matrix:
    the item-to-item candidate source's neighbourhood (``widedeep.retrieval.neighbors``) used as
    a recommender on its own.

    Args:
        train: users x items positive interactions (the history the similarities come from).
        neighbors: similar items kept per item (the usual pruning; 0 keeps all).
        chunk: item columns of the co-occurrence matrix computed at once.
        shrink: ``sim = co / (sqrt(|i| |j|) + shrink)``; 0 is the plain cosine.
    """

    def __init__(self, train: CSR, neighbors: int = 100, chunk: int = 1024, shrink: float = 0.0) -> None:
        self.settings = NeighborSettings(int(neighbors), float(shrink))
        self.model = ItemNeighbors.fit(train, self.settings, chunk)

    def score(self, history: CSR, lo: int, hi: int) -> torch.Tensor:
        """Scores ``[hi - lo, n_items]`` of users ``lo..hi-1`` of ``history``: Σ_{i ∈ hist(u)} S[i, j]."""
        return self.model.score(history, lo, hi)


class EASE:
    """Steck's EASE: scores ``X_u B`` with the closed-form item-item weights ``B`` (see the module doc).

    Args:
        train: users x items positive interactions.
        lam: the L2 weight ``lambda`` (added to the Gram matrix's diagonal).
    """

    def __init__(self, train: CSR, lam: float) -> None:
        self.b = ease_weights(train, lam)
        self.lam = float(lam)

    @staticmethod
    def grid(train: CSR, lams: Sequence[float]) -> Iterator[EASE]:
        """One fitted EASE per ``lambda``, all from one eigendecomposition of ``X^T X``."""
        check_ease_size(train.n_cols)
        w, q = torch.linalg.eigh(gram(train))
        for lam in lams:
            m = EASE.__new__(EASE)
            m.b = weights_from_inverse((q / (w + float(lam))) @ q.T)
            m.lam = float(lam)
            yield m

    def score(self, history: CSR, lo: int, hi: int) -> torch.Tensor:
        """Scores ``[hi - lo, n_items]`` of users ``lo..hi-1`` of ``history``: ``X_u B``."""
        h = history.take_rows(np.arange(lo, hi))
        x = torch.zeros((hi - lo, self.b.shape[0]), dtype=self.b.dtype)
        x[torch.from_numpy(h.row_ids()), torch.from_numpy(h.indices)] = 1.0
        return (x @ self.b).float()
