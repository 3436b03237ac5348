"""The Retriever and Ranker deployments (``pipeline: chain``) and the model slot every replica uses.

The Ranker batches scoring across concurrent requests with ``@serve.batch``; its
``max_ongoing_requests`` (32) is at least ``max_batch_size * max_concurrent_batches`` (16 * 1),
otherwise the router never hands a replica enough requests to fill a batch. Both set
``max_queued_requests`` so overload answers 503 at once instead of queueing without bound.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from ray import serve

from widedeep.errors import ServingError
from widedeep.features.spec import CrossedFeature
from widedeep.serve.bundle import load_bundle
from widedeep.serve.drift import ReplicaDrift
from widedeep.serve.pipeline import RecommendPipeline
from widedeep.serve.telemetry import ServingMetrics

log = logging.getLogger(__name__)

RANKER_OPTIONS: dict[str, Any] = {
    "max_ongoing_requests": 32,
    "max_queued_requests": 128,
    "autoscaling_config": {
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 8,
        "upscale_delay_s": 5,
        "downscale_delay_s": 60,
    },
    "ray_actor_options": {"num_cpus": 1},
}
RETRIEVER_OPTIONS: dict[str, Any] = {
    "max_ongoing_requests": 32,
    "max_queued_requests": 128,
    "autoscaling_config": {
        "min_replicas": 1,
        "max_replicas": 4,
        "target_ongoing_requests": 8,
        "upscale_delay_s": 5,
        "downscale_delay_s": 60,
    },
    "ray_actor_options": {"num_cpus": 1},
}


class ModelSlot:
    """The replica's current pipeline, swapped atomically by ``reconfigure``.

    The previous version stays loaded so requests that started on it (or, in the chain, whose
    candidates came from it) finish on the same catalog.

    A bundle that fails to load (hash mismatch, missing file, mixed FeatureSpaces, unreachable
    URI) must not take a serving replica down: ``load`` then logs the error, keeps the current
    version, and records the failure (``last_load_error``, shown by ``GET /v1/model``, and the
    ``widedeep_serve_model_load_failures_total`` counter). Only at replica start, with nothing
    to serve yet, does it raise, so Serve reports the deployment as failed.
    """

    def __init__(self, verify: bool = True, metrics: Any = None) -> None:
        self.verify = verify
        self.metrics = metrics  # a ServingMetrics (None: failures are only logged and recorded here)
        self.current: RecommendPipeline | None = None
        self.by_version: dict[str, RecommendPipeline] = {}
        self.last_load_error: dict[str, str] | None = None
        self._lock = asyncio.Lock()

    async def load(self, path: str) -> RecommendPipeline:
        """Serve the bundle at ``path`` (a directory or URI, see ``load_bundle``); ``reconfigure`` calls it."""
        try:
            return await self._load(path)
        except Exception as e:  # whatever breaks a load must not take a serving replica down
            if self.current is None:
                raise  # replica start: nothing to fall back to, Serve must see the failure
            self.last_load_error = {
                "bundle": str(path),
                "error": f"{type(e).__name__}: {e}",
                "at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            }
            if self.metrics is not None:
                self.metrics.load_failed()
            log.error(
                "could not load bundle %s, still serving model %s from %s: %s: %s",
                path,
                self.current.version,
                self.current.bundle.source,
                type(e).__name__,
                e,
            )
            return self.current

    async def _load(self, path: str) -> RecommendPipeline:
        async with self._lock:
            for p in self.by_version.values():
                if p.bundle.source == str(path):
                    self.current = p
                    self.last_load_error = None
                    return p
            t0 = time.monotonic()
            # off the event loop: requests keep being served by the current version meanwhile
            pipe = await asyncio.to_thread(lambda: RecommendPipeline(load_bundle(path, verify=self.verify)))
            self.by_version = {v: p for v, p in self.by_version.items() if p is self.current}
            self.by_version[pipe.version] = pipe
            self.current = pipe
            self.last_load_error = None
            log.info("serving model %s from %s (loaded in %.2fs)", pipe.version, path, time.monotonic() - t0)
            return pipe

    def get(self) -> RecommendPipeline:
        if self.current is None:
            raise ServingError("no model loaded yet (the bundle is still loading or failed to load)")
        return self.current

    async def version(self, version: str, path: str) -> RecommendPipeline:
        """The pipeline of ``version``: a chain request is scored on the catalog it was retrieved from.

        Unlike ``load`` a failure raises: scoring on another version's catalog would be wrong.
        """
        p = self.by_version.get(version)
        if p is not None:
            return p
        try:
            return await self._load(path)
        except Exception as e:
            raise ServingError(f"model {version} ({path}) could not be loaded: {type(e).__name__}: {e}") from None

    def info(self) -> dict[str, Any]:
        """``GET /v1/model``'s body for the current version plus ``last_load_error`` (None when the
        last load worked)."""
        return {**model_info(self.get()), "last_load_error": self.last_load_error}


def set_threads(n: int) -> None:
    torch.set_num_threads(n)


@serve.deployment(name="Retriever", **RETRIEVER_OPTIONS)
class Retriever:
    """Prepares the request (FeatureSpace transform) and retrieves N candidate rows."""

    def __init__(self, verify_bundle: bool = True, torch_threads: int = 1) -> None:
        set_threads(torch_threads)
        self.metrics = ServingMetrics("Retriever")
        self.slot = ModelSlot(verify_bundle, self.metrics)
        self.drift = ReplicaDrift(self.metrics)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        await self.slot.load(str(user_config["bundle"]))

    def check_health(self) -> None:
        self.slot.get()

    async def version(self) -> str:
        """The model version this replica serves (the chain's ``/healthz``)."""
        return self.slot.get().version

    async def retrieve(
        self, user: dict[str, Any], context: dict[str, Any], n: int | None, exclude: list[Any]
    ) -> tuple[str, str, pa.Table, np.ndarray, np.ndarray | None]:
        """``(version, bundle source, query row, int32 candidate rows, their retrieval logits or
        None)``; ``n=None``: no retrieval. The logits give the Ranker the offline order
        (``RecommendPipeline.final_order``).

        The source is the path or URI the bundle was deployed as (not a node-local cached copy),
        so a Ranker on another node can load that version if it has not yet.
        """
        pipe = self.slot.get()
        t0 = time.perf_counter()
        q = pipe.prepare(user, context)
        t1 = time.perf_counter()
        self.metrics.stage("prepare", (t1 - t0) * 1e3)
        self.metrics.feature_oov(q.oov)
        self.drift.observe(pipe, q.row)
        rows, retrieval = np.zeros(0, dtype=np.int32), None
        if n is not None:
            ((rows, retrieval),) = pipe.retrieve_scored([q], n, [pipe.exclude_rows(exclude) if exclude else None])
            self.metrics.stage("retrieve", (time.perf_counter() - t1) * 1e3)
            self.metrics.retrieved(len(rows))
        return pipe.version, pipe.bundle.source, q.row, rows, retrieval

    async def drift_info(self) -> dict[str, Any] | None:
        """This replica's request drift against the current model's training profile (``GET /v1/model``)."""
        return self.drift.info(self.slot.get())


@serve.deployment(name="Ranker", **RANKER_OPTIONS)
class Ranker:
    """Candidate-aware Wide & Deep scoring, batched across concurrent requests."""

    def __init__(
        self,
        max_batch_size: int = 16,
        batch_wait_timeout_s: float = 0.0,
        verify_bundle: bool = True,
        torch_threads: int = 1,
    ) -> None:
        set_threads(torch_threads)
        self.metrics = ServingMetrics("Ranker")
        self.slot = ModelSlot(verify_bundle, self.metrics)
        self._score.set_max_batch_size(max_batch_size)
        self._score.set_batch_wait_timeout_s(batch_wait_timeout_s)

    async def reconfigure(self, user_config: dict[str, Any]) -> None:
        await self.slot.load(str(user_config["bundle"]))

    def check_health(self) -> None:
        self.slot.get()

    async def version(self) -> str:
        """The model version this replica serves (the chain's ``/healthz``)."""
        return self.slot.get().version

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.0)
    async def _score(self, jobs: list[tuple[RecommendPipeline, pa.Table, np.ndarray]]) -> list[np.ndarray]:
        return score_jobs(jobs)

    async def rank(
        self,
        version: str,
        path: str,
        row: pa.Table,
        rows: np.ndarray,
        k: int | None,
        item_ids: list[Any] | None = None,
        retrieval: np.ndarray | None = None,
    ) -> tuple[str, list[tuple[Any, float]]]:
        """Top-``k`` of ``rows`` (``k=None``: every item, in order; ``item_ids`` given: their rows),
        ordered like offline evaluation when ``retrieval`` logits come with retrieved rows."""
        pipe = await self.slot.version(version, path)
        if item_ids is not None:
            rows, retrieval = pipe.item_rows(item_ids, "body.items"), None
        t0 = time.perf_counter()
        logits = await self._score((pipe, row, rows))
        self.metrics.stage("rank", (time.perf_counter() - t0) * 1e3)
        return pipe.version, ranked(pipe, rows, logits, k, pipe.final_order(logits, retrieval))

    async def model_info(self) -> dict[str, Any]:
        return self.slot.info()


