"""Item popularity: one definition for training, evaluation, indexes and serving.

**The popularity of an item is its number of positive rows (``label > 0.5``,
``widedeep.retrieval.interactions.positive_rows``) in the train split.** Rows, not distinct
users: a user who engaged with an item twice counts twice, which is what the sampling
probability of the logQ correction needs (training batches are made of rows) and what the
popularity prior, the most-popular baseline, cold-start candidates and the sampled negatives of
the ranker use.

Consumers apply their own smoothing on top of the raw count, and say so where they do: the logQ
table and the ranker's negative sampler use ``count + 1`` (an item never seen in training still
has a non-zero probability), the popularity prior ``log(1 + count)``.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from widedeep.retrieval.interactions import key_rows, positive_rows


def item_counts(table: pa.Table, item_col: str, catalog_keys: np.ndarray) -> np.ndarray:
    """float64 ``[len(catalog_keys)]``: rows of ``table`` per catalog item (keys not in the catalog are ignored)."""
    rows = key_rows(table.column(item_col), catalog_keys)
    return np.bincount(rows[rows >= 0], minlength=len(catalog_keys)).astype(np.float64)


def item_popularity(train: pa.Table, item_col: str, catalog_keys: np.ndarray) -> np.ndarray:
    """float64 ``[len(catalog_keys)]``: the popularity of every catalog item, from the train
    split's rows ``train`` (with ``label``): its count of positive rows."""
    return item_counts(positive_rows(train), item_col, catalog_keys)
