"""Writing a serving bundle (``widedeep export``): the directory ``widedeep.serve.bundle`` loads.

The layout is described in ``widedeep.serve.bundle``; the manifest (format, file hashes) in
``widedeep.serve.manifest``. A bundle is written to a temp directory renamed into place, so a
reader never sees a partial bundle; at a URI it is written locally, then uploaded with
``manifest.json`` last (``upload_bundle``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import torch

import widedeep
from widedeep.errors import CheckpointError
from widedeep.paths import FS_ERRORS, Location, short_error
from widedeep.retrieval.candidate_scores import CandidateStats
from widedeep.retrieval.index import build_index, save_index
from widedeep.retrieval.neighbors import ItemNeighbors
from widedeep.serve.bundle import (
    CANDIDATE_POPULARITY_FILE,
    CANDIDATE_STATS_FILE,
    LIKED,
    NEIGHBORS_FILE,
    POPULARITY,
)
from widedeep.serve.manifest import BUNDLE_FORMAT, file_hashes
from widedeep.serve.scoring import save_ranker
from widedeep.serve.towers import save_user_tower

log = logging.getLogger(__name__)


@dataclass
class BundleContents:
    """What ``write_bundle`` writes (built by ``widedeep export`` or the synthetic builder).

    Args:
        fs: the FeatureSpace.
        ranker: ``(RankerSpec, tensors)`` from ``scoring.extract_ranker``.
        user_tower: ``(TowerSpec, tensors)`` from ``towers.extract_user_tower``.
        item_keys: raw item keys, row order of the catalog and the index.
        items: item-side prepared columns, same row order.
        item_vectors: float32 ``[n_items, D]`` item-tower vectors.
        popularity: float32 ``[n_items]`` (cold-start candidates).
        users: optional ``(user keys, user-side prepared columns)``.
        seen: optional ``(user keys, list of catalog rows per user)``.
        sources: provenance recorded in the manifest (checkpoint paths, epochs, metrics).
        ordering: how ``/v1/recommend`` orders re-ranked candidates, the retriever's
            ``rerank_blend`` and ``temperature`` and the ranker's ``ranker_term``
            (``widedeep.retrieval.candidates.final_scores``).
        profile: the training data's distribution profile (``widedeep.features.drift``), written
            as ``profile.json``: serving measures its requests' drift against it.
        lineage: how this model came to be (``widedeep retrain``: the parent bundle, the data
            window, the verification checks), recorded in the manifest.
        neighbors: the item-to-item candidate source (``widedeep.retrieval.neighbors``), written as
            ``item_neighbors.parquet``; ``ordering`` then carries its ``item_share`` and ``item_weight``.
        liked: per user of ``seen``, the catalog rows of their positives (what the item-to-item
            source is queried with), written as the ``liked`` column of ``seen.parquet``.
        candidate_stats: what the ranker's candidate scores are computed from
            (``widedeep.retrieval.candidate_scores``, the train split's), written as
            ``candidate_stats.parquet`` and ``candidate_popularity.parquet``.
    """

    fs: Any
    ranker: tuple[Any, dict[str, torch.Tensor]]
    user_tower: tuple[Any, dict[str, torch.Tensor]]
    item_keys: np.ndarray
    items: pa.Table
    item_vectors: np.ndarray
    popularity: np.ndarray
    users: tuple[np.ndarray, pa.Table] | None = None
    seen: tuple[np.ndarray, list[np.ndarray]] | None = None
    sources: dict[str, Any] = field(default_factory=dict)
    ordering: dict[str, Any] = field(default_factory=dict)  # {"rerank_blend", "temperature", "ranker_term"}
    profile: dict[str, Any] | None = None
    lineage: dict[str, Any] | None = None
    neighbors: ItemNeighbors | None = None
    liked: list[np.ndarray] | None = None
    candidate_stats: CandidateStats | None = None


def write_bundle(
    out: str | Path,
    c: BundleContents,
    *,
    index_kind: str = "auto",
    version: str | None = None,
    index_options: dict[str, Any] | None = None,
) -> Path:
    """Write a bundle directory atomically (a temp dir renamed into place).

    ``index_kind`` / ``index_options`` go to ``widedeep.retrieval.index.build_index`` (an HNSW
    index's recall against exact search is measured there and recorded in the manifest).
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"{out}: exists and is not empty; choose a new --out")
    n = len(c.item_keys)
    if c.items.num_rows != n or c.item_vectors.shape[0] != n or c.popularity.shape[0] != n:
        raise CheckpointError(
            f"bundle: {n} item keys but {c.items.num_rows} item rows, "
            f"{c.item_vectors.shape[0]} vectors, {c.popularity.shape[0]} popularity values"
        )
    fs_hash = c.fs.content_hash
    for what, spec in (("ranker", c.ranker[0]), ("user tower", c.user_tower[0])):
        if spec.feature_space_hash != fs_hash:
            raise CheckpointError(
                f"bundle: the {what} was trained on FeatureSpace {spec.feature_space_hash}, "
                f"the bundle's FeatureSpace is {fs_hash}"
            )
    t0 = time.monotonic()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".bundle-", dir=out.parent))
    try:
        c.fs.save(tmp / "feature_space.json")
        save_ranker(tmp, *c.ranker)
        save_user_tower(tmp, *c.user_tower)
        item_key = pa.array(c.item_keys)
        items = c.items.append_column(POPULARITY, pa.array(c.popularity.astype(np.float32)))
        pq.write_table(items.add_column(0, "item_key", item_key), tmp / "items.parquet")
        if c.users is not None:
            keys, table = c.users
            pq.write_table(table.add_column(0, "user_key", pa.array(keys)), tmp / "users.parquet")
        keys, rows = c.seen if c.seen is not None else (np.asarray([], dtype=object), [])
        lists = pa.array([np.asarray(r, dtype=np.int64) for r in rows], type=pa.list_(pa.int64()))
        seen_cols = {"user_key": pa.array(keys), "items": lists}
        if c.liked is not None:
            seen_cols[LIKED] = pa.array([np.asarray(r, dtype=np.int64) for r in c.liked], type=pa.list_(pa.int64()))
        pq.write_table(pa.table(seen_cols), tmp / "seen.parquet")
        if c.neighbors is not None:
            _write_neighbors(tmp, c.neighbors, n)
        if c.candidate_stats is not None:
            a = c.candidate_stats.arrays()
            pq.write_table(pa.table({"key": a["keys"], "co": a["co"]}), tmp / CANDIDATE_STATS_FILE)
            pq.write_table(pa.table({"popularity": a["popularity"]}), tmp / CANDIDATE_POPULARITY_FILE)
        if c.profile is not None:
            (tmp / "profile.json").write_text(json.dumps(c.profile, sort_keys=True))
        index, info = build_index(c.item_vectors, index_kind, **(index_options or {}))
        save_index(tmp / "index", c.item_keys, c.item_vectors, index, info)
        files = file_hashes(tmp)
        version = version or hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:12]
        manifest = {
            "format": BUNDLE_FORMAT,
            "model_version": version,
            "created_unix": int(time.time()),
            "versions": {"widedeep": widedeep.__version__, "torch": torch.__version__, "pyarrow": pa.__version__},
            "feature_space_hash": fs_hash,
            "counts": {
                "items": n,
                "users": 0 if c.users is None else len(c.users[0]),
                "users_with_seen_items": len(keys),
            },
            "index": info,
            "sources": c.sources,
            "ordering": c.ordering,
            "files": files,
        }
        if c.lineage is not None:
            manifest["lineage"] = c.lineage
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote bundle %s (version %s, %d items) in %.1fs", out, version, n, time.monotonic() - t0)
    return out


