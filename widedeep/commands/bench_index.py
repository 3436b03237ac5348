"""``widedeep bench index``: the HNSW item index vs exact search and other HNSW libraries (recall, per-search)."""

from __future__ import annotations

import argparse

HELP = (
    "the item index's HNSW graph (voyager) vs exact search and, where installed, hnswlib, faiss and usearch: "
    "recall@k against exact and per-search latency at the serving shape, interleaved"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", help="serving bundle whose item embeddings to index (default: a synthetic one)")
    parser.add_argument("--items", type=int, default=100_000, help="catalog size of the synthetic bundle")
    parser.add_argument("--k", type=int, default=500, help="results per search (the candidates a request retrieves)")
    parser.add_argument("--m", type=int, default=16, help="HNSW graph degree (the synthetic bundle's)")
    parser.add_argument("--ef-construction", type=int, default=100)
    parser.add_argument("--ef-search", type=int, default=600)
    parser.add_argument("--queries", type=int, default=1000, help="queries for recall (and timing)")
    parser.add_argument("--rounds", type=int, default=8, help="interleaved timing rounds")
    parser.add_argument("--per-round", type=int, default=200, help="searches per contender per round")
    parser.add_argument("--json", help="write the results here")


def run(args: argparse.Namespace) -> int:
    import json

    from widedeep.benchmarks.index import IndexBenchConfig, run_index_bench, summary

    cfg = IndexBenchConfig(
        bundle=args.bundle,
        items=args.items,
        k=args.k,
        m=args.m,
        ef_construction=args.ef_construction,
        ef_search=args.ef_search,
        queries=args.queries,
        rounds=args.rounds,
        per_round=args.per_round,
    )
    out = run_index_bench(cfg)
    print(summary(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0
