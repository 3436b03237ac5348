"""The candidate policy: which N items a user gets before ranking.

One implementation serves offline evaluation (``candidates_batch`` over all test users) and the
online Retriever (``candidates`` for one request, which calls the same batch path), so what
is measured offline is what is served.

Policy:

- a user the model can place (a user vector) gets the top-N of the item index;
- a user it cannot place (cold start: no vector) gets the N most popular items;
- items the user has already seen are never returned (``filter_seen``), nor items the caller
  excludes (by key or row); N is a parameter; short lists are padded with row -1.

Example::

    gen = CandidateGenerator(index, popularity, item_keys, seen={"u1": np.array([3, 7])})
    rows, scores = gen.candidates(user_vec, user_key="u1", n=100, exclude_keys=["i9"])
    keys = gen.item_keys[rows[rows >= 0]]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from widedeep.errors import ConfigError
from widedeep.retrieval.index import ItemIndex
from widedeep.retrieval.interactions import CSR, key_rows
from widedeep.retrieval.topk import rank_topk


def union(a: CSR, b: CSR) -> CSR:
    """Row-wise union of two CSRs with the same shape."""
    if a.n_rows != b.n_rows:
        raise ValueError(f"union: {a.n_rows} rows vs {b.n_rows} rows")
    rows = np.concatenate([a.row_ids(), b.row_ids()])
    cols = np.concatenate([a.indices, b.indices])
    return CSR.from_pairs(rows, cols, a.n_rows, max(a.n_cols, b.n_cols))


class CandidateGenerator:
    """Top-N candidates per user: index search for known users, popularity for cold ones.

    Args:
        index: item index over the catalog (row r = item ``item_keys[r]``).
        popularity: float ``[n_items]`` popularity score per item row (e.g. training positives).
        item_keys: the raw item key of every row.
        seen: items each user has already seen, either ``{user_key: item rows}`` or
            ``(user_keys, CSR)`` with CSR rows aligned to ``user_keys``.
    """

    def __init__(
        self,
        index: ItemIndex,
        popularity: np.ndarray,
        item_keys: np.ndarray,
        seen: Mapping[Any, np.ndarray] | tuple[np.ndarray, CSR] | None = None,
    ) -> None:
        if popularity.shape != (index.n_items,) or len(item_keys) != index.n_items:
            raise ConfigError(
                f"CandidateGenerator: index has {index.n_items} items, popularity "
                f"{popularity.shape[0]}, item_keys {len(item_keys)}"
            )
        self.index = index
        self.popularity = torch.from_numpy(np.asarray(popularity, dtype=np.float32))
        self.item_keys = np.asarray(item_keys)
        if seen is None:
            self.seen_users, self.seen = np.asarray([], dtype=object), CSR.empty(0, index.n_items)
        elif isinstance(seen, tuple):
            self.seen_users, self.seen = np.asarray(seen[0]), seen[1]
        else:
            users = list(seen.keys())
            lens = np.array([len(seen[u]) for u in users], dtype=np.int64)
            rows = np.repeat(np.arange(len(users), dtype=np.int64), lens)
            cols = (
                np.concatenate([np.asarray(seen[u], dtype=np.int64) for u in users]) if users else np.zeros(0, np.int64)
            )
            self.seen_users, self.seen = np.asarray(users), CSR.from_pairs(rows, cols, len(users), index.n_items)

    @property
    def n_items(self) -> int:
        return self.index.n_items

    def seen_rows(self, user_keys: Sequence[Any] | np.ndarray) -> CSR:
        """The seen items of each given user (empty for unknown users), CSR aligned to ``user_keys``."""
        if self.seen.n_rows == 0 or len(user_keys) == 0:
            return CSR.empty(len(user_keys), self.n_items)
        r = key_rows(np.asarray(user_keys), self.seen_users)
        known = r >= 0
        sub = self.seen.take_rows(np.where(known, r, 0))
        lens = np.where(known, sub.lengths(), 0)
        keep = np.repeat(known, sub.lengths())
        indptr = np.zeros(len(user_keys) + 1, dtype=np.int64)
        np.cumsum(lens, out=indptr[1:])
        return CSR(indptr, sub.indices[keep], self.n_items)

    def candidates_batch(
        self, user_vecs: np.ndarray | None, n: int, exclude: CSR | None = None, cold: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Candidates for many users at once (offline evaluation uses this directly).

        Args:
            user_vecs: float32 ``[U, dim]`` user vectors, or ``None`` when every user is cold.
            n: candidates per user.
            exclude: per-user item rows that must not be returned (seen items and caller
                exclusions, already merged), CSR with ``U`` rows.
            cold: bool ``[U]``: users without a usable vector (popularity fallback).

        Returns:
            ``(rows int64 [U, n], scores float32 [U, n])``; cold users' scores are popularity.
        """
        if n <= 0:
            raise ConfigError(f"candidates: n must be positive, got {n}")
        if user_vecs is None and cold is None:
            raise ConfigError("candidates: need user vectors or a cold-start mask")
        n_users = int(user_vecs.shape[0]) if user_vecs is not None else int(cold.shape[0])
        if cold is None:
            cold = np.zeros(n_users, dtype=bool)
        if user_vecs is not None:
            cold = cold | ~np.isfinite(user_vecs).all(axis=1)
        ex = exclude if exclude is not None else CSR.empty(n_users, self.n_items)
        rows = np.full((n_users, n), -1, dtype=np.int64)
        scores = np.full((n_users, n), -np.inf, dtype=np.float32)
        warm_idx = np.flatnonzero(~cold)
        cold_idx = np.flatnonzero(cold)
        if warm_idx.size:
            r, s = self.index.search(user_vecs[warm_idx], n, ex.take_rows(warm_idx))
            rows[warm_idx], scores[warm_idx] = r, s
        if cold_idx.size:
            pop = self.popularity
            r, s = rank_topk(
                lambda lo, hi: pop.unsqueeze(0).repeat(hi - lo, 1),
                cold_idx.size,
                self.n_items,
                n,
                ex.take_rows(cold_idx),
                label="popularity candidates",
            )
            rows[cold_idx], scores[cold_idx] = r, s
        return rows, scores

    def candidates(
        self,
        user_vec: np.ndarray | None,
        user_key: Any = None,
        n: int = 100,
        exclude_keys: Sequence[Any] | None = None,
        exclude_rows: Sequence[int] | None = None,
        filter_seen: bool = True,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Candidates for one user (the online Retriever's call).

        Args:
            user_vec: float32 ``[dim]`` user vector, or ``None`` for a cold user (popularity).
            user_key: the user's raw key, used to look up seen items (unknown keys have none).
            n: number of candidates.
            exclude_keys: raw item keys the caller excludes (unknown keys are ignored: they
                can never be returned anyway).
            exclude_rows: item rows the caller excludes.
            filter_seen: drop the user's seen items.

        Returns:
            ``(rows int64 [<= n], scores float32 [<= n])`` best first (no padding).
        """
        parts = []
        if filter_seen and user_key is not None:
            parts.append(self.seen_rows([user_key]).indices)
        if exclude_keys is not None and len(exclude_keys):
            r = key_rows(np.asarray(list(exclude_keys)), self.item_keys)
            parts.append(r[r >= 0])
        if exclude_rows is not None and len(exclude_rows):
            r = np.asarray(exclude_rows, dtype=np.int64)
            if r.min() < 0 or r.max() >= self.n_items:
                raise ConfigError(f"candidates: exclude_rows must be in [0, {self.n_items}), got {r.min()}..{r.max()}")
            parts.append(r)
        cols = np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
        ex = CSR(np.array([0, cols.size], dtype=np.int64), cols.astype(np.int64), self.n_items)
        vec = None if user_vec is None else np.asarray(user_vec, dtype=np.float32).reshape(1, -1)
        rows, scores = self.candidates_batch(vec, n, ex, cold=np.array([vec is None]))
        keep = rows[0] >= 0
        return rows[0][keep], scores[0][keep]


def final_scores(ranker_logits: np.ndarray, retrieval_logits: np.ndarray | None, blend: float) -> np.ndarray:
    """The order of a re-ranked list, offline (``evaluate --task topk``) and online alike:
    ``log sigmoid(ranker logit) + blend * retrieval logit`` (retrieval logit = search score /
    temperature). ``blend = 0`` or no retrieval logits (a cold user's popularity candidates, or
    caller-given items) orders by the ranker alone.

    Why the blend: a ranker trained on logged rows models P(label | logged); whether the user
    engages with an item at all is what the retriever learned, so a re-ranked list keeps part of
    its score (``task_config.rerank_blend`` of the retriever).
    """
    s = -np.logaddexp(0.0, -np.asarray(ranker_logits, dtype=np.float64))  # log sigmoid
    if blend and retrieval_logits is not None:
        s = s + blend * np.asarray(retrieval_logits, dtype=np.float64)
    return s