def _write_neighbors(root: Path, nb: ItemNeighbors, n_items: int) -> None:
    if nb.n_items != n_items:
        raise CheckpointError(f"bundle: the item-to-item source covers {nb.n_items} items, the catalog {n_items}")
    targets, sources, weights = nb.arrays()
    table = pa.table({"target": targets, "source": sources, "weight": weights})
    st = nb.settings
    meta = {b"neighbors": str(st.neighbors), b"shrink": str(st.shrink), b"kind": st.kind, b"lam": str(st.lam)}
    pq.write_table(table.replace_schema_metadata(meta), root / NEIGHBORS_FILE)


def _target(uri: str) -> tuple[Any, str]:
    loc = Location.of(uri, CheckpointError)
    return loc.fs, loc.path.rstrip("/")


def check_upload_target(uri: str) -> None:
    """Refuse a destination that holds a file or a non-empty directory (checked before building a bundle)."""
    fs, root = _target(uri)
    try:
        info = fs.get_file_info(root)
        if info.type == pafs.FileType.File:
            raise CheckpointError(f"{uri}: exists and is a file; choose a new --out")
        if info.type == pafs.FileType.Directory and fs.get_file_info(pafs.FileSelector(root)):
            raise CheckpointError(f"{uri}: exists and is not empty; choose a new --out")
    except CheckpointError:
        raise
    except FS_ERRORS as e:
        raise CheckpointError(f"{uri}: cannot check the destination ({short_error(e)})") from None


def upload_bundle(local: Path, uri: str) -> None:
    """Copy the bundle directory ``local`` to ``uri``, ``manifest.json`` last."""
    check_upload_target(uri)
    fs, root = _target(uri)
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="widedeep-upload-") as side:
        manifest = Path(side) / "manifest.json"
        shutil.move(str(local / "manifest.json"), manifest)
        try:
            fs.create_dir(root, recursive=True)
            pafs.copy_files(str(local), root, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)
            pafs.copy_files(
                str(manifest),
                f"{root}/manifest.json",
                source_filesystem=pafs.LocalFileSystem(),
                destination_filesystem=fs,
            )
        except FS_ERRORS as e:
            raise CheckpointError(f"{uri}: uploading the bundle from {local} failed ({short_error(e)})") from None
        finally:
            shutil.move(str(manifest), local / "manifest.json")
    log.info("uploaded bundle %s to %s in %.1fs", local, uri, time.monotonic() - t0)
