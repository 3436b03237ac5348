"""Sampled negatives for a ranker trained on logs without impressions (``task_config`` of ``task: ranking``).

Why: a ranker learns to separate what its training rows separate. On impression logs (the
paper's app store: every shown app is a row, installed or not) that is exactly the ranking
problem. On rating logs such as MovieLens every row is an item the user chose to rate, so a
ranker trained on them learns P(liked | rated) and cannot tell a candidate the user will
never watch from one they will; re-ranking retrieval candidates with it makes top-K lists
worse. Adding ``sampled_negatives`` rows per training row — the row's user and context with an
item drawn from the training catalog, label 0 — teaches the ranker P(a positive event | user,
item) instead: the usual implicit-feedback recipe (e.g. NCF, He et al. 2017).

Items are drawn with probability proportional to ``count ** sampling_power`` (``count`` = the
item's popularity + 1, ``widedeep.retrieval.popularity``; power 0 = uniform, 1 = popularity, 0.75 the word2vec
compromise): popular items are the ones retrieval proposes, so they must appear as negatives
often enough for the ranker to learn more than popularity. The negative rows take the item-side
columns from the catalog and recompute the user x item crosses from the component ids
(``FeatureSpace.add_crosses``), the same way serving builds candidate rows. Sampling is seeded
by the batch's content, so validation and ``widedeep evaluate`` see the same negatives every
time.

**Retrieval negatives** (``retrieval_negatives``): popularity-drawn items are mostly easy; the
items a re-ranker must tell apart are the ones retrieval puts high for that user. Each such row
takes an item drawn uniformly from the top ``retrieval_pool`` of the item-to-item source
(``widedeep.retrieval.neighbors``: item-kNN neighbourhoods of the train split, the co-occurrence
source the candidate stage merges) queried with the user's latest positives *before the row*
(``widedeep.retrieval.history``, causal like the history crosses), leaving out every item the
user has a train row of (taken or rated: "not taken" is only certain for those never touched).
The two-tower score itself is not available here: ``topk.sh`` and the job configs train the
ranker before (and independently of) the retriever, so the retrieval score enters the served
order through ``final_scores``' blend, chosen on the valid split. Logs with impressions (the
app-store generator, Criteo) keep their logged negatives: leave both counts at 0 there.

How the served order reads the logit follows from these counts
(``widedeep.retrieval.candidates.ranker_term_of``): with drawn negatives the classifier's logit
estimates ``log p(item | user) - log(k q(item))`` (q: the distribution the negatives are drawn
from), a log-ratio that ``final_scores`` adds to the blend as is; ``log sigmoid`` of it, the right
reading of a ranker of logged impressions (P(label | shown)), would flatten the differences among
the candidates the ranker is surest of.

**The listwise term** (``listwise_weight``): the log loss scores every row on its own, so it
spends capacity on calibrating P(positive) across users and contexts, which the served order
never compares: the ranker only ever orders one user's candidates at one time. Each logged
positive and its own negatives (same user, same time) form such a list, and the softmax
cross-entropy of the positive within it (sampled softmax, the objective the two-tower retriever
trains with) rewards exactly that order. The log loss stays beside it: the logged label-0 rows
(rated, not liked) belong to no list, and the logit stays the log-odds that ``final_scores`` reads.

**Logged label-0 rows** (``logged_negatives``): on a rating log a logged label-0 row is an item
the user chose to watch and rated low. Kept (the default), the ranker also learns P(liked | rated)
among the items users choose, and it learns the items most like the ones users take as label 0
beside the drawn items they never took. The top-K task asks a different question of every
candidate (will the user take it and like it), and the drawn negatives are exactly the items
that were not taken: with ``logged_negatives: false`` a batch keeps its logged positives only and
each is learnt against its own drawn negatives. Needs drawn negatives and a binary label; the AUC
the job reports on valid (and ``widedeep evaluate`` on test) is then that of the positives
against their drawn negatives, the rows the ranker is trained on.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

from widedeep.config import from_dict
from widedeep.errors import ConfigError, DataError
from widedeep.features.spec import CrossedFeature
from widedeep.paths import Location
from widedeep.retrieval.data import build_catalog, first_by_key, interactions, load_rows, split_columns
from widedeep.retrieval.history import TIME_COLUMN, Histories
from widedeep.retrieval.interactions import CSR, key_rows
from widedeep.retrieval.neighbors import ItemNeighbors, NeighborSettings
from widedeep.retrieval.popularity import item_popularity
from widedeep.retrieval.topk import rank_topk


@dataclass(frozen=True)
class RankingTaskConfig:
    """``task_config`` of a ranking job.

    Args:
        sampled_negatives: label-0 rows added per row, each with an item drawn from the
            training catalog (0 = off: train on the logged rows only).
        sampling_power: items are drawn with probability proportional to
            ``(positive count + 1) ** sampling_power``.
        retrieval_negatives: label-0 rows added per row with an item the item-to-item source
            ranks high for the row's user at the row's time (see the module doc).
        retrieval_pool: those items are drawn from the source's top ``retrieval_pool``.
        retrieval_history: the user's latest positives the source is queried with.
        listwise_weight: weight of the listwise term added to the log loss: per logged
            positive, the softmax cross-entropy of that row against its own negatives (the
            module doc says why; 0 = log loss only).
        logged_negatives: keep the logged label-0 rows as training rows; false: a batch keeps
            its logged positives and learns them against the drawn negatives only (the module
            doc says when).
    """

    sampled_negatives: int = 0
    sampling_power: float = 0.75
    retrieval_negatives: int = 0
    retrieval_pool: int = 50
    retrieval_history: int = 50
    listwise_weight: float = 0.0
    logged_negatives: bool = True

    @property
    def draws_negatives(self) -> bool:
        """Whether the ranker learns against drawn negatives (either kind). The served order reads
        such a ranker by its logit: ``widedeep.retrieval.candidates.ranker_term_of`` asks the same of
        the saved job config (that layer cannot import this one)."""
        return bool(self.sampled_negatives or self.retrieval_negatives)

    def __post_init__(self) -> None:
        if self.retrieval_negatives < 0:
            raise ConfigError(f"task_config.retrieval_negatives: must be >= 0, got {self.retrieval_negatives}")
        if self.retrieval_pool < 1:
            raise ConfigError(f"task_config.retrieval_pool: must be >= 1, got {self.retrieval_pool}")
        if self.retrieval_history < 1:
            raise ConfigError(f"task_config.retrieval_history: must be >= 1, got {self.retrieval_history}")
        if self.sampled_negatives < 0:
            raise ConfigError(f"task_config.sampled_negatives: must be >= 0, got {self.sampled_negatives}")
        if not 0.0 <= self.sampling_power <= 1.0:
            raise ConfigError(f"task_config.sampling_power: must be in [0, 1], got {self.sampling_power}")
        if self.listwise_weight < 0:
            raise ConfigError(f"task_config.listwise_weight: must be >= 0, got {self.listwise_weight}")
        if self.listwise_weight and not self.draws_negatives:
            raise ConfigError(
                "task_config.listwise_weight: needs sampled_negatives or retrieval_negatives (the list a "
                "positive is ranked against)"
            )
        if not self.logged_negatives and not self.draws_negatives:
            raise ConfigError(
                "task_config.logged_negatives: false needs sampled_negatives or retrieval_negatives "
                "(without logged or drawn negatives every training row is a positive)"
            )


def ranking_config(cfg: Any) -> RankingTaskConfig:
    """The validated ranking ``task_config`` of a TrainConfig (or of its resolved dict)."""
    raw = cfg.get("task_config", {}) if isinstance(cfg, dict) else getattr(cfg, "task_config", {})
    return from_dict(RankingTaskConfig, raw or {}, "task_config")


def pair_crosses(fs: Any) -> list[str]:
    """Crossed features with a user/context and an item component (recomputed for negatives)."""
    return [f.name for f in fs.features if isinstance(f, CrossedFeature) and fs.feature_side(f.name) == "pair"]


def extra_columns(fs: Any) -> list[str]:
    """Columns negatives need besides the model's: the components of the pair crosses."""
    out: list[str] = []
    for f in fs.features:
        if isinstance(f, CrossedFeature) and f.name in pair_crosses(fs):
            out += list(f.inputs)
    return list(dict.fromkeys(out))


