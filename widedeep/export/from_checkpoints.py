"""Building a serving bundle from trained models and prepared data (``widedeep export``).

The catalog, the user table, the seen items and popularity all come from PREPARED rows (ids,
not raw values: an item's prepared columns are a deterministic function of its raw features), so
the same code builds a bundle from a prepared directory (``export_from_checkpoints``) and from
in-memory tables (``widedeep.export.synthetic``).

What the models fitted (popularity, the candidate scores' statistics, the item-to-item source, the
drift profile's reference) comes from the splits the checkpoints were fitted on
(``LoadedCheckpoint.fit_splits``: train, or train and valid for a refit); the settings are chosen on
valid by train-fitted models, the same path as ``evaluate --task topk``
(``widedeep.evaluation.selection.choose_fitted``).
"""

from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from widedeep.errors import CheckpointError, DataError
from widedeep.evaluation.selection import SourceChoice, choose_fitted, choosers_of, fit_splits_of
from widedeep.evaluation.topk import EvalData
from widedeep.export.bundle_writer import BundleContents, check_upload_target, upload_bundle, write_bundle
from widedeep.features import FeatureSpace
from widedeep.features.drift import ProfileBuilder, monitored
from widedeep.features.spec import CrossedFeature, is_computed
from widedeep.model.checkpoint import LoadedCheckpoint, load_checkpoint, read_meta
from widedeep.model.two_tower import HISTORY_COLUMN, history_source, search_vectors, two_tower_config
from widedeep.paths import FS_ERRORS, Location, is_uri, short_error
from widedeep.retrieval.candidate_scores import (
    CandidateStats,
    candidate_score_features,
    score_history,
)
from widedeep.retrieval.candidates import RankerTerm, ranker_term_of
from widedeep.retrieval.data import (
    SPLITS,
    embed,
    first_by_key,
    interactions,
    load_rows,
    read_splits,
    side_columns,
    split_columns,
)
from widedeep.retrieval.history import TIME_COLUMN, Histories
from widedeep.retrieval.interactions import POSITIVE_LABEL_ABOVE, key_rows
from widedeep.retrieval.liked import LikedValues, with_columns
from widedeep.retrieval.popularity import item_popularity
from widedeep.serve.scoring import extract_ranker
from widedeep.serve.towers import extract_user_tower

log = logging.getLogger(__name__)


def _side_base_columns(fs: Any, side: str) -> list[str]:
    """Prepared columns of ``side`` that the models read (tables of both parts and numerics)."""
    return side_columns(fs, (side,))


def _user_base_columns(fs: Any) -> list[str]:
    """User-side non-cross prepared columns (what the user table stores; crosses are recomputed)."""
    return [
        f.name for f in fs.features if not isinstance(f, CrossedFeature) and not is_computed(f) and f.side == "user"
    ]


def _with_histories(fs: Any, retriever: Any, users: pa.Table, user_keys: np.ndarray, rows: pa.Table) -> pa.Table:
    """The user table plus each user's latest positives when the retriever pools a history
    (``task_config.history``): serving then places a known user by what they did, in every split
    of the exported data (the newest interactions are the most telling)."""
    m = getattr(retriever, "module", retriever)
    if HISTORY_COLUMN not in m.user_features.columns:
        return users
    id_col = history_source(fs)[0]
    if id_col not in rows.column_names:
        raise DataError(f"export: the retriever pools user histories but the rows lack the item id column {id_col!r}")
    hist = Histories.from_rows(rows, "user_key", id_col)
    return users.append_column(HISTORY_COLUMN, hist.lists(user_keys, m.cfg.history))


