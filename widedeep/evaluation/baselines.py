"""The two baselines every retrieval result is compared with: most-popular and item-kNN.

Both only produce scores; ranking, exclusion of seen items and the metrics are done by the
same harness as the learned retriever (``widedeep.retrieval.topk.rank_topk``), so the
comparison is like for like.

Item-kNN is the classic item-based collaborative filter (Sarwar et al. 2001; Deshpande &
Karypis 2004): cosine similarity between the item columns of the binary training
user x item matrix, each item keeps its ``neighbors`` most similar items, and a user's score
for item j is the sum of j's similarities to the items in the user's history. Computed with
torch sparse products in item chunks (never a dense users x items matrix).
"""

from __future__ import annotations

import logging
import time
import warnings

import numpy as np
import torch

from widedeep.retrieval.interactions import CSR

log = logging.getLogger(__name__)


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
    """Item-based kNN with cosine similarity over the binary training interaction matrix.

    Args:
        train: users x items positive interactions (the history the similarities come from).
        neighbors: similar items kept per item (the usual pruning; 0 keeps all).
        chunk: item columns of the co-occurrence matrix computed at once.
    """

    def __init__(self, train: CSR, neighbors: int = 100, chunk: int = 1024) -> None:
        with warnings.catch_warnings():  # torch labels its sparse kernels "beta"; they are exact
            warnings.simplefilter("ignore", UserWarning)
            self._fit(train, neighbors, chunk)

    def _fit(self, train: CSR, neighbors: int, chunk: int) -> None:
        n_items = train.n_cols
        t0 = time.monotonic()
        u_of = torch.from_numpy(train.row_ids())
        i_of = torch.from_numpy(train.indices)
        xt = torch.sparse_coo_tensor(
            torch.stack([i_of, u_of]), torch.ones(train.nnz), (n_items, train.n_rows)
        ).coalesce()
        deg = np.bincount(train.indices, minlength=n_items).astype(np.float32)
        inv_norm = torch.from_numpy(np.where(deg > 0, 1.0 / np.sqrt(np.maximum(deg, 1)), 0.0).astype(np.float32))
        keep = n_items - 1 if neighbors <= 0 else min(neighbors, max(n_items - 1, 1))
        rows, cols, vals = [], [], []
        for lo in range(0, n_items, chunk):
            hi = min(n_items, lo + chunk)
            # co-occurrence of every item with items lo..hi-1: X^T X[:, lo:hi]
            m = (i_of >= lo) & (i_of < hi)
            cols_block = torch.sparse_coo_tensor(  # X[:, lo:hi], sparse [U, hi-lo]
                torch.stack([u_of[m], i_of[m] - lo]), torch.ones(int(m.sum())), (train.n_rows, hi - lo)
            ).coalesce()
            co = torch.sparse.mm(xt, cols_block).to_dense()  # [I, hi-lo]
            sim = co * inv_norm[:, None] * inv_norm[None, lo:hi]
            sim[torch.arange(lo, hi), torch.arange(hi - lo)] = 0.0  # an item is not its own neighbour
            v, i = torch.topk(sim, keep, dim=0)  # best neighbours of each target item
            nz = v > 0
            tgt = torch.arange(lo, hi).unsqueeze(0).expand_as(i)
            rows.append(i[nz])
            cols.append(tgt[nz])
            vals.append(v[nz])
        r = torch.cat(rows) if rows else torch.zeros(0, dtype=torch.int64)
        c = torch.cat(cols) if cols else torch.zeros(0, dtype=torch.int64)
        v = torch.cat(vals) if vals else torch.zeros(0)
        # S^T[j, i] = similarity of history item i to target item j (only j's top neighbours kept)
        self.sim_t = torch.sparse_coo_tensor(torch.stack([c, r]), v, (n_items, n_items)).coalesce()
        self.n_items = n_items
        log.info(
            "item-kNN: %d items, %d similarities kept (%d neighbours each) in %.1fs",
            n_items,
            int(v.numel()),
            keep,
            time.monotonic() - t0,
        )

    def score(self, history: CSR, lo: int, hi: int) -> torch.Tensor:
        """Scores ``[hi - lo, n_items]`` of users ``lo..hi-1`` of ``history``: Σ_{i ∈ hist(u)} S[i, j]."""
        h = history.take_rows(np.arange(lo, hi))
        hd = torch.zeros((self.n_items, hi - lo), dtype=torch.float32)
        hd[torch.from_numpy(h.indices), torch.from_numpy(h.row_ids())] = 1.0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return torch.sparse.mm(self.sim_t, hd).T.contiguous()  # (S^T H^T)^T = H S