class NegativeSampler:
    """The training catalog (item-side prepared columns) and its sampling distribution.

    Args:
        fs: the FeatureSpace.
        root: the prepared directory (its ``splits`` give the catalog and the counts).
        power: see ``RankingTaskConfig.sampling_power``.
        splits: the splits the model is fitted on (``widedeep.train.config.fit_splits``).
    """

    def __init__(self, fs: Any, root: str | Path, power: float, splits: tuple[str, ...] = ("train",)) -> None:
        if not fs.item_key:
            raise ConfigError(
                "task_config.sampled_negatives: needs a FeatureSpace with an item_key (the catalog "
                "negatives are drawn from); declare item_key in the spec"
            )
        self.fs = fs
        self.catalog = build_catalog(fs, root, splits=splits)
        train = load_rows(root, splits, [fs.item_key, "label", *([fs.user_key] if fs.user_key else [])])
        counts = (
            item_popularity(train, fs.item_key, self.catalog.keys, fs.user_key) + 1.0
        )  # add-one: any item can be drawn
        p = counts**power
        self.cdf = np.cumsum(p / p.sum())
        self.item_columns = list(self.catalog.table.column_names)
        self.crosses = pair_crosses(fs)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        """``n`` catalog rows drawn from the distribution."""
        return np.minimum(np.searchsorted(self.cdf, rng.random(n), side="right"), self.catalog.n_items - 1)

    def add(self, table: pa.Table, k: int, seed: int) -> pa.Table:
        """``table`` followed by ``k`` negative rows per row (same columns, label 0)."""
        if k == 0 or table.num_rows == 0:
            return table
        return pa.concat_tables([table, self.negatives(table, k, seed)])

    def negatives(self, table: pa.Table, k: int, seed: int) -> pa.Table:
        """The ``k`` popularity-drawn negative rows of every row of ``table``."""
        rng = np.random.default_rng(_content_seed(table, seed))
        src = np.repeat(np.arange(table.num_rows), k)
        return self.negative_rows(table, src, self.sample(len(src), rng))

    def negative_rows(self, table: pa.Table, src: np.ndarray, items: np.ndarray) -> pa.Table:
        """Rows ``src`` of ``table`` with the catalog rows ``items`` as their item, label 0 (the
        user x item crosses recomputed), in ``table``'s schema."""
        missing = [c for c in self.item_columns if c not in table.column_names]
        if missing:
            raise DataError(f"sampled negatives: the batch lacks item column(s) {missing}")
        it = self.catalog.table.take(pa.array(items))
        neg = table.take(pa.array(src))
        for c in self.item_columns:
            neg = neg.set_column(neg.schema.get_field_index(c), c, it.column(c))
        if self.crosses:
            neg = self.fs.add_crosses(neg, only=self.crosses)
        label_type = table.schema.field("label").type
        neg = neg.set_column(neg.schema.get_field_index("label"), "label", pa.array(np.zeros(len(src)), label_type))
        return neg.select(table.column_names).cast(table.schema)


