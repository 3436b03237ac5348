"""The serving bundle: everything serving needs, in one directory, verified on load.

::

    BUNDLE/
      manifest.json            format, model version, versions, FeatureSpace hash, sources
                               (the checkpoints it came from), counts, sha256 of every file
      feature_space.json       the FeatureSpace both models were trained on
      ranker.json / .safetensors      the Wide & Deep ranker (``scoring.py``'s format)
      user_tower.json / .safetensors  the two-tower retriever's user tower (``towers.py``)
      items.parquet            item_key + the item-side PREPARED columns + popularity, in index row order
      users.parquet            (optional) user_key + the user-side prepared columns
      seen.parquet             user_key + the catalog rows each user has already seen (+ ``liked``:
                               the rows of their positives, the item-to-item source's query)
      candidate_stats.parquet, candidate_popularity.parquet   (optional) what the ranker's
                               candidate scores are computed from (``widedeep.retrieval.candidate_scores``):
                               co-occurrence of (candidate, history item) id pairs, popularity per id
      item_neighbors.parquet   (optional) the item-to-item candidate source (``widedeep.retrieval.neighbors``):
                               target row, source row, weight; merged as the manifest's ``ordering`` says
      profile.json             (optional) the training data's distribution profile (``widedeep.features.drift``):
                               what the replica measures its requests' drift against
      index/                   the item index (``widedeep.retrieval.index`` layout: item vectors, HNSW file)

Why prepared columns and not raw item features: item-side ids are a deterministic function of
the raw values (``FeatureSpace.transform`` of the item's own columns), so the catalog needs no raw data
and no transform at request time;
pair crosses are made from ids with ``FeatureSpace.add_crosses``.

Loading checks every file's sha256 against the manifest and that the ranker, the user tower and
``feature_space.json`` agree on the FeatureSpace hash; a mismatch raises ``CheckpointError``
naming both sides. A bundle can also live at a URI (``s3://``, ``gs://``, ``file://``, ...):
``load_bundle`` copies it to a local cache and verifies the copy (``bundle_uri.py``). Bundles are
written offline by ``widedeep.export.bundle_writer`` (``widedeep export``).
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from widedeep.errors import CheckpointError
from widedeep.features import FeatureSpace
from widedeep.paths import is_uri
from widedeep.retrieval.candidate_scores import CandidateStats, candidate_score_features
from widedeep.retrieval.candidates import CandidateGenerator, SourceMix
from widedeep.retrieval.index import load_index
from widedeep.retrieval.neighbors import ItemNeighbors, NeighborSettings
from widedeep.serve.bundle_uri import fetch_bundle, read_manifest_bytes
from widedeep.serve.manifest import parse_manifest, sha256_file
from widedeep.serve.scoring import CandidateScorer, load_ranker
from widedeep.serve.towers import load_user_tower

log = logging.getLogger(__name__)

POPULARITY = "_popularity"  # the items.parquet column of each item's popularity (cold-start candidates)
LIKED = "liked"  # the seen.parquet column of each user's positive catalog rows
NEIGHBORS_FILE = "item_neighbors.parquet"
CANDIDATE_STATS_FILE = "candidate_stats.parquet"
CANDIDATE_POPULARITY_FILE = "candidate_popularity.parquet"


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of the bundle at ``path``: a directory or a URI (``s3://``, ``gs://``, ``file://``, ...)."""
    if is_uri(path):
        return parse_manifest(read_manifest_bytes(str(path)), f"{path}/manifest.json")
    p = Path(path) / "manifest.json"
    if not p.exists():
        raise CheckpointError(f"{path}: not a serving bundle (no manifest.json); build one with `widedeep export`")
    return parse_manifest(p.read_bytes(), str(p))


