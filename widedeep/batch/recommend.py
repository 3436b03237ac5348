"""``widedeep recommend``: precomputed top-K for every user of a bundle (or a given list), on
Ray Data, written as Parquet rows ``(user, rank, item, score)``.

Each Ray Data actor (``RecommendWorker``) loads and verifies the bundle once and runs the
serving request pipeline (``widedeep.serve.pipeline.RecommendPipeline``: the user's row from the
bundle, the user tower, one index search for the whole batch, the ranker, the same final order)
over batches of users: a user's list is what ``POST /v1/recommend`` with ``{"user": {USER_KEY:
user}, "context": CONTEXT, "k": K}`` answers for an app deployed with ``candidates=N`` (tested).
A user the bundle does not know gets the cold-start answer serving would give (popularity).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from widedeep.errors import DataError

log = logging.getLogger(__name__)

SUMMARY = "_recommend.json"
COLUMNS = ("user", "rank", "item", "score")


@dataclass(frozen=True)
class RecommendOptions:
    """Knobs of one ``recommend`` run (CLI flags map 1:1)."""

    bundle: str
    out: str
    users: tuple[str, ...] | None = None  # None: every user in the bundle's users.parquet
    k: int = 10
    candidates: int = 500
    context: dict[str, Any] = field(default_factory=dict)
    batch_size: int = 256
    workers: int = 0  # 0: one per CPU of the cluster (each holds the bundle in memory)
    cpus_per_worker: float = 1.0

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.candidates:
            raise DataError(f"k must be between 1 and candidates ({self.candidates}), got {self.k}")
        if self.batch_size <= 0 or self.cpus_per_worker <= 0:
            raise DataError("batch_size and cpus_per_worker must be > 0")


def _local_bundle(path: str) -> Path:
    from widedeep.paths import is_uri
    from widedeep.serve.bundle_uri import fetch_bundle

    return fetch_bundle(path) if is_uri(path) else Path(path)


def user_keys(opts: RecommendOptions) -> pa.Array:
    """The users to recommend for: the bundle's users, or ``opts.users`` typed like the bundle's keys."""
    root = _local_bundle(opts.bundle)
    table = root / "users.parquet"
    key_type = pq.read_schema(table).field("user_key").type if table.exists() else pa.string()
    if opts.users is None:
        if not table.exists():
            raise DataError(f"{opts.bundle}: the bundle has no users.parquet; pass the users to recommend for")
        return pq.read_table(table, columns=["user_key"]).column("user_key").combine_chunks()
    if pa.types.is_integer(key_type):
        bad = [u for u in opts.users if not u.strip().lstrip("-").isdigit()]
        if bad:
            raise DataError(f"users: {bad[0]!r} is not a user id of this bundle (its user keys are integers)")
        return pa.array([int(u) for u in opts.users], key_type)
    return pa.array(list(opts.users), pa.string())


class RecommendWorker:
    """The Ray Data actor: the bundle's request pipeline, loaded once, over batches of users."""

    def __init__(self, opts: RecommendOptions) -> None:
        import torch

        from widedeep.serve.bundle import load_bundle
        from widedeep.serve.pipeline import RecommendPipeline

        torch.set_num_threads(max(1, int(opts.cpus_per_worker)))
        self.opts = opts
        self.pipe = RecommendPipeline(load_bundle(opts.bundle))
        self.key_field = self.pipe.user_key_field
        if not self.key_field:
            raise DataError(f"{opts.bundle}: the bundle's feature spec has no user key")

    def __call__(self, batch: pa.Table) -> pa.Table:
        users = batch.column("user").to_pylist()
        queries = [self.pipe.prepare({self.key_field: u}, self.opts.context) for u in users]
        results, _, _ = self.pipe.serve_batch([(q, None, None) for q in queries], self.opts.candidates)
        cols: dict[str, list[Any]] = {c: [] for c in COLUMNS}
        for u, (rows, logits, key) in zip(users, results, strict=True):
            top = self.pipe.top_k(rows, logits, self.opts.k, key)
            cols["user"] += [u] * len(top)
            cols["rank"] += list(range(1, len(top) + 1))
            cols["item"] += [item for item, _ in top]
            cols["score"] += [s for _, s in top]
        item_type = pa.array(self.pipe.bundle.item_keys[:1]).type
        return pa.table(
            {
                "user": pa.array(cols["user"], batch.schema.field("user").type),
                "rank": pa.array(cols["rank"], pa.int32()),
                "item": pa.array(cols["item"], item_type),
                "score": pa.array(np.asarray(cols["score"], np.float32)),
            }
        )


