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
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from widedeep.config import from_dict
from widedeep.errors import ConfigError, DataError
from widedeep.features.spec import CrossedFeature
from widedeep.retrieval.data import build_catalog, load_rows
from widedeep.retrieval.popularity import item_popularity


@dataclass(frozen=True)
class RankingTaskConfig:
    """``task_config`` of a ranking job.

    Args:
        sampled_negatives: label-0 rows added per row, each with an item drawn from the
            training catalog (0 = off: train on the logged rows only).
        sampling_power: items are drawn with probability proportional to
            ``(positive count + 1) ** sampling_power``.
    """

    sampled_negatives: int = 0
    sampling_power: float = 0.75

    def __post_init__(self) -> None:
        if self.sampled_negatives < 0:
            raise ConfigError(f"task_config.sampled_negatives: must be >= 0, got {self.sampled_negatives}")
        if not 0.0 <= self.sampling_power <= 1.0:
            raise ConfigError(f"task_config.sampling_power: must be in [0, 1], got {self.sampling_power}")


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
        root: the prepared directory (its ``train`` split gives the catalog and the counts).
        power: see ``RankingTaskConfig.sampling_power``.
    """

    def __init__(self, fs: Any, root: str | Path, power: float) -> None:
        if not fs.item_key:
            raise ConfigError(
                "task_config.sampled_negatives: needs a FeatureSpace with an item_key (the catalog "
                "negatives are drawn from); declare item_key in the spec"
            )
        self.fs = fs
        self.catalog = build_catalog(fs, root, splits=("train",))
        train = load_rows(root, ("train",), [fs.item_key, "label", *([fs.user_key] if fs.user_key else [])])
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
        missing = [c for c in self.item_columns if c not in table.column_names]
        if missing:
            raise DataError(f"sampled negatives: the batch lacks item column(s) {missing}")
        rng = np.random.default_rng(_content_seed(table, seed))
        src = np.repeat(np.arange(table.num_rows), k)
        items = self.catalog.table.take(pa.array(self.sample(len(src), rng)))
        neg = table.take(pa.array(src))
        for c in self.item_columns:
            neg = neg.set_column(neg.schema.get_field_index(c), c, items.column(c))
        if self.crosses:
            neg = self.fs.add_crosses(neg, only=self.crosses)
        label_type = table.schema.field("label").type
        neg = neg.set_column(neg.schema.get_field_index("label"), "label", pa.array(np.zeros(len(src)), label_type))
        return pa.concat_tables([table, neg.select(table.column_names).cast(table.schema)])


def _content_seed(table: pa.Table, seed: int) -> int:
    """A seed from the batch's label and first id column, so the same batch gets the same negatives."""
    h = zlib.crc32(np.asarray(table.column("label").to_numpy(zero_copy_only=False)).tobytes())
    first = table.column(0).combine_chunks()
    if pa.types.is_integer(first.type):
        h = zlib.crc32(np.asarray(first.to_numpy(zero_copy_only=False)).tobytes(), h)
    return (int(seed) << 32) ^ h