def verify_bundle(path: str | Path) -> dict[str, Any]:
    """Check every file's sha256 against the manifest (and that no file is missing or extra)."""
    root = Path(path)
    m = read_manifest(root)
    want: dict[str, str] = m["files"]
    have = {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != "manifest.json"}
    missing = sorted(set(want) - have)
    if missing:
        raise CheckpointError(f"{root}: file(s) {missing} listed in manifest.json are missing")
    for rel, digest in want.items():
        got = sha256_file(root / rel)
        if got != digest:
            raise CheckpointError(
                f"{root / rel}: sha256 {got} does not match the manifest's {digest}; the file was modified or corrupted"
            )
    return m


@dataclass
class ServingBundle:
    """A loaded, verified bundle (see ``load_bundle``)."""

    path: Path
    manifest: dict[str, Any]
    fs: Any
    ranker: Any  # scoring.CandidateScorer
    user_tower: Any  # towers.UserTower
    item_keys: np.ndarray
    items: pa.Table  # item-side prepared columns, catalog row order
    item_rows: dict[str, int]  # str(item key) -> row
    users: pa.Table | None  # user-side prepared columns
    user_rows: dict[str, int]  # str(user key) -> row in ``users``
    seen: dict[str, np.ndarray]  # str(user key) -> catalog rows
    generator: Any  # retrieval.candidates.CandidateGenerator
    source: str = ""  # what it was loaded as (a directory or a URI); ``path`` is the local directory read
    profile: dict[str, Any] | None = None  # profile.json (None: an older bundle, no drift measured)
    liked: dict[str, np.ndarray] = field(default_factory=dict)  # str(user key) -> positive catalog rows
    candidate_stats: CandidateStats | None = None  # the ranker's candidate scores' statistics

    def __post_init__(self) -> None:
        self.source = self.source or str(self.path)

    @property
    def version(self) -> str:
        return str(self.manifest["model_version"])


def _str_index(keys: np.ndarray) -> dict[str, int]:
    return {str(k): i for i, k in enumerate(keys.tolist())}


def load_bundle(path: str | Path, *, verify: bool = True) -> ServingBundle:
    """Load a bundle; with ``verify`` (the default) file hashes and FeatureSpace hashes are checked.

    ``path`` is a local directory or a URI that ``pyarrow.fs`` understands (``s3://``, ``gs://``,
    ``hdfs://``, ``file://``): a URI's bundle is copied to a local cache first (once per bundle
    version, see ``widedeep.serve.bundle_uri``) and the copy is verified and loaded like a local
    bundle; errors then name the URI. ``ServingBundle.source`` keeps what was asked for,
    ``ServingBundle.path`` the directory read.
    """
    if not is_uri(path):
        return _load_local(Path(path), verify, str(path))
    uri = str(path)
    local = fetch_bundle(uri)
    try:
        return _load_local(local, verify, uri)
    except CheckpointError as e:
        shutil.rmtree(local, ignore_errors=True)  # a bad copy must not stay cached: the next load fetches again
        raise CheckpointError(f"{uri}: {e}") from None