class RetrievalNegatives:
    """Negatives the candidate stage would propose: see the module doc.

    Args:
        base: the popularity sampler (its catalog, and the fallback for a row whose user has no
            earlier positive or whose pool is empty).
        root: the prepared directory.
        cfg: the ranking ``task_config``.
        splits: the splits the model is fitted on (``widedeep.train.config.fit_splits``).
    """

    def __init__(
        self, base: NegativeSampler, root: str | Path, cfg: RankingTaskConfig, splits: tuple[str, ...] = ("train",)
    ) -> None:
        fs = base.fs
        if not fs.user_key:
            raise ConfigError("task_config.retrieval_negatives: needs a FeatureSpace with a user_key")
        self.base, self.cfg = base, cfg
        keys = base.catalog.keys
        has_time = TIME_COLUMN in split_columns(Location.of(root) / "train")
        train = load_rows(root, splits, ["user_key", fs.item_key, "label", *([TIME_COLUMN] if has_time else [])])
        rows = key_rows(train.column(fs.item_key), keys)
        train = train.append_column("__row__", pa.array(rows))
        self.users = first_by_key(train.select(["user_key"]), "user_key")[0]
        self.seen = interactions(train, "user_key", fs.item_key, self.users, keys, positives_only=False)
        pos = interactions(train, "user_key", fs.item_key, self.users, keys, positives_only=True)
        # item-kNN's standard neighbourhood (100 neighbours, plain cosine): a proxy of what the
        # candidate stage proposes, not a tuned ranker setting
        self.neighbors = ItemNeighbors.fit(pos, NeighborSettings(neighbors=100))
        self.histories = Histories.from_rows(train.filter(pa.array(rows >= 0)), "user_key", "__row__")

    def negatives(self, table: pa.Table, k: int, seed: int) -> pa.Table:
        """``k`` retrieval negatives per row of ``table``."""
        n, n_items = table.num_rows, self.base.catalog.n_items
        users = table.column("user_key")
        before = (
            np.asarray(table.column(TIME_COLUMN).to_numpy(), np.int64) if TIME_COLUMN in table.column_names else None
        )
        lst = self.histories.lists(users, self.cfg.retrieval_history, before=before)
        offs = np.asarray(lst.offsets, dtype=np.int64)
        hist = CSR.from_pairs(
            np.repeat(np.arange(n, dtype=np.int64), np.diff(offs)),
            np.asarray(lst.values.to_numpy(), dtype=np.int64),
            n,
            n_items,
        )
        ur = key_rows(users, self.users)
        seen = self.seen.take_rows(np.maximum(ur, 0))
        keep = np.repeat(ur >= 0, seen.lengths())
        own = key_rows(table.column(self.base.fs.item_key), self.base.catalog.keys)  # a valid row's own item
        has = own >= 0
        seen = CSR.from_pairs(
            np.concatenate([seen.row_ids()[keep], np.flatnonzero(has)]),
            np.concatenate([seen.indices[keep], own[has]]),
            n,
            n_items,
        )

        def scores(lo: int, hi: int) -> torch.Tensor:
            sc = self.neighbors.score(hist, lo, hi)
            return sc.masked_fill_(sc <= 0, -torch.inf)  # no co-occurrence: not a candidate

        pool, psc = rank_topk(scores, n, n_items, self.cfg.retrieval_pool, seen, label="retrieval negatives")
        valid = (pool >= 0) & np.isfinite(psc)
        rng = np.random.default_rng(_content_seed(table, seed) ^ 0x5EED)
        src = np.repeat(np.arange(n), k)
        cnt = valid.sum(1)[src]
        pick = np.floor(rng.random(len(src)) * np.maximum(cnt, 1)).astype(np.int64)
        # the pick-th valid entry of the row (valid entries come first: top-k is best first)
        items = np.where(cnt > 0, pool[src, np.minimum(pick, pool.shape[1] - 1)], self.base.sample(len(src), rng))
        return self.base.negative_rows(table, src, items)


def _content_seed(table: pa.Table, seed: int) -> int:
    """A seed from the batch's label and first id column, so the same batch gets the same negatives."""
    h = zlib.crc32(np.asarray(table.column("label").to_numpy(zero_copy_only=False)).tobytes())
    first = table.column(0).combine_chunks()
    if pa.types.is_integer(first.type):
        h = zlib.crc32(np.asarray(first.to_numpy(zero_copy_only=False)).tobytes(), h)
    return (int(seed) << 32) ^ h
