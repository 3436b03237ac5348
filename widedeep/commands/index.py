"""``widedeep index``: embed the whole item catalog with a retriever and build its item index."""

from __future__ import annotations

import argparse

HELP = "embed the item catalog with a two-tower checkpoint and build an exact or HNSW item index"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", required=True, help="retriever checkpoint directory (task: retrieval)")
    parser.add_argument(
        "--items",
        required=True,
        help="prepared data directory (all splits) or one split / Parquet file with item_key + item columns",
    )
    parser.add_argument("--out", required=True, help="output index directory")
    parser.add_argument(
        "--kind",
        choices=["auto", "exact", "hnsw"],
        default="auto",
        help="auto: exact up to --exact-max-items items, else hnsw (default auto)",
    )
    parser.add_argument("--exact-max-items", type=int, default=1_000_000)
    parser.add_argument("--recall-k", type=int, default=100, help="N of the approximate index's recall@N vs exact")
    parser.add_argument("--hnsw-m", type=int, default=32)
    parser.add_argument("--hnsw-ef-construction", type=int, default=200)
    parser.add_argument("--hnsw-ef-search", type=int, default=256)


def run(args: argparse.Namespace) -> int:
    from widedeep.export.item_index import build_item_index

    info = build_item_index(
        args.checkpoint,
        args.items,
        args.out,
        kind=args.kind,
        exact_max_items=args.exact_max_items,
        recall_k=args.recall_k,
        m=args.hnsw_m,
        ef_construction=args.hnsw_ef_construction,
        ef_search=args.hnsw_ef_search,
    )
    rec = {k: v for k, v in info.items() if k.startswith("recall@")}
    print(
        f"index {args.out}: {info['kind']}, {info['n_items']} items x {info['dim']} dims"
        + (f", {', '.join(f'{k} {v:.4f}' for k, v in rec.items())}" if rec else "")
    )
    return 0