def score_jobs(jobs: list[tuple[RecommendPipeline, pa.Table, np.ndarray]]) -> list[np.ndarray]:
    """Score a batch; jobs of different model versions (during a swap) are scored separately."""
    out: list[np.ndarray | None] = [None] * len(jobs)
    groups: dict[int, list[int]] = {}
    for i, (pipe, _, _) in enumerate(jobs):
        groups.setdefault(id(pipe), []).append(i)
    for idx in groups.values():
        pipe = jobs[idx[0]][0]
        parts = [(pipe.bundle.ranker.query_part(jobs[i][1]), jobs[i][1], jobs[i][2]) for i in idx]
        for i, logits in zip(idx, pipe.score(parts), strict=True):
            out[i] = logits
    return out  # type: ignore[return-value]


def ranked(
    pipe: RecommendPipeline, rows: np.ndarray, logits: np.ndarray, k: int | None, key: np.ndarray | None = None
) -> list[tuple[Any, float]]:
    """``k`` given: the top ``k`` by ``key`` (the final order; default the ranker's logits);
    ``k=None`` (``/v1/rank``): every item in the given order with its ranker score."""
    if k is not None:
        return pipe.top_k(rows, logits, k, key)
    keys = pipe.bundle.item_keys[rows]
    scores = pipe.bundle.ranker.predict(logits)
    return [(key.item() if hasattr(key, "item") else key, float(s)) for key, s in zip(keys, scores, strict=True)]