def _load_local(root: Path, verify: bool, source: str) -> ServingBundle:
    t0 = time.monotonic()
    m = verify_bundle(root) if verify else read_manifest(root)
    fs = FeatureSpace.load(root / "feature_space.json")
    ranker_spec, tensors = load_ranker(root)
    tower = load_user_tower(root)
    for what, h in (
        ("manifest.json", m["feature_space_hash"]),
        ("ranker.json", ranker_spec.feature_space_hash),
        ("user_tower.json", tower.spec.feature_space_hash),
    ):
        if h != fs.content_hash:
            raise CheckpointError(
                f"{root}: {what} expects FeatureSpace {h}, but feature_space.json is "
                f"{fs.content_hash}; the bundle mixes models of different feature spaces"
            )
    items = pq.read_table(root / "items.parquet")
    item_keys = np.asarray(items.column("item_key").to_numpy(zero_copy_only=False))
    popularity = items.column(POPULARITY).to_numpy().astype(np.float32)
    items = items.drop_columns(["item_key", POPULARITY]).combine_chunks()
    idx_keys, vectors, index, _info = load_index(root / "index")
    if hasattr(index, "threads"):
        # one query per request: a batched HNSW search would otherwise start a thread per core for each search
        index.threads = 1
    if len(idx_keys) != len(item_keys) or not np.array_equal(idx_keys.astype(str), item_keys.astype(str)):
        raise CheckpointError(f"{root}: index/items.parquet and items.parquet list different items")
    users, user_rows = None, {}
    if (root / "users.parquet").exists():
        ut = pq.read_table(root / "users.parquet")
        user_rows = _str_index(np.asarray(ut.column("user_key").to_numpy(zero_copy_only=False)))
        users = ut.drop_columns(["user_key"]).combine_chunks()
    st = pq.read_table(root / "seen.parquet")
    seen = {
        str(k): np.asarray(v, dtype=np.int64)
        for k, v in zip(st.column("user_key").to_pylist(), st.column("items").to_pylist(), strict=True)
    }
    liked = (
        {
            str(k): np.asarray(v, dtype=np.int64)
            for k, v in zip(st.column("user_key").to_pylist(), st.column(LIKED).to_pylist(), strict=True)
        }
        if LIKED in st.column_names
        else {}
    )
    generator = _generator(root, m, index, popularity, item_keys, vectors)
    profile = json.loads((root / "profile.json").read_text()) if (root / "profile.json").exists() else None
    stats = _candidate_stats(root, fs)
    b = ServingBundle(
        root,
        m,
        fs,
        CandidateScorer(ranker_spec, tensors),
        tower,
        item_keys,
        items,
        _str_index(item_keys),
        users,
        user_rows,
        seen,
        generator,
        source,
        profile,
        liked,
        stats,
    )
    log.info(
        "loaded bundle %s (version %s, %d items, %d users) in %.2fs",
        source,
        b.version,
        len(item_keys),
        len(user_rows),
        time.monotonic() - t0,
    )
    return b


def _candidate_stats(root: Path, fs: Any) -> CandidateStats | None:
    """The candidate scores' statistics; a FeatureSpace with candidate scores needs them."""
    path = root / CANDIDATE_STATS_FILE
    if not candidate_score_features(fs):
        return None
    if not path.exists():
        raise CheckpointError(f"{root}: the ranker has candidate scores but the bundle lacks {CANDIDATE_STATS_FILE}")
    t = pq.read_table(path)
    pop = pq.read_table(root / CANDIDATE_POPULARITY_FILE).column("popularity").to_numpy()
    return CandidateStats(
        np.asarray(t.column("key").to_numpy(), np.int64),
        np.asarray(t.column("co").to_numpy(), np.float64),
        np.asarray(pop, np.float64),
    )


def _generator(
    root: Path, m: dict[str, Any], index: Any, popularity: np.ndarray, item_keys: np.ndarray, vectors: np.ndarray
) -> CandidateGenerator:
    """The candidate generator offline evaluation measured: the index, plus the item-to-item source
    merged as the manifest's ``ordering`` says when the bundle carries one."""
    path = root / NEIGHBORS_FILE
    if not path.exists():
        return CandidateGenerator(index, popularity, item_keys)
    t = pq.read_table(path)
    meta = t.schema.metadata or {}
    try:
        kind = meta[b"kind"].decode()
        settings = NeighborSettings(int(meta[b"neighbors"]), float(meta[b"shrink"]), kind, float(meta[b"lam"]))  # type: ignore[arg-type]
        o = m.get("ordering") or {}
        mix = SourceMix(float(o["item_share"]), float(o["item_weight"]))
    except (KeyError, ValueError) as e:
        raise CheckpointError(f"{path}: the item-to-item source lacks its settings ({e})") from None
    nb = ItemNeighbors.from_arrays(
        t.column("target").to_numpy(),
        t.column("source").to_numpy(),
        t.column("weight").to_numpy(),
        len(item_keys),
        settings,
    )
    return CandidateGenerator(index, popularity, item_keys, neighbors=nb, item_vectors=vectors, mix=mix)
