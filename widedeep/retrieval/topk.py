"""Full-catalog top-K ranking and the ranking metrics every method is judged by.

One engine (``rank_topk``) ranks the whole catalog for every user, chunk by chunk, with the
user's excluded items (training items, caller exclusions) masked out; the learned retriever,
most-popular, item-kNN and EASE all go through it, so their numbers are comparable by construction.

Metric definitions (averaged over users with at least one relevant item):

- ``recall@K``  = |top-K ∩ relevant| / |relevant|
- ``hr@K``      = 1 if top-K ∩ relevant is non-empty else 0
- ``ndcg@K``    = DCG@K / IDCG@K with binary gains, DCG = Σ_{i<K} hit_i / log2(i + 2),
  IDCG = Σ_{i<min(K, |relevant|)} 1 / log2(i + 2)
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

import numpy as np
import torch

from widedeep.retrieval.interactions import CSR

log = logging.getLogger(__name__)

#: scores computed per block: users_in_block * n_items stays under this (float32: 4 bytes each)
BLOCK_ELEMS = 1 << 24


def hit_matrix(topk: np.ndarray, relevant: CSR) -> np.ndarray:
    """bool ``[U, K]``: whether ``topk[u, i]`` is one of user ``u``'s relevant items (-1 = padding)."""
    topk = np.asarray(topk, dtype=np.int64)
    n_users, _k = topk.shape
    if relevant.n_rows != n_users:
        raise ValueError(f"hit_matrix: {n_users} ranked users but {relevant.n_rows} relevance rows")
    n = np.int64(max(relevant.n_cols, int(topk.max(initial=0)) + 1))
    codes = np.arange(n_users, dtype=np.int64)[:, None] * n + topk
    rel_codes = relevant.row_ids() * n + relevant.indices
    hits = np.isin(codes, rel_codes)
    hits &= topk >= 0
    return hits


def ranking_metrics(
    topk: np.ndarray, relevant: CSR, ks: Sequence[int], kinds: Sequence[str] = ("recall", "hr", "ndcg")
) -> dict[str, float]:
    """Mean Recall/HR/NDCG@K over users; ``topk`` rows align with ``relevant`` rows.

    Users without relevant items are an error (the caller picks the evaluated users).
    """
    n_rel = relevant.lengths()
    if (n_rel == 0).any():
        raise ValueError("ranking_metrics: every evaluated user needs at least one relevant item")
    if topk.shape[1] < max(ks):
        raise ValueError(f"ranking_metrics: top-{topk.shape[1]} lists cannot give metrics @{max(ks)}")
    hits = hit_matrix(topk, relevant).astype(np.float64)
    discounts = 1.0 / np.log2(np.arange(topk.shape[1], dtype=np.float64) + 2.0)
    ideal_cum = np.concatenate([[0.0], np.cumsum(discounts)])
    out: dict[str, float] = {}
    for k in ks:
        h = hits[:, :k]
        n_hit = h.sum(1)
        if "recall" in kinds:
            out[f"recall@{k}"] = float(np.mean(n_hit / n_rel))
        if "hr" in kinds:
            out[f"hr@{k}"] = float(np.mean(n_hit > 0))
        if "ndcg" in kinds:
            out[f"ndcg@{k}"] = float(np.mean(_ndcg(h, n_rel, k, discounts, ideal_cum)))
    out["users"] = int(n_rel.shape[0])
    return out


def _ndcg(h: np.ndarray, n_rel: np.ndarray, k: int, discounts: np.ndarray, ideal_cum: np.ndarray) -> np.ndarray:
    return (h[:, :k] @ discounts[:k]) / ideal_cum[np.minimum(n_rel, k)]


def ndcg_per_user(topk: np.ndarray, relevant: CSR, k: int) -> np.ndarray:
    """float64 ``[U]`` NDCG@k of every user (the values ``ranking_metrics`` averages), for paired
    comparisons of two lists over the same users."""
    n_rel = relevant.lengths()
    hits = hit_matrix(topk, relevant).astype(np.float64)
    discounts = 1.0 / np.log2(np.arange(topk.shape[1], dtype=np.float64) + 2.0)
    return _ndcg(hits, n_rel, k, discounts, np.concatenate([[0.0], np.cumsum(discounts)]))


ScoreFn = Callable[[int, int], torch.Tensor]


def rank_topk(
    score_fn: ScoreFn,
    n_queries: int,
    n_items: int,
    k: int,
    exclude: CSR | None = None,
    *,
    label: str = "ranking",
    block_elems: int = BLOCK_ELEMS,
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` items of every query over the whole catalog.

    Args:
        score_fn: ``(lo, hi) -> float32 [hi - lo, n_items]`` scores of queries ``lo..hi-1``.
        n_queries: number of queries (users).
        n_items: catalog size.
        k: list length; rows with fewer than ``k`` allowed items are padded with item -1 / score -inf.
        exclude: per-query items that may not be returned (``n_rows == n_queries``), or ``None``.
        label: name used in progress logs.

    Returns:
        ``(items int64 [n_queries, k], scores float32 [n_queries, k])``, best first.
    """
    if exclude is not None and exclude.n_rows != n_queries:
        raise ValueError(f"rank_topk: exclude has {exclude.n_rows} rows for {n_queries} queries")
    kk = min(k, n_items)
    items = np.full((n_queries, k), -1, dtype=np.int64)
    scores = np.full((n_queries, k), -np.inf, dtype=np.float32)
    step = max(1, block_elems // max(n_items, 1))
    t0 = last = time.monotonic()
    for lo in range(0, n_queries, step):
        hi = min(n_queries, lo + step)
        s = score_fn(lo, hi).to(torch.float32)
        if s.shape != (hi - lo, n_items):
            raise ValueError(f"rank_topk: score block has shape {tuple(s.shape)}, expected {(hi - lo, n_items)}")
        s = s.clone() if not s.is_contiguous() else s
        if exclude is not None:
            a, b = exclude.indptr[lo], exclude.indptr[hi]
            if b > a:
                r = np.repeat(np.arange(hi - lo), np.diff(exclude.indptr[lo : hi + 1]))
                s[torch.from_numpy(r), torch.from_numpy(exclude.indices[a:b])] = -torch.inf
        v, i = torch.topk(s, kk, dim=1)
        v_np, i_np = v.numpy(), i.numpy()
        i_np = np.where(np.isneginf(v_np), -1, i_np)
        items[lo:hi, :kk] = i_np
        scores[lo:hi, :kk] = v_np
        now = time.monotonic()
        if now - last > 10 or (hi == n_queries and now - t0 > 10):
            rate = hi / max(now - t0, 1e-9)
            log.info(
                "%s: %d/%d users ranked (%.0f users/s, ETA %.0fs)", label, hi, n_queries, rate, (n_queries - hi) / rate
            )
            last = now
    return items, scores
