"""The candidate policy: which N items a user gets before ranking.

One implementation serves offline evaluation (``candidates_batch`` over all test users) and the
online Retriever (``candidates`` for one request, which calls the same batch path), so what
is measured offline is what is served.

Policy:

- a user the model can place (a user vector) gets the top-N of the item index; with an
  item-to-item source (``ItemNeighbors``, ``SourceMix.item_share > 0``) and a history of liked
  items, a share of the N comes from that source instead (its best items the user has not
  seen, de-duplicated against the index's), and every candidate's retrieval score is the index
  score plus ``SourceMix.item_weight`` x its item-to-item score, whichever source found it;
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
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch

from widedeep.errors import ConfigError
from widedeep.retrieval.index import ItemIndex
from widedeep.retrieval.interactions import CSR, key_rows
from widedeep.retrieval.neighbors import ItemNeighbors
from widedeep.retrieval.topk import BLOCK_ELEMS, rank_topk

#: the ``sources`` code of a candidate: which source put it in the list
SOURCE_INDEX, SOURCE_ITEM_TO_ITEM, SOURCE_POPULARITY = 0, 1, 2
SOURCE_NAMES = ("two_tower", "item_to_item", "popularity")


@dataclass(frozen=True)
class SourceMix:
    """How the item-to-item source joins the index (two-tower) source.

    Args:
        item_share: share of the N candidates of a user with a history taken from the
            item-to-item source (0 = off); the rest come from the index.
        item_weight: weight of the item-to-item score in every candidate's retrieval score
            (index score + item_weight x item-to-item score).
    """

    item_share: float = 0.0
    item_weight: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.item_share <= 1.0:
            raise ConfigError(f"item_share: must be in [0, 1], got {self.item_share}")
        if self.item_weight < 0:
            raise ConfigError(f"item_weight: must be >= 0, got {self.item_weight}")


@dataclass(frozen=True)
class Candidates:
    """``rows int64 [U, n]`` (-1 padding), ``scores float32 [U, n]`` best first, and the source
    code of each candidate (``SOURCE_*``; -1 for padding)."""

    rows: np.ndarray
    scores: np.ndarray
    sources: np.ndarray


def merge_first(first: np.ndarray, second: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the distinct items of ``first`` then of ``second`` (-1 = none), cut to ``n``:
    ``(rows int64 [U, n], from_first bool [U, n])`` (-1 padding)."""
    cat = np.concatenate([first, second], axis=1)
    from_first = np.zeros(cat.shape, dtype=bool)
    from_first[:, : first.shape[1]] = True
    order = np.argsort(cat, axis=1, kind="stable")  # equal items keep their left-to-right order
    srt = np.take_along_axis(cat, order, 1)
    dup_sorted = np.zeros(cat.shape, dtype=bool)
    dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
    dup = np.zeros(cat.shape, dtype=bool)
    np.put_along_axis(dup, order, dup_sorted, 1)
    ok = (cat >= 0) & ~dup
    pos = np.cumsum(ok, axis=1) - 1
    take = ok & (pos < n)
    rows = np.full((cat.shape[0], n), -1, dtype=np.int64)
    src = np.zeros((cat.shape[0], n), dtype=bool)
    r, c = np.nonzero(take)
    rows[r, pos[r, c]] = cat[r, c]
    src[r, pos[r, c]] = from_first[r, c]
    return rows, src


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
        neighbors: the item-to-item source (``None``: the index alone).
        item_vectors: float32 ``[n_items, dim]`` the index's vectors (scores item-to-item
            candidates by the index's measure); needed with ``neighbors``.
        mix: how the two sources are merged.
    """

    def __init__(
        self,
        index: ItemIndex,
        popularity: np.ndarray,
        item_keys: np.ndarray,
        seen: Mapping[Any, np.ndarray] | tuple[np.ndarray, CSR] | None = None,
        neighbors: ItemNeighbors | None = None,
        item_vectors: np.ndarray | None = None,
        mix: SourceMix | None = None,
    ) -> None:
        self.neighbors = neighbors
        self.mix = mix or SourceMix()
        self.item_vectors = None if item_vectors is None else torch.from_numpy(np.asarray(item_vectors, np.float32))
        if neighbors is not None and (self.item_vectors is None or neighbors.n_items != index.n_items):
            raise ConfigError(
                f"CandidateGenerator: the item-to-item source needs the index's vectors and "
                f"{index.n_items} items (it has {neighbors.n_items})"
            )
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
        self,
        user_vecs: np.ndarray | None,
        n: int,
        exclude: CSR | None = None,
        cold: np.ndarray | None = None,
        recent: CSR | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Candidates for many users at once (offline evaluation uses this directly).

        Args:
            user_vecs: float32 ``[U, dim]`` user vectors, or ``None`` when every user is cold.
            n: candidates per user.
            exclude: per-user item rows that must not be returned (seen items and caller
                exclusions, already merged), CSR with ``U`` rows.
            cold: bool ``[U]``: users without a usable vector (popularity fallback).
            recent: per-user liked item rows the item-to-item source is queried with (CSR, ``U`` rows).

        Returns:
            ``(rows int64 [U, n], scores float32 [U, n])``; cold users' scores are popularity.
        """
        c = self.sourced(user_vecs, n, exclude, cold, recent)
        return c.rows, c.scores

    def sourced(
        self,
        user_vecs: np.ndarray | None,
        n: int,
        exclude: CSR | None = None,
        cold: np.ndarray | None = None,
        recent: CSR | None = None,
    ) -> Candidates:
        """``candidates_batch`` with the source of every candidate (``Candidates``)."""
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
        sources = np.full((n_users, n), -1, dtype=np.int8)
        warm_idx = np.flatnonzero(~cold)
        cold_idx = np.flatnonzero(cold)
        if warm_idx.size:
            vecs = np.ascontiguousarray(user_vecs[warm_idx], dtype=np.float32)
            c = self._warm(vecs, n, ex.take_rows(warm_idx), None if recent is None else recent.take_rows(warm_idx))
            rows[warm_idx], scores[warm_idx], sources[warm_idx] = c.rows, c.scores, c.sources
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
            sources[cold_idx] = np.where(r >= 0, SOURCE_POPULARITY, -1)
        return Candidates(rows, scores, sources)

    def _warm(self, vecs: np.ndarray, n: int, ex: CSR, recent: CSR | None) -> Candidates:
        """Index candidates, merged with item-to-item ones when the source and a history exist."""
        r, s = self.index.search(vecs, n, ex)
        n_item = round(self.mix.item_share * n)
        if self.neighbors is None or recent is None or (n_item == 0 and self.mix.item_weight == 0):
            return Candidates(r, s, np.where(r >= 0, SOURCE_INDEX, -1).astype(np.int8))
        nb = self.neighbors

        def item_scores(lo: int, hi: int) -> torch.Tensor:
            sc = nb.score(recent, lo, hi)
            return sc.masked_fill_(sc <= 0, -torch.inf)  # no shared user with any liked item: not a candidate

        item_rows = (
            rank_topk(item_scores, len(vecs), self.n_items, n_item, ex, label="item-to-item")[0] if n_item else r[:, :0]
        )
        rows, from_item = merge_first(item_rows, r, n)
        q = torch.from_numpy(vecs)
        scores = np.full(rows.shape, -np.inf, dtype=np.float32)
        step = max(1, BLOCK_ELEMS // max(self.n_items, n * q.shape[1], 1))
        for lo in range(0, len(vecs), step):  # score every candidate by both measures
            hi = min(len(vecs), lo + step)
            blk = rows[lo:hi]
            safe = torch.from_numpy(np.maximum(blk, 0))
            idx = (q[lo:hi].unsqueeze(1) * self.item_vectors[safe]).sum(-1)
            i2i = torch.gather(nb.score(recent, lo, hi), 1, safe) if self.mix.item_weight else 0.0
            scores[lo:hi] = np.where(blk >= 0, (idx + self.mix.item_weight * i2i).numpy(), -np.inf)
        order = np.argsort(-scores, axis=1, kind="stable")
        src = np.where(from_item, SOURCE_ITEM_TO_ITEM, SOURCE_INDEX)
        rows, scores, src = (np.take_along_axis(a, order, 1) for a in (rows, scores, src))
        return Candidates(rows, scores, np.where(rows >= 0, src, -1).astype(np.int8))

    def candidates(
        self,
        user_vec: np.ndarray | None,
        user_key: Any = None,
        n: int = 100,
        exclude_keys: Sequence[Any] | None = None,
        exclude_rows: Sequence[int] | None = None,
        filter_seen: bool = True,
        liked_rows: Sequence[int] | None = None,
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
            liked_rows: the user's liked item rows (the item-to-item source's query).

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
        liked = np.unique(np.asarray(liked_rows if liked_rows is not None else [], dtype=np.int64))
        recent = CSR(np.array([0, liked.size], dtype=np.int64), liked, self.n_items)
        rows, scores = self.candidates_batch(vec, n, ex, cold=np.array([vec is None]), recent=recent)
        keep = rows[0] >= 0
        return rows[0][keep], scores[0][keep]


RankerTerm = Literal["log_sigmoid", "logit"]
RANKER_TERMS: tuple[RankerTerm, ...] = ("log_sigmoid", "logit")


def ranker_term_of(config: Mapping[str, Any] | None) -> RankerTerm:
    """How the final order reads a ranker's logit, from the ranker's resolved job config.

    ``log_sigmoid``: the ranker learned its logged rows alone (impressions: P(label | shown)), so
    ``log sigmoid(logit)`` is a log-probability the retrieval logit multiplies. ``logit``: the
    ranker learned against drawn negatives (``task_config.sampled_negatives`` or
    ``retrieval_negatives``: ``RankingTaskConfig.draws_negatives`` of ``widedeep.train.negatives``,
    asked here of the saved dict); a classifier of positives against k
    items drawn from q converges to ``logit = log p(item | user) - log(k q(item))`` (the
    negative-sampling / NCE reading), a log-probability ratio whose differences matter most among
    the items far likelier than the noise, exactly where ``log sigmoid`` flattens to 0. Read as
    is, the ranker still orders the candidates it is most sure of, and the blend's retrieval
    logit (which carries popularity, ``popularity_prior``) supplies what ``q`` took out.
    """
    tc = (config or {}).get("task_config") or {}
    drawn = int(tc.get("sampled_negatives") or 0) + int(tc.get("retrieval_negatives") or 0)
    return "logit" if (config or {}).get("task", "ranking") == "ranking" and drawn > 0 else "log_sigmoid"


def final_scores(
    ranker_logits: np.ndarray, retrieval_logits: np.ndarray | None, blend: float, term: RankerTerm = "log_sigmoid"
) -> np.ndarray:
    """The order of a re-ranked list, offline (``evaluate --task topk``) and online alike:
    ``ranker term + blend * retrieval logit`` (retrieval logit = search score / temperature; the
    ranker term ``log sigmoid(logit)`` or the logit itself, ``ranker_term_of`` says which).
    ``blend = 0`` or no retrieval logits (a cold user's popularity candidates, or caller-given
    items) orders by the ranker alone.

    Why the blend: a ranker trained on logged rows models P(label | logged); whether the user
    engages with an item at all is what the retriever learned, so a re-ranked list keeps part of
    its score (``task_config.rerank_blend`` of the retriever).
    """
    if term not in RANKER_TERMS:
        raise ConfigError(f"ranker term: expected one of {list(RANKER_TERMS)}, got {term!r}")
    x = np.asarray(ranker_logits, dtype=np.float64)
    s = x if term == "logit" else -np.logaddexp(0.0, -x)  # log sigmoid
    if blend and retrieval_logits is not None:
        s = s + blend * np.asarray(retrieval_logits, dtype=np.float64)
    return s