def model_info(pipe: RecommendPipeline) -> dict[str, Any]:
    """``GET /v1/model``: versions, provenance and a summary of the features."""
    b = pipe.bundle
    fs = b.fs
    feats = []
    for f in fs.features:
        d: dict[str, Any] = {"name": f.name, "kind": f.kind, "side": fs.feature_side(f.name)}
        if f.name in fs.states and "num_rows" in fs.states[f.name]:
            d["num_rows"] = fs.num_rows(f.name)
        if fs.oov_id(f.name) is not None:
            d["oov_id"] = fs.oov_id(f.name)
        if isinstance(f, CrossedFeature):
            d["inputs"] = list(f.inputs)
        feats.append(d)
    m = b.manifest
    return {
        "model_version": b.version,
        "bundle": b.source,
        "bundle_local_path": str(b.path),
        "versions": m.get("versions", {}),
        "feature_space_hash": m["feature_space_hash"],
        "sources": {
            k: {kk: vv for kk, vv in v.items() if kk != "meta"} if isinstance(v, dict) else v
            for k, v in m.get("sources", {}).items()
        },
        "counts": m.get("counts", {}),
        "index": m.get("index", {}),
        "request_fields": {"user_key": pipe.user_key_field, "user": pipe.user_fields, "context": pipe.context_fields},
        "features": feats,
    }