def bundle_contents(
    fs: Any,
    ranker: Any,
    retriever: Any,
    rows: pa.Table,
    positives: pa.Table | None = None,
    sources: dict[str, Any] | None = None,
    choice: SourceChoice | None = None,
    ranker_term: RankerTerm = "log_sigmoid",
) -> BundleContents:
    """Assemble a bundle from the two models and prepared rows.

    Args:
        fs: the FeatureSpace both models were trained on.
        ranker: a ``WideAndDeep`` (eval mode).
        retriever: a ``TwoTower``.
        rows: prepared rows with ``item_key`` (and ``user_key`` when the spec has one): the
            catalog is every distinct item, the user table every distinct user, and the seen
            items every (user, item) pair in them.
        positives: the rows of the splits the models were fitted on (``item_key``, ``label``,
            ``user_key``): popularity (``widedeep.retrieval.popularity``) and the candidate scores'
            statistics are counted on them (default: ``rows``).
        sources: provenance for the manifest.
        choice: the item-to-item source and the merge and order chosen on the valid split
            (``widedeep.evaluation.selection.choose_fitted``, what ``evaluate --task topk``
            measured); ``None``: the two-tower index alone, ordered with the retriever's
            ``rerank_blend``.
        ranker_term: how the served order reads the ranker's logit (``ranker_term_of`` the
            ranker's job config, as ``evaluate --task topk`` reads it).
    """
    if not fs.item_key or "item_key" not in rows.column_names:
        raise DataError("export: the prepared data has no item_key column; serving needs an item catalog")
    t0 = time.monotonic()
    item_cols = _side_base_columns(fs, "item")
    item_keys, item_rows = first_by_key(rows.select(["item_key", *item_cols]), "item_key")
    items = item_rows.drop_columns(["item_key"])
    popularity = item_popularity(
        positives if positives is not None else rows, "item_key", item_keys, "user_key"
    ).astype(np.float32)
    # with a popularity prior the item vectors carry it (the same training counts as evaluation)
    vectors = search_vectors(
        getattr(retriever, "module", retriever).cfg, "item", embed(retriever, "item", items), popularity
    )
    users = seen = liked = None
    if fs.user_key and "user_key" in rows.column_names:
        ucols = _user_base_columns(fs)
        user_keys, user_rows = first_by_key(rows.select(["user_key", *ucols]), "user_key")
        users = (user_keys, _with_histories(fs, retriever, user_rows.drop_columns(["user_key"]), user_keys, rows))
        if fs.history_crosses:  # the history crosses' user side, from the same rows (every split)
            item_ids = item_rows.select([c for c in item_rows.column_names if c != "item_key"])
            lv = LikedValues.build(fs, rows, item_ids)
            users = (users[0], with_columns(users[1], lv.columns(user_keys)))
        u = key_rows(rows.column("user_key"), user_keys)
        i = key_rows(rows.column("item_key"), item_keys)
        order = np.lexsort((i, u))
        u, i = u[order], i[order]
        bounds = np.searchsorted(u, np.arange(len(user_keys) + 1))
        seen = (user_keys, [np.unique(i[bounds[k] : bounds[k + 1]]) for k in range(len(user_keys))])
        if choice is not None:  # the item-to-item source's query: each user's positives
            pos = (
                np.asarray(rows.column("label").to_numpy(zero_copy_only=False), np.float64)[order]
                > POSITIVE_LABEL_ABOVE
            )
            liked = [
                np.unique(i[bounds[k] : bounds[k + 1]][pos[bounds[k] : bounds[k + 1]]]) for k in range(len(user_keys))
            ]
    log.info(
        "export: %d items, %d users from %d prepared rows (%.1fs)",
        len(item_keys),
        0 if users is None else len(users[0]),
        rows.num_rows,
        time.monotonic() - t0,
    )
    rcfg = getattr(retriever, "module", retriever).cfg
    ordering: dict[str, Any] = {
        "rerank_blend": float(rcfg.rerank_blend),
        "temperature": float(rcfg.temperature),
        "ranker_term": ranker_term,
    }
    if choice is not None:
        ordering |= {
            "rerank_blend": float(choice.ordering.blend),
            "item_share": float(choice.ordering.mix.item_share),
            "item_weight": float(choice.ordering.mix.item_weight),
        }
    return BundleContents(
        fs,
        extract_ranker(ranker, fs),
        extract_user_tower(retriever, fs),
        item_keys,
        items,
        vectors,
        popularity,
        users,
        seen,
        sources or {},
        ordering,
        neighbors=None if choice is None else choice.neighbors,
        liked=liked if choice is not None else None,
        candidate_stats=_stats(fs, positives if positives is not None else rows),
    )


def _stats(fs: Any, rows: pa.Table) -> CandidateStats | None:
    """The candidate scores' statistics of ``rows`` (an export from checkpoints passes its fit
    splits', what training and evaluation computed them from)."""
    if not candidate_score_features(fs):
        return None
    id_col = score_history(fs)
    if id_col not in rows.column_names:
        raise DataError(f"export: the candidate scores need the rows' item id column {id_col!r}")
    return CandidateStats.fit(fs, rows).serving()


def _choose_sources(
    rk: LoadedCheckpoint, rt: LoadedCheckpoint, root: Location, fit_rows: pa.Table
) -> SourceChoice | None:
    """The item-to-item source and order chosen on the valid split, as ``evaluate --task topk``
    chooses them (by the train-fitted models: the checkpoints, or a refit's ``selected_by``), the
    source fitted on ``fit_rows`` (the checkpoints' fit splits); None (the index alone) without a
    valid split with positives."""
    fs = rk.feature_space
    if not fs.user_key or not (root / "valid").exists():
        return None
    try:
        valid = EvalData(fs, root / "valid")
    except DataError as e:
        log.warning("export: no item-to-item source (%s)", e)
        return None
    choosers = choosers_of(rt, rk)
    users = first_by_key(fit_rows.select(["user_key"]), "user_key")[0]
    positives = interactions(fit_rows, "user_key", "item_key", users, valid.catalog.keys)
    rc = two_tower_config(rt.config.get("task_config"))
    return choose_fitted(choosers, valid, rc.candidates, rc.temperature, fit_splits_of(rt, rk), positives)


