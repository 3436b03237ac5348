"""``widedeep bench serve``: closed-loop HTTP load against the recommender on loopback.

Measured in one run, on one Serve instance:

- ``noop_c{1,8}``: a FastAPI no-op deployment (Serve's own floor: proxy -> replica -> back);
- ``recommend_c{1,8}``: ``POST /v1/recommend`` (retrieve N candidates, rank, top-k);
- ``rank_c{1,8}``: ``POST /v1/rank`` with ``--rank-items`` item ids;
- ``chain_recommend_c{1,8}`` (``--with-chain``): the same requests through Ingress -> Retriever
  -> Ranker, to show what each actor hop costs;
- ``inprocess_recommend`` / ``inprocess_rank``: the same calls on ``RecommendPipeline`` in this
  process (the compute, without Serve).

Each client is a thread with one keep-alive connection sending the next request as soon as the
previous answer arrives (closed loop); the load generator shares the machine's cores with Serve.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ray import serve

from widedeep.benchmarks.noop_app import Noop
from widedeep.export.synthetic import build_synthetic_bundle
from widedeep.ray_runtime import SERVE_ENV, ensure_ray
from widedeep.serve.app import build_app_with
from widedeep.serve.bundle import load_bundle
from widedeep.serve.pipeline import RecommendPipeline

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServeBenchConfig:
    """What to measure (``widedeep bench serve`` flags)."""

    bundle: str | None
    seconds: float = 10.0
    warmup_s: float = 1.0
    clients: tuple[int, ...] = (1, 8)
    items: int = 100_000
    candidates: int = 500
    k: int = 10
    rank_items: int = 500
    port: int = 8000
    with_chain: bool = False


def _noop_app() -> Any:
    return Noop.options(ray_actor_options={"num_cpus": 0.5}).bind()


def _client(
    port: int, path: str, bodies: list[bytes], stop_at: float, start_at: float, lat: list[float], errors: list[str]
) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"content-type": "application/json"}
    i = 0
    while True:
        t0 = time.perf_counter()
        if t0 >= stop_at:
            break
        body = bodies[i % len(bodies)]
        i += 1
        try:
            conn.request("POST", path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            ok = resp.status == 200
        except (OSError, http.client.HTTPException) as e:
            conn.close()
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            ok, data = False, repr(e).encode()
        t1 = time.perf_counter()
        if t0 < start_at:
            continue  # warm-up
        if ok:
            lat.append((t1 - t0) * 1e3)
        else:
            errors.append(data[:200].decode("utf-8", "replace"))
    conn.close()


def _stats(lat: list[float], errors: list[str], seconds: float) -> dict[str, Any]:
    a = np.asarray(lat) if lat else np.asarray([np.nan])
    out = {
        "requests": len(lat),
        "errors": len(errors),
        "rps": len(lat) / seconds,
        "p50_ms": float(np.percentile(a, 50)),
        "p95_ms": float(np.percentile(a, 95)),
        "p99_ms": float(np.percentile(a, 99)),
        "mean_ms": float(a.mean()),
    }
    if errors:
        out["first_error"] = errors[0]
    return out


def load(port: int, path: str, bodies: list[bytes], clients: int, seconds: float, warmup_s: float) -> dict[str, Any]:
    """Closed-loop load: ``clients`` threads for ``warmup_s + seconds``; stats over the last ``seconds``."""
    now = time.perf_counter()
    start_at, stop_at = now + warmup_s, now + warmup_s + seconds
    lats: list[list[float]] = [[] for _ in range(clients)]
    errors: list[str] = []
    threads = [
        threading.Thread(target=_client, args=(port, path, bodies, stop_at, start_at, lats[i], errors))
        for i in range(clients)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return _stats([x for lat in lats for x in lat], errors, seconds)


def _inprocess(fn: Any, n: int) -> dict[str, Any]:
    """Wall latency of ``fn`` and its CPU time (``cpu_p50_ms``: what it costs when the cores are
    shared with other work, where wall time mostly measures waiting for a core)."""
    lat, cpu = [], []
    for i in range(n + 5):
        t0, c0 = time.perf_counter(), time.process_time()
        fn(i)
        if i >= 5:
            lat.append((time.perf_counter() - t0) * 1e3)
            cpu.append((time.process_time() - c0) * 1e3)
    return {**_stats(lat, [], max(sum(lat) / 1e3, 1e-9)), "cpu_p50_ms": float(np.median(cpu))}


def request_bodies(pipe: Any, cfg: ServeBenchConfig, n: int = 64, seed: int = 0) -> tuple[list[bytes], list[bytes]]:
    """Recommend bodies (known users, varied context) and rank bodies (``rank_items`` catalog ids)."""
    rng = np.random.default_rng(seed)
    b = pipe.bundle
    users = list(b.user_rows)[:n] or [None]
    rec, rank = [], []
    for i in range(n):
        user = {} if users[i % len(users)] is None else {pipe.user_key_field: users[i % len(users)]}
        rec.append(json.dumps({"user": user, "context": {}, "k": cfg.k}).encode())
        ids = b.item_keys[rng.choice(len(b.item_keys), size=min(cfg.rank_items, len(b.item_keys)), replace=False)]
        rank.append(json.dumps({"user": user, "items": [x.item() if hasattr(x, "item") else x for x in ids]}).encode())
    return rec, rank


def run_bench(cfg: ServeBenchConfig) -> dict[str, Any]:
    """Deploy, measure every phase, tear down; returns the JSON document."""
    torch.set_num_threads(1)
    tmp = None
    bundle = cfg.bundle
    if bundle is None:
        tmp = tempfile.TemporaryDirectory(prefix="widedeep-bench-serve-")
        t0 = time.monotonic()
        log.info("building a synthetic bundle: %d items (use --bundle to skip)", cfg.items)
        bundle = str(
            build_synthetic_bundle(Path(tmp.name) / "bundle", n_items=cfg.items, n_users=max(cfg.items // 5, 100))
        )
        log.info("synthetic bundle ready in %.1fs", time.monotonic() - t0)
    pipe = RecommendPipeline(load_bundle(bundle))
    rec, rank = request_bodies(pipe, cfg)
    out: dict[str, Any] = {
        "config": {**cfg.__dict__, "bundle": bundle, "clients": list(cfg.clients)},
        "bundle": {
            "model_version": pipe.version,
            "items": len(pipe.bundle.item_keys),
            "index": pipe.bundle.manifest.get("index", {}),
        },
        "machine": {"cpus": os.cpu_count(), "loadavg_start": list(os.getloadavg())},
    }
    # the compute alone, in this process (same requests)
    recs = [json.loads(x) for x in rec]
    ranks = [json.loads(x) for x in rank]
    out["inprocess_recommend"] = _inprocess(
        lambda i: pipe.recommend(recs[i % len(recs)]["user"], {}, k=cfg.k, n=cfg.candidates), 200
    )
    out["inprocess_rank"] = _inprocess(
        lambda i: pipe.rank(ranks[i % len(ranks)]["user"], {}, ranks[i % len(ranks)]["items"]), 200
    )
    log.info(
        "in-process: recommend p50 %.2f ms, rank p50 %.2f ms",
        out["inprocess_recommend"]["p50_ms"],
        out["inprocess_rank"]["p50_ms"],
    )

    ensure_ray()
    # what the Serve processes run with (a local Ray gets SERVE_ENV unless the caller set them)
    out["machine"]["serve_env"] = {k: os.environ.get(k) for k in SERVE_ENV}
    serve.start(http_options={"host": "127.0.0.1", "port": cfg.port})
    try:
        args = {
            "bundle": bundle,
            "candidates": cfg.candidates,
            "default_k": cfg.k,
            "max_k": max(cfg.k, 100) if cfg.candidates >= 100 else cfg.k,
            "max_rank_items": max(cfg.rank_items, 1000),
        }
        # logical CPUs only: every replica of the three apps must fit on a small local Ray
        half = {"ray_actor_options": {"num_cpus": 0.5}}
        serve.run(build_app_with(args, {"Ingress": half}), name="recommender", route_prefix="/")
        serve.run(_noop_app(), name="noop", route_prefix="/noop")
        if cfg.with_chain:
            serve.run(
                build_app_with({**args, "pipeline": "chain"}, {d: half for d in ("Ingress", "Retriever", "Ranker")}),
                name="chain",
                route_prefix="/chain",
            )
        phases = [("noop", "/noop/", rec), ("recommend", "/v1/recommend", rec), ("rank", "/v1/rank", rank)]
        if cfg.with_chain:
            phases.append(("chain_recommend", "/chain/v1/recommend", rec))
        for c in cfg.clients:
            for name, path, bodies in phases:
                r = load(cfg.port, path, bodies, c, cfg.seconds, cfg.warmup_s)
                out[f"{name}_c{c}"] = r
                log.info(
                    "%-16s c=%d  %7.1f req/s  p50 %6.2f  p95 %6.2f  p99 %6.2f ms  errors %d",
                    name,
                    c,
                    r["rps"],
                    r["p50_ms"],
                    r["p95_ms"],
                    r["p99_ms"],
                    r["errors"],
                )
    finally:
        serve.shutdown()
        if tmp is not None:
            tmp.cleanup()
    out["machine"]["loadavg_end"] = list(os.getloadavg())
    return out


def summary(out: dict[str, Any]) -> str:
    rows = [f"{'phase':<20}{'req/s':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>8}"]
    for key, v in out.items():
        if isinstance(v, dict) and "p50_ms" in v:
            rows.append(
                f"{key:<20}{v['rps']:>9.1f}{v['p50_ms']:>9.2f}{v['p95_ms']:>9.2f}{v['p99_ms']:>9.2f}{v['errors']:>8}"
            )
    r1, n1 = out.get("recommend_c1"), out.get("noop_c1")
    if r1 and n1:
        rows.append(
            f"recommend c1 p50 - no-op floor p50 = {r1['p50_ms'] - n1['p50_ms']:.2f} ms "
            f"(in-process compute p50 {out['inprocess_recommend']['p50_ms']:.2f} ms wall, "
            f"{out['inprocess_recommend']['cpu_p50_ms']:.2f} ms CPU); "
            f"load average {out['machine']['loadavg_start'][0]:.1f} -> {out['machine']['loadavg_end'][0]:.1f}"
        )
    return "\n".join(rows)
