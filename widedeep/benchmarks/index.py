"""``widedeep bench index``: the item index's HNSW graph against exact search and other HNSW libraries.

Measured in one process, on one catalog (the item embeddings of ``--bundle``, or of the synthetic
bundle ``widedeep bench serve`` builds: 100k items, dim 32) and the serving shape (one query per
call, ``k`` = the candidates a request retrieves):

- recall@k of each approximate index against the exact top-k, over item embeddings sampled from
  the catalog (what ``build_index`` records in ``index.json``) and over the bundle's user vectors
  (what serving sends);
- per-search latency in interleaved rounds: each round times every contender on the same queries,
  in alternating order; the figure is the median of the round medians and the ratio the median of
  the per-round ratios against ``voyager``, so load from other processes falls on all alike.

Contenders: ``exact`` (``ExactIndex``, the baseline every approximate index is scored against);
``index`` (``HnswIndex.search``, what serving calls: voyager's graph plus the exclusion and
padding around it) and ``voyager`` (the same graph, the library call alone); where installed,
``hnswlib`` (the index before format 2; a source archive that needs a compiler), ``faiss``
(``IndexHNSWFlat``, inner product, one OpenMP thread per single query) and ``usearch``. The
libraries are compared call against call, with the same M, ef_construction and ef_search, built
single-threaded (deterministic). The last three are not dependencies of the project; ``pip install
hnswlib faiss-cpu usearch`` to measure them.
"""

from __future__ import annotations

import importlib.util
import logging
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from widedeep.export.synthetic import build_synthetic_bundle
from widedeep.retrieval.index import ExactIndex, HnswIndex, load_index
from widedeep.serve.bundle import load_bundle
from widedeep.serve.pipeline import RecommendPipeline

log = logging.getLogger(__name__)

Search = Callable[[np.ndarray], np.ndarray]  # one query [dim] -> result rows [k], best first


@dataclass(frozen=True)
class IndexBenchConfig:
    """What to measure (``widedeep bench index`` flags)."""

    bundle: str | None = None
    items: int = 100_000
    k: int = 500
    m: int = 16
    ef_construction: int = 100
    ef_search: int = 600
    queries: int = 1000
    rounds: int = 8
    per_round: int = 200


def _hnswlib(v: np.ndarray, cfg: IndexBenchConfig) -> Search:
    import hnswlib

    index = hnswlib.Index("ip", v.shape[1])
    index.init_index(max_elements=v.shape[0], M=cfg.m, ef_construction=cfg.ef_construction, random_seed=0)
    index.add_items(v, np.arange(v.shape[0]), num_threads=1)
    index.set_ef(max(cfg.ef_search, cfg.k))
    return lambda q: index.knn_query(q[None], k=cfg.k, num_threads=1)[0][0].astype(np.int64)


