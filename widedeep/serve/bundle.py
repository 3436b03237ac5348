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
      seen.parquet             user_key + the catalog rows each user has already seen
      index/                   the item index (``widedeep.retrieval.index`` layout: item vectors, HNSW file)

Why prepared columns and not raw item features: item-side ids are a deterministic function of
the raw values (contracts §5), so the catalog needs no raw data and no transform at request time;
pair crosses are made from ids with ``FeatureSpace.add_crosses``.

Loading checks every file's sha256 against the manifest and that the ranker, the user tower and
``feature_space.json`` agree on the FeatureSpace hash; a mismatch raises ``CheckpointError``
naming both sides. A bundle can also live at a URI (``s3://``, ``gs://``, ``file://``, ...):
``load_bundle`` copies it to a local cache and verifies the copy (``bundle_uri.py``), and
``widedeep export --out URI`` uploads one.
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
import pyarrow.parquet as pq
import torch

from widedeep.errors import CheckpointError

log = logging.getLogger(__name__)

BUNDLE_FORMAT = "widedeep.bundle/1"
POPULARITY = "_popularity"


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _file_hashes(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): sha256_file(p)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != "manifest.json"
    }


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
            ``rerank_blend`` and ``temperature`` (``widedeep.retrieval.candidates.final_scores``).
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
    ordering: dict[str, float] = field(default_factory=dict)   # {"rerank_blend", "temperature"} of the retriever


def write_bundle(out: str | Path, c: BundleContents, *, index_kind: str = "auto", version: str | None = None,
                 index_options: dict[str, Any] | None = None) -> Path:
    """Write a bundle directory atomically (a temp dir renamed into place).

    ``index_kind`` / ``index_options`` go to ``widedeep.retrieval.index.build_index`` (an HNSW
    index's recall against exact search is measured there and recorded in the manifest).
    """
    from widedeep import __version__
    from widedeep.retrieval.index import build_index, save_index
    from widedeep.serve.scoring import save_ranker
    from widedeep.serve.towers import save_user_tower

    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise CheckpointError(f"{out}: exists and is not empty; choose a new --out")
    n = len(c.item_keys)
    if c.items.num_rows != n or c.item_vectors.shape[0] != n or c.popularity.shape[0] != n:
        raise CheckpointError(f"bundle: {n} item keys but {c.items.num_rows} item rows, "
                              f"{c.item_vectors.shape[0]} vectors, {c.popularity.shape[0]} popularity values")
    fs_hash = c.fs.content_hash
    for what, spec in (("ranker", c.ranker[0]), ("user tower", c.user_tower[0])):
        if spec.feature_space_hash != fs_hash:
            raise CheckpointError(f"bundle: the {what} was trained on FeatureSpace {spec.feature_space_hash}, "
                                  f"the bundle's FeatureSpace is {fs_hash}")
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
        pq.write_table(pa.table({"user_key": pa.array(keys), "items": lists}), tmp / "seen.parquet")
        index, info = build_index(c.item_vectors, index_kind, **(index_options or {}))
        save_index(tmp / "index", c.item_keys, c.item_vectors, index, info)
        files = _file_hashes(tmp)
        version = version or hashlib.sha256(json.dumps(files, sort_keys=True).encode()).hexdigest()[:12]
        manifest = {
            "format": BUNDLE_FORMAT,
            "model_version": version,
            "created_unix": int(time.time()),
            "versions": {"widedeep": __version__, "torch": torch.__version__, "pyarrow": pa.__version__},
            "feature_space_hash": fs_hash,
            "counts": {"items": n, "users": 0 if c.users is None else len(c.users[0]),
                       "users_with_seen_items": len(keys)},
            "index": info,
            "sources": c.sources,
            "ordering": c.ordering,
            "files": files,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str))
        if out.exists():
            out.rmdir()
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("wrote bundle %s (version %s, %d items) in %.1fs", out, version, n, time.monotonic() - t0)
    return out


def parse_manifest(raw: bytes | str, where: str) -> dict[str, Any]:
    """A manifest's JSON, checked to be a bundle manifest of this format (``where`` names it in errors)."""
    try:
        m = json.loads(raw)
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{where}: not valid JSON: {e}") from None
    if not isinstance(m, dict) or m.get("format") != BUNDLE_FORMAT:
        got = m.get("format") if isinstance(m, dict) else type(m).__name__
        raise CheckpointError(f"{where}: format {got!r}, this widedeep reads {BUNDLE_FORMAT!r}")
    return m


def read_manifest(path: str | Path) -> dict[str, Any]:
    """The manifest of the bundle at ``path``: a directory or a URI (``s3://``, ``gs://``, ``file://``, ...)."""
    from widedeep.serve.bundle_uri import is_uri, read_manifest_bytes

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
            raise CheckpointError(f"{root / rel}: sha256 {got} does not match the manifest's {digest}; "
                                  "the file was modified or corrupted")
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
    from widedeep.serve.bundle_uri import fetch_bundle, is_uri

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
    from widedeep.features import FeatureSpace
    from widedeep.retrieval.candidates import CandidateGenerator
    from widedeep.retrieval.index import load_index
    from widedeep.serve.scoring import CandidateScorer, load_ranker
    from widedeep.serve.towers import load_user_tower

    t0 = time.monotonic()
    m = verify_bundle(root) if verify else read_manifest(root)
    fs = FeatureSpace.load(root / "feature_space.json")
    ranker_spec, tensors = load_ranker(root)
    tower = load_user_tower(root)
    for what, h in (("manifest.json", m["feature_space_hash"]), ("ranker.json", ranker_spec.feature_space_hash),
                    ("user_tower.json", tower.spec.feature_space_hash)):
        if h != fs.content_hash:
            raise CheckpointError(f"{root}: {what} expects FeatureSpace {h}, but feature_space.json is "
                                  f"{fs.content_hash}; the bundle mixes models of different feature spaces")
    items = pq.read_table(root / "items.parquet")
    item_keys = np.asarray(items.column("item_key").to_numpy(zero_copy_only=False))
    popularity = items.column(POPULARITY).to_numpy().astype(np.float32)
    items = items.drop_columns(["item_key", POPULARITY]).combine_chunks()
    idx_keys, _vectors, index, _info = load_index(root / "index")
    if hasattr(index, "threads"):
        # one query per request: hnswlib would otherwise start a thread per core for each search
        index.threads = 1
    if len(idx_keys) != len(item_keys) or not np.array_equal(idx_keys.astype(str), item_keys.astype(str)):
        raise CheckpointError(f"{root}: index/items.parquet and items.parquet list different items")
    users, user_rows = None, {}
    if (root / "users.parquet").exists():
        ut = pq.read_table(root / "users.parquet")
        user_rows = _str_index(np.asarray(ut.column("user_key").to_numpy(zero_copy_only=False)))
        users = ut.drop_columns(["user_key"]).combine_chunks()
    st = pq.read_table(root / "seen.parquet")
    seen = {str(k): np.asarray(v, dtype=np.int64)
            for k, v in zip(st.column("user_key").to_pylist(), st.column("items").to_pylist())}
    generator = CandidateGenerator(index, popularity, item_keys)
    b = ServingBundle(root, m, fs, CandidateScorer(ranker_spec, tensors), tower, item_keys, items,
                      _str_index(item_keys), users, user_rows, seen, generator, source)
    log.info("loaded bundle %s (version %s, %d items, %d users) in %.2fs", source, b.version, len(item_keys),
             len(user_rows), time.monotonic() - t0)
    return b
