"""``widedeep export``: trained checkpoints + prepared data -> a serving bundle directory."""

from __future__ import annotations

import argparse

HELP = "build a serving bundle from a ranker and a retriever checkpoint"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ranker", required=True, help="Wide & Deep checkpoint directory (task: ranking)")
    parser.add_argument("--retriever", required=True, help="two-tower checkpoint directory (task: retrieval)")
    parser.add_argument(
        "--out",
        required=True,
        help="bundle directory to create (must not exist or be empty), or a URI "
        "(s3://, gs://, file://, ...: written locally, then uploaded)",
    )
    parser.add_argument("--data", help="prepared data directory for the catalog (default: the ranker's config 'data')")
    parser.add_argument(
        "--index",
        choices=["auto", "exact", "hnsw"],
        default="auto",
        help="item index: exact top-N, HNSW, or auto (exact up to 1M items)",
    )
    parser.add_argument("--version", help="model version string reported by the API (default: a content hash)")
    parser.add_argument(
        "--register",
        metavar="NAME",
        help="register the bundle in the MLflow registry as a new "
        "version of NAME (needs the mlflow extra); --ranker/--retriever may be models:/NAME@ALIAS",
    )
    parser.add_argument(
        "--alias",
        action="append",
        default=[],
        help="alias of the registered version (repeatable: champion, challenger)",
    )
    parser.add_argument(
        "--tracking-uri", help="MLflow tracking/registry URI (default: MLFLOW_TRACKING_URI, else file:./mlruns)"
    )


def run(args: argparse.Namespace) -> int:
    from widedeep import tracking
    from widedeep.export.from_checkpoints import export_from_checkpoints
    from widedeep.serve.bundle import read_manifest

    ranker = tracking.resolve(args.ranker, "checkpoint", args.tracking_uri)
    retriever = tracking.resolve(args.retriever, "checkpoint", args.tracking_uri)
    out = export_from_checkpoints(
        ranker, retriever, args.out, data=args.data, index_kind=args.index, version=args.version
    )
    m = read_manifest(out)
    if args.register:
        uri = tracking.tracking_uri(args.tracking_uri)
        v = tracking.register(
            uri,
            args.register,
            str(out),
            "bundle",
            aliases=args.alias,
            tags={"widedeep.model_version": str(m["model_version"])},
        )
        aliases = f" ({', '.join(args.alias)})" if args.alias else ""
        print(f"registered {out} as {args.register} version {v}{aliases}")
    print(
        f"bundle {out}: version {m['model_version']}, {m['counts']['items']} items, {m['counts']['users']} users, "
        f"index {m['index']['kind']}, FeatureSpace {m['feature_space_hash'][:12]}"
    )
    return 0
