"""Build an item index from a retriever checkpoint and a prepared item source (``widedeep index``)."""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import numpy as np

from widedeep.errors import CheckpointError, DataError
from widedeep.model.checkpoint import load_checkpoint
from widedeep.model.two_tower import search_vectors
from widedeep.paths import Location
from widedeep.retrieval.data import (
    Catalog,
    build_catalog,
    embed,
    first_by_key,
    read_split,
    side_columns,
    split_columns,
)
from widedeep.retrieval.index import build_index, save_index
from widedeep.retrieval.popularity import item_popularity

log = logging.getLogger(__name__)


def load_items(fs: Any, items: str | Path) -> Catalog:
    """The catalog from a prepared directory (all splits), one split directory, or a Parquet file."""
    p = Location.of(items)
    if (p / "feature_space.json").exists():
        return build_catalog(fs, p)
    if not p.exists():
        raise DataError(f"--items {p}: no such file, directory or object")
    t = read_split(p, [fs.item_key, *side_columns(fs, ("item",))])
    keys, rows = first_by_key(t, fs.item_key)
    return Catalog(keys, rows.drop_columns([fs.item_key]))


def positive_counts(fs: Any, items: str | Path, catalog: Catalog) -> np.ndarray:
    """The popularity of every catalog row (``widedeep.retrieval.popularity``) for the popularity
    prior: from the train split of a prepared directory, else from the given split or file."""
    p = Location.of(items)
    src = p / "train" if (p / "feature_space.json").exists() else p
    user = [fs.user_key] if fs.user_key and fs.user_key in split_columns(src) else []
    return item_popularity(
        read_split(src, [fs.item_key, "label", *user]), fs.item_key, catalog.keys, fs.user_key if user else None
    )


def build_item_index(
    checkpoint: str,
    items: str,
    out: str,
    *,
    kind: str = "auto",
    exact_max_items: int = 1_000_000,
    recall_k: int = 100,
    **hnsw: Any,
) -> dict[str, Any]:
    """Embed every catalog item with the checkpoint's item tower, build and save the index."""
    ck = load_checkpoint(checkpoint)
    if ck.task != "retrieval":
        raise CheckpointError(f"--checkpoint {checkpoint}: task is {ck.task!r}, expected a retriever ('retrieval')")
    fs = ck.feature_space
    if not fs.item_key:
        raise DataError(f"{checkpoint}: its FeatureSpace declares no item_key")
    catalog = load_items(fs, items)
    t0 = time.monotonic()
    vectors = embed(ck.model, "item", catalog.table)
    cfg = getattr(ck.model, "module", ck.model).cfg
    if cfg.popularity_prior:
        vectors = search_vectors(cfg, "item", vectors, positive_counts(fs, items, catalog))
    log.info("embedded %d items in %.1fs", catalog.n_items, time.monotonic() - t0)
    index, info = build_index(vectors, kind, recall_k=recall_k, exact_max_items=exact_max_items, **hnsw)
    info["checkpoint"] = str(checkpoint)
    info["feature_space_hash"] = fs.content_hash
    save_index(out, catalog.keys, vectors, index, info)
    return info


__all__ = ["build_item_index", "load_items"]