def profile_splits(fs: Any, splits: Sequence[str | Location], batch_rows: int = 65_536) -> dict[str, Any]:
    """The distribution profile (``widedeep.features.drift``) of the rows of prepared ``splits``
    together (a bundle's reference: what the models were fitted on), read in batches."""
    builder = ProfileBuilder(fs)
    for split in splits:
        loc = Location.of(split)
        cols = [c for c in [*monitored(fs), "label"] if c in split_columns(loc)]
        try:
            ds = pads.dataset(loc.path, filesystem=loc.fs, format="parquet")
            for rb in ds.to_batches(columns=cols, batch_size=batch_rows):
                builder.add(pa.Table.from_batches([rb]))
        except FS_ERRORS as e:
            raise DataError(f"{loc}: cannot read prepared Parquet shards ({short_error(e)})") from None
    return builder.finish()


def profile_split(fs: Any, split: str | Location, batch_rows: int = 65_536) -> dict[str, Any]:
    """The distribution profile (``widedeep.features.drift``) of a prepared split, read in batches."""
    return profile_splits(fs, [split], batch_rows)


def export_from_checkpoints(
    ranker_path: str,
    retriever_path: str,
    out: str,
    data: str | None = None,
    index_kind: str = "auto",
    version: str | None = None,
    lineage: dict[str, Any] | None = None,
) -> Path | str:
    """``widedeep export``: checkpoints + their prepared data -> a verified bundle directory.

    ``out`` is a new (or empty) directory, or a URI (``s3://``, ``gs://``, ``file://``, ...): the
    bundle is then written to a local temp directory and uploaded (``bundle_uri.upload_bundle``);
    the URI is returned as given.
    """
    if is_uri(out):
        check_upload_target(out)  # before the expensive part

    # compare the recorded FeatureSpace hashes before building either model
    h1 = read_meta(ranker_path).get("feature_space_hash")
    h2 = read_meta(retriever_path).get("feature_space_hash")
    if h1 != h2:
        raise CheckpointError(
            f"export: the ranker's FeatureSpace {h1} ({ranker_path}) differs from the retriever's "
            f"{h2} ({retriever_path}); train both on the same prepared data"
        )
    rk = load_checkpoint(ranker_path)
    rt = load_checkpoint(retriever_path)
    if rk.task != "ranking":
        raise CheckpointError(f"--ranker {ranker_path}: a {rk.task!r} checkpoint; expected a ranking (Wide & Deep) one")
    if rt.task != "retrieval":
        raise CheckpointError(
            f"--retriever {retriever_path}: a {rt.task!r} checkpoint; expected a retrieval (two-tower) one"
        )
    h1, h2 = rk.feature_space.content_hash, rt.feature_space.content_hash
    if h1 != h2:
        raise CheckpointError(
            f"export: the ranker's FeatureSpace {h1} ({ranker_path}) differs from the retriever's "
            f"{h2} ({retriever_path}); train both on the same prepared data"
        )
    fs = rk.feature_space
    root = Location.of(data or rk.config.get("data", ""))
    if not (root / "feature_space.json").exists():
        raise DataError(f"export: {root}: not a prepared data directory (give --data DIR or a URI)")
    data_hash = FeatureSpace.load(root).content_hash
    if data_hash != h1:
        raise CheckpointError(f"export: the prepared data {root} has FeatureSpace {data_hash}, the checkpoints {h1}")
    cols = ["item_key", "label", *_side_base_columns(fs, "item")]
    if fs.user_key:
        cols += ["user_key", *_user_base_columns(fs)]
    cols = list(dict.fromkeys(cols))
    if TIME_COLUMN in split_columns(root / "train"):
        cols.append(TIME_COLUMN)  # orders user histories in time
    rows = load_rows(root, SPLITS, cols)
    # what the models fitted: popularity, the candidate scores' statistics, the item-to-item source
    fit = fit_splits_of(rt, rk)
    ids = [score_history(fs)] if candidate_score_features(fs) else []
    fit_cols = ["item_key", "label", *(["user_key"] if fs.user_key else []), *ids]
    fit_rows = read_splits(root, fit, fit_cols)
    sources: dict[str, Any] = {
        "ranker": {"path": str(ranker_path), "meta": rk.meta, "metrics": rk.metrics},
        "retriever": {"path": str(retriever_path), "meta": rt.meta, "metrics": rt.metrics},
        "data": str(root),
        "fit_splits": list(fit),
        "selected_by": {"retriever": rt.selected_by, "ranker": rk.selected_by},
    }
    rk.model.eval()
    rt.model.eval()
    choice = _choose_sources(rk, rt, root, fit_rows)
    if choice is not None:
        sources["candidate_sources"] = choice.summary()
    contents = bundle_contents(fs, rk.model, rt.model, rows, fit_rows, sources, choice, ranker_term_of(rk.config))
    contents.profile = profile_splits(fs, [root / s for s in fit])
    contents.lineage = lineage
    if not is_uri(out):
        return write_bundle(out, contents, index_kind=index_kind, version=version)
    with tempfile.TemporaryDirectory(prefix="widedeep-export-") as tmp:
        upload_bundle(write_bundle(Path(tmp) / "bundle", contents, index_kind=index_kind, version=version), out)
    return out
