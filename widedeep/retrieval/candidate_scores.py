"""The candidate scores (``CandidateScoreFeature``): retrieval's evidence for a candidate, as ranker inputs.

Why: the ranker orders the candidates the item-to-item source and the two-tower index propose.
What tells them apart first is how strongly the user's history points at each (the
co-occurrence of the history items with the candidate among the train split's positives, the
signal of item-kNN and of the item-to-item source) and how popular it is; with those as inputs
the ranker learns how much to trust them for which users and items, where the served order's
blend (``widedeep.retrieval.candidates.final_scores``) can only add a fixed share. The two-tower
score is not one of them: ``topk.sh`` and the job configs train the ranker before (and
independently of) the retriever, so that score enters the served order through the blend.

The one transform: ``CandidateStats.add`` appends every candidate score column, computed from the
row's liked column (``liked_column(history)``: the user's latest positives before the row, most
recent first, the history crosses' history, ``widedeep.retrieval.liked``) and the row's own item
id (the ``history`` feature's column). Training (``widedeep.train.ranking_task``: the logged rows
and every sampled negative, each with its own item), offline evaluation (every candidate) and
serving (the bundle's ``candidate_stats.parquet``, ``widedeep.serve.pipeline``) call it.

Leave the row out: the statistics are those of the train split's positives, which hold the
training rows themselves. Counted as they are, a logged positive's co-occurrence with each of the
user's history items would include the user's own 1 and its popularity the user's own 1, which a
candidate at evaluation or serving (never one of the user's train items) never has: the ranker
would learn that leak. So at training, a row whose (user, item) is a positive of the train split
gets the scores of the train split without that one positive: ``co(c, h) - 1`` with each history
item (all of them the user's positives) and popularity ``- 1``. At evaluation and serving the
candidates are never the user's train items, so the same formula has nothing to remove.

Everything is vectorized over rows (CSR arithmetic, sorted-key look-ups, no per-row Python).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from widedeep.errors import DataError
from widedeep.features.spec import CandidateScoreFeature, liked_column
from widedeep.model.two_tower import history_source
from widedeep.paths import Location
from widedeep.retrieval.data import read_splits
from widedeep.retrieval.interactions import CSR, key_rows, positive_rows, unique_keys
from widedeep.retrieval.liked import _jagged, with_columns
from widedeep.retrieval.neighbors import ItemNeighbors, NeighborSettings
from widedeep.retrieval.popularity import item_popularity

#: neighbours kept per item: item-kNN's standard neighbourhood (plain cosine, 100 neighbours, as
#: the retrieval negatives are drawn from), not a setting tuned for the ranker
NEIGHBORS = 100


def candidate_score_features(fs: Any) -> list[CandidateScoreFeature]:
    """The FeatureSpace's candidate scores, in spec order."""
    return [f for f in fs.features if isinstance(f, CandidateScoreFeature)]


def score_history(fs: Any) -> str:
    """The item-id feature every candidate score reads (the item key's feature)."""
    id_col = history_source(fs)[0]
    for f in candidate_score_features(fs):
        if f.history != id_col:
            raise DataError(
                f"candidate score {f.name!r}: history {f.history!r} is not the item key's feature {id_col!r} "
                "(the co-occurrence statistics are over item ids)"
            )
    return id_col