def _clear(out: str) -> None:
    import pyarrow.fs as pafs

    from widedeep.data.sources import filesystem

    ofs, root = filesystem(out)
    ofs.create_dir(root, recursive=True)
    for info in ofs.get_file_info(pafs.FileSelector(root)):
        if info.path.endswith(".parquet") or info.path.endswith(SUMMARY):
            ofs.delete_file(info.path)


def recommend(opts: RecommendOptions) -> dict[str, Any]:
    """Write every user's top-K under ``opts.out``; returns the summary (also ``OUT/_recommend.json``)."""
    import ray
    import ray.data

    from widedeep.data.sources import filesystem
    from widedeep.ray_runtime import ensure_ray

    keys = user_keys(opts)
    if len(keys) == 0:
        raise DataError(f"{opts.bundle}: no users to recommend for")
    ensure_ray()
    _clear(opts.out)
    # one CPU stays free by default for the write tasks (an actor pool holding every CPU starves them)
    free = max(1.0, ray.cluster_resources().get("CPU", 1) - 1)
    workers = opts.workers or max(1, int(free / opts.cpus_per_worker))
    workers = min(workers, -(-len(keys) // opts.batch_size))
    log.info("recommend: %d users, top %d of %d candidates, %d worker(s)", len(keys), opts.k, opts.candidates, workers)
    t0 = time.perf_counter()
    users = pa.table({"user": keys})
    step = opts.batch_size * max(1, -(-len(keys) // (opts.batch_size * 4 * workers)))  # ~4 blocks per worker
    blocks = [users.slice(i, step) for i in range(0, len(keys), step)]
    ds = ray.data.from_arrow(blocks).map_batches(
        RecommendWorker,
        fn_constructor_kwargs={"opts": opts},
        batch_size=opts.batch_size,
        batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=opts.cpus_per_worker,
    )
    ofs, root = filesystem(opts.out)
    try:
        ds.write_parquet(root, filesystem=ofs)
    except Exception as e:
        from widedeep.data.prepare import unwrap_error

        inner = unwrap_error(e)  # a request the bundle cannot serve (a bad --context field), raised in an actor
        if inner is None:
            raise
        raise type(inner)(str(inner)) from None
    rows = sum(pq.ParquetFile(i.path, filesystem=ofs).metadata.num_rows for i in _parts(ofs, root))
    seconds = time.perf_counter() - t0
    summary = {
        "kind": "widedeep.recommendations",
        "bundle": opts.bundle,
        "users": len(keys),
        "k": opts.k,
        "candidates": opts.candidates,
        "context": opts.context,
        "rows": rows,
        "columns": list(COLUMNS),
        "seconds": round(seconds, 3),
        "users_per_s": round(len(keys) / max(seconds, 1e-9), 1),
    }
    with ofs.open_output_stream(f"{root}/{SUMMARY}") as f:
        f.write((json.dumps(summary, indent=1, sort_keys=True) + "\n").encode())
    log.info("recommend: %d users, %d rows in %.1fs -> %s", len(keys), rows, seconds, opts.out)
    return summary


def _parts(ofs: Any, root: str) -> list[Any]:
    import pyarrow.fs as pafs

    return [i for i in ofs.get_file_info(pafs.FileSelector(root)) if i.path.endswith(".parquet")]
