"""``widedeep predict``: offline scoring of a table with a checkpoint or bundle (Ray Data)."""

from __future__ import annotations

import argparse

HELP = "score the rows of Parquet/CSV inputs with a ranking checkpoint or a bundle, on Ray Data, into Parquet"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, help="a ranking checkpoint or a serving bundle (directory or URI)")
    p.add_argument(
        "--input",
        required=True,
        nargs="+",
        metavar="PATH",
        help="files, directories, globs or URIs (s3://, gs://, ...)",
    )
    p.add_argument("--out", required=True, help="output directory (local or URI): part-*.parquet + _predict.json")
    p.add_argument(
        "--keys",
        default="",
        help="comma-separated input columns copied to the output next to the score (e.g. user_id,item_id)",
    )
    p.add_argument(
        "--format",
        default="auto",
        choices=["auto", "parquet", "csv", "criteo", "movielens"],
        help="input format (default: the model's feature spec, else detected)",
    )
    p.add_argument(
        "--on-bad-rows",
        default="error",
        choices=["error", "skip"],
        help="fail on a bad row (default) or skip it and count it in _predict.json (as `widedeep prepare`)",
    )
    p.add_argument("--batch-size", type=int, default=8192, help="rows read, transformed and scored at once")
    p.add_argument("--unit-rows", type=int, default=131_072, help="rows of Parquet input an actor takes at a time")
    p.add_argument("--workers", type=int, default=0, help="actors in the pool (default: as the cluster allows)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0, help="CPUs (and torch threads) per actor")
    p.add_argument("--gpus-per-worker", type=float, default=0.0, help="> 0: score on GPUs (a ranking checkpoint)")


def run(args: argparse.Namespace) -> int:
    from widedeep.batch.predict import PredictOptions, predict

    fmt = args.format
    if fmt == "auto":
        fmt = _spec_format(args.model)
    opts = PredictOptions(
        inputs=list(args.input),
        model=args.model,
        out=args.out,
        keys=tuple(k.strip() for k in args.keys.split(",") if k.strip()),
        format=fmt,
        on_bad_rows=args.on_bad_rows,
        batch_size=args.batch_size,
        unit_rows=args.unit_rows,
        workers=args.workers,
        cpus_per_worker=args.cpus_per_worker,
        gpus_per_worker=args.gpus_per_worker,
    )
    m = predict(opts)
    print(
        f"scored {m['rows_written']} rows -> {args.out} (skipped {m['skipped_rows']['total']}; "
        f"{m['seconds']:.1f}s, {m['rows_per_s']:.0f} rows/s)"
    )
    return 0


def _spec_format(model: str) -> str:
    """The input format the model's feature spec names (``format:``), as ``prepare`` uses it."""
    from widedeep.batch.scorers import model_kind
    from widedeep.features import FeatureSpace
    from widedeep.paths import Location

    loc = Location.of(model)
    model_kind(model)  # a clear error for a path that is neither
    return FeatureSpace.load(loc / "feature_space.json").spec.format