@dataclass(frozen=True)
class CandidateStats:
    """What the candidate scores are computed from: co-occurrence and popularity over item ids.

    Args:
        keys: sorted int64 ``target * n_ids + history`` of every kept (candidate, history item)
            pair: each target item's ``NEIGHBORS`` best history items by cosine.
        co: float64 co-occurrence count of each kept pair (users with both as positives).
        popularity: float64 ``[n_ids]`` popularity of every id (``widedeep.retrieval.popularity``).
        user_keys: the train split's users (training only: the rows left out, see the module doc).
        positives: sorted int64 ``user row * n_ids + id`` of the train split's positives (training only).
    """

    keys: np.ndarray
    co: np.ndarray
    popularity: np.ndarray
    user_keys: np.ndarray | None = None
    positives: np.ndarray | None = None

    @property
    def n_ids(self) -> int:
        return int(self.popularity.shape[0])

    @staticmethod
    def fit(fs: Any, rows: pa.Table) -> CandidateStats:
        """From prepared rows (``user_key``, the item-id feature's column, ``label``): the train split."""
        id_col = score_history(fs)
        n_ids = history_source(fs)[1]
        pos = positive_rows(rows.select(["user_key", id_col, "label"]))
        users = unique_keys(pos.column("user_key"))
        u = key_rows(pos.column("user_key"), users)
        ids = np.asarray(pos.column(id_col).to_numpy(zero_copy_only=False), dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= n_ids):
            raise DataError(f"candidate scores: column {id_col!r} holds ids outside 0..{n_ids - 1}")
        x = CSR.from_pairs(u, ids, len(users), n_ids)
        popularity = item_popularity(pos, id_col, np.arange(n_ids, dtype=np.int64), "user_key")
        targets, sources, w = ItemNeighbors.fit(x, NeighborSettings(neighbors=NEIGHBORS)).arrays()
        # the cosine is co / sqrt(|t| |s|): the count back, exactly (an integer)
        co = np.rint(w.astype(np.float64) * np.sqrt(popularity[targets] * popularity[sources]))
        keys = targets.astype(np.int64) * np.int64(n_ids) + sources
        order = np.argsort(keys, kind="stable")
        positives = x.row_ids() * np.int64(n_ids) + x.indices  # sorted: CSR rows, then columns
        return CandidateStats(keys[order], co[order], popularity, users, positives)

    def serving(self) -> CandidateStats:
        """The statistics without the training-only row index (what a bundle stores)."""
        return CandidateStats(self.keys, self.co, self.popularity)

    def left_out(self, users: Any, ids: np.ndarray) -> np.ndarray:
        """float64 1 where the row's (user, item) is a positive of the train split, else 0."""
        if self.positives is None or self.user_keys is None:
            raise DataError("candidate scores: these statistics carry no train positives to leave out (serving copy)")
        if not len(self.positives):
            return np.zeros(len(ids))
        ur = key_rows(users, self.user_keys)
        code = np.maximum(ur, 0) * np.int64(self.n_ids) + ids
        at = np.minimum(np.searchsorted(self.positives, code), len(self.positives) - 1)
        return ((ur >= 0) & (self.positives[at] == code)).astype(np.float64)

    def scores(
        self, hist_values: np.ndarray, hist_offsets: np.ndarray, ids: np.ndarray, left_out: np.ndarray | None = None
    ) -> dict[str, np.ndarray]:
        """``{score: float64 [n]}`` of ``n`` rows: row ``r``'s history is
        ``hist_values[hist_offsets[r]:hist_offsets[r + 1]]`` and its candidate ``ids[r]``."""
        n, n_ids = len(ids), self.n_ids
        ids = np.asarray(ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= n_ids):
            raise DataError(f"candidate scores: item id outside 0..{n_ids - 1}")
        d = np.zeros(n) if left_out is None else left_out
        row = np.repeat(np.arange(n, dtype=np.int64), np.diff(hist_offsets))
        h = np.asarray(hist_values, dtype=np.int64)
        h_ok = (h >= 0) & (h < n_ids)
        h = np.where(h_ok, h, 0)
        key = ids[row] * np.int64(n_ids) + h
        keys, counts = (self.keys, self.co) if len(self.keys) else (np.full(1, -1, np.int64), np.zeros(1))
        at = np.minimum(np.searchsorted(keys, key), len(keys) - 1)
        co = np.where(h_ok & (keys[at] == key), counts[at] - d[row], 0.0)
        pop_c = np.maximum(self.popularity[ids] - d, 0.0)
        den = np.sqrt(pop_c[row] * self.popularity[h])
        sim = np.where(co > 0, co / np.where(den > 0, den, 1.0), 0.0)
        return {
            "similarity": np.bincount(row, sim, minlength=n),
            "hits": np.bincount(row, (co > 0).astype(np.float64), minlength=n),
            "popularity": pop_c,
        }

    def columns(self, fs: Any, table: pa.Table, users: Any | None = None) -> dict[str, pa.Array]:
        """``{feature: int64 bucket ids}`` of every candidate score of ``table``'s rows (its liked
        column and item id column); ``users``: the rows' user keys, to leave each row's own
        positive out (training, see the module doc)."""
        feats = candidate_score_features(fs)
        if not feats:
            return {}
        id_col = score_history(fs)
        liked = liked_column(id_col)
        for c in (liked, id_col):
            if c not in table.column_names:
                raise DataError(f"candidate scores: column {c!r} missing; have {table.column_names}")
        hv, ho = _jagged(table.column(liked))
        ids = np.asarray(_jagged(table.column(id_col))[0], dtype=np.int64)
        s = self.scores(hv, ho, ids, None if users is None else self.left_out(users, ids))
        return {
            f.name: pa.array(np.searchsorted(np.asarray(f.boundaries, np.float64), s[f.score], side="right"))
            for f in feats
        }

    def add(self, fs: Any, table: pa.Table, users: Any | None = None) -> pa.Table:
        """``table`` plus its candidate score columns (``columns``)."""
        return with_columns(table, self.columns(fs, table, users))

    def arrays(self) -> dict[str, np.ndarray]:
        """What a serving bundle stores."""
        return {"keys": self.keys, "co": self.co, "popularity": self.popularity}


def candidate_stats_from(fs: Any, root: str | Location, splits: tuple[str, ...] = ("train",)) -> CandidateStats | None:
    """``CandidateStats`` of the ``splits`` of a prepared directory: what the model was fitted on
    (the train split; train and valid for a refit, ``widedeep.train.config.RefitConfig``), what
    training and offline evaluation know. None when the FeatureSpace has no candidate score; a
    missing split raises ``DataError`` naming it (statistics over fewer splits than the model
    fitted would differ from training's)."""
    if not candidate_score_features(fs):
        return None
    return CandidateStats.fit(fs, read_splits(root, splits, ["user_key", score_history(fs), "label"]))