def _faiss(v: np.ndarray, cfg: IndexBenchConfig) -> Search:
    import faiss

    faiss.omp_set_num_threads(1)  # a single query gains nothing from OpenMP's team
    index = faiss.IndexHNSWFlat(v.shape[1], cfg.m, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = cfg.ef_construction
    index.add(v)
    params = faiss.SearchParametersHNSW()
    params.efSearch = max(cfg.ef_search, cfg.k)
    return lambda q: index.search(q[None], cfg.k, params=params)[1][0]


def _usearch(v: np.ndarray, cfg: IndexBenchConfig) -> Search:
    from usearch.index import Index

    index = Index(
        ndim=v.shape[1],
        metric="ip",
        dtype="f32",
        connectivity=cfg.m,
        expansion_add=cfg.ef_construction,
        expansion_search=max(cfg.ef_search, cfg.k),
    )
    index.add(np.arange(v.shape[0]), v, threads=1)
    return lambda q: np.asarray(index.search(q, cfg.k, threads=1).keys, dtype=np.int64)


# name -> (module that must be importable, builder)
CONTENDERS: dict[str, tuple[str, Callable[[np.ndarray, IndexBenchConfig], Search]]] = {
    "hnswlib": ("hnswlib", _hnswlib),
    "faiss": ("faiss", _faiss),
    "usearch": ("usearch", _usearch),
}


def recall(search: Search, queries: np.ndarray, exact_rows: np.ndarray) -> float:
    """Mean |top-k ∩ exact top-k| / k over ``queries``."""
    hits = sum(len(np.intersect1d(search(q), e[e >= 0])) for q, e in zip(queries, exact_rows, strict=True))
    return float(hits / max(int((exact_rows >= 0).sum()), 1))


def catalog(cfg: IndexBenchConfig, tmp: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(item vectors, user query vectors)`` of ``cfg.bundle`` or of a synthetic bundle."""
    bundle = cfg.bundle or str(build_synthetic_bundle(tmp / "bundle", n_items=cfg.items, n_users=cfg.items // 5))
    pipe = RecommendPipeline(load_bundle(bundle))
    users = list(pipe.bundle.user_rows)[: cfg.queries]
    vectors = [pipe.prepare({pipe.user_key_field: u}, {}).vector for u in users]
    _, items, _, _ = load_index(Path(bundle) / "index")
    return np.asarray(items, dtype=np.float32), np.stack(vectors).astype(np.float32)


def run_index_bench(cfg: IndexBenchConfig) -> dict[str, Any]:
    """Build every installed contender on one catalog, measure recall and interleaved per-search latency."""
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="widedeep-bench-index-") as tmp:
        items, user_q = catalog(cfg, Path(tmp))
    rng = np.random.default_rng(0)
    item_q = items[rng.choice(items.shape[0], size=min(cfg.queries, items.shape[0]), replace=False)]
    exact = ExactIndex(items)
    t0 = time.perf_counter()
    index = HnswIndex(items, m=cfg.m, ef_construction=cfg.ef_construction, ef_search=cfg.ef_search, threads=1)
    build_s = time.perf_counter() - t0
    ef = max(cfg.ef_search, cfg.k)
    searches: dict[str, Search] = {
        "exact": lambda q: exact.search(q[None], cfg.k)[0][0],
        "index": lambda q: index.search(q[None], cfg.k)[0][0],
        # the same graph, the library's call alone: what the other libraries are compared with
        "voyager": lambda q: index.index.query(q, k=cfg.k, query_ef=ef)[0].astype(np.int64),
    }
    out: dict[str, Any] = {"config": cfg.__dict__, "items": int(items.shape[0]), "dim": int(items.shape[1])}
    out["exact"], out["index"], out["voyager"] = {}, {}, {"build_s": build_s}
    truth = {"item": exact.search(item_q, cfg.k)[0], "user": exact.search(user_q, cfg.k)[0]}
    for name, (module, build) in CONTENDERS.items():
        if importlib.util.find_spec(module) is None:
            out[name] = {"skipped": f"{module} is not installed"}
            continue
        t0 = time.perf_counter()
        searches[name] = build(items, cfg)
        out[name] = {"build_s": time.perf_counter() - t0}
    for name in [n for n in searches if n != "exact"]:
        out[name].update(
            {
                f"recall@{cfg.k}_{kind}_queries": recall(searches[name], q, truth[kind])
                for kind, q in (("item", item_q), ("user", user_q))
            }
        )
        log.info("%s: %s", name, out[name])
    rounds: dict[str, list[float]] = {name: [] for name in searches}
    names = list(searches)
    for r in range(cfg.rounds):
        for name in names if r % 2 == 0 else names[::-1]:
            search = searches[name]
            for q in user_q[:5]:
                search(q)  # warm the caches this contender uses
            lat = []
            for i in range(cfg.per_round):
                q = user_q[(r * cfg.per_round + i) % user_q.shape[0]]
                t0 = time.perf_counter()
                search(q)
                lat.append(time.perf_counter() - t0)
            rounds[name].append(float(np.median(lat) * 1e3))
    base = np.asarray(rounds["voyager"])
    for name, lat_ms in rounds.items():
        out[name].update(
            per_search_ms=float(np.median(lat_ms)),
            per_search_vs_voyager=float(np.median(np.asarray(lat_ms) / base)),
            rounds_ms=lat_ms,
        )
    return out


def summary(out: dict[str, Any]) -> str:
    k = out["config"]["k"]
    rows = [
        f"{out['items']} items, dim {out['dim']}, one query per search, k={k}, "
        f"{out['config']['rounds']} interleaved rounds of {out['config']['per_round']} searches",
        f"{'index':<10}{'per-search ms':>14}{'vs voyager':>12}{f'recall@{k} item q':>18}{'user q':>10}{'build s':>9}",
    ]
    for name in ("exact", "index", "voyager", *CONTENDERS):
        v = out[name]
        if "skipped" in v:
            rows.append(f"{name:<10}  skipped: {v['skipped']}")
            continue
        rec_i, rec_u = v.get(f"recall@{k}_item_queries", 1.0), v.get(f"recall@{k}_user_queries", 1.0)
        rows.append(
            f"{name:<10}{v['per_search_ms']:>14.3f}{v['per_search_vs_voyager']:>12.3f}"
            f"{rec_i:>18.6f}{rec_u:>10.6f}{v['build_s'] if 'build_s' in v else float('nan'):>9.1f}"
        )
    return "\n".join(rows)
