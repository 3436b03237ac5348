"""``widedeep prepare``: raw logs + feature spec -> FeatureSpace + sharded Parquet (Ray Data)."""

from __future__ import annotations

import argparse

HELP = "fit a feature spec on raw data and write train/valid/test Parquet shards (Ray Data)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--spec", required=True, help="feature spec YAML (see platform/specs/)")
    p.add_argument(
        "--input",
        required=True,
        nargs="+",
        metavar="PATH",
        help="files, directories, globs or URIs (s3://, gs://, ...)",
    )
    p.add_argument("--out", required=True, help="output directory (local or URI)")
    p.add_argument(
        "--split",
        default="random:0.8,0.1,0.1",
        help="random:F,F,F | time:COLUMN:F,F,F | user-time:USER:TIME:F,F,F (default %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random split")
    p.add_argument(
        "--format",
        default="auto",
        choices=["auto", "parquet", "csv", "criteo", "movielens"],
        help="input format (default: the spec's, else detected)",
    )
    p.add_argument(
        "--on-bad-rows",
        default="error",
        choices=["error", "skip"],
        help="fail on a bad row (default) or skip and count it in the manifest",
    )
    p.add_argument("--shard-rows", type=int, default=1_000_000, help="max rows per Parquet shard")
    p.add_argument(
        "--row-group-rows", type=int, default=65_536, help="rows per Parquet row group (streaming granularity)"
    )
    p.add_argument("--chunk-rows", type=int, default=131_072, help="rows a task processes at once (memory bound)")


def run(args: argparse.Namespace) -> int:
    from widedeep.data.prepare import PrepareOptions, prepare
    from widedeep.features.spec import load_spec

    spec = load_spec(args.spec)
    opts = PrepareOptions(
        inputs=list(args.input),
        out=args.out,
        split=args.split,
        seed=args.seed,
        format=args.format,
        on_bad_rows=args.on_bad_rows,
        shard_rows=args.shard_rows,
        row_group_rows=args.row_group_rows,
        chunk_rows=args.chunk_rows,
    )
    m = prepare(spec, opts)
    s = m["splits"]
    print(
        f"prepared {m['rows_written']} rows -> {args.out} "
        f"(train {s['train']['rows']}, valid {s['valid']['rows']}, test {s['test']['rows']}; "
        f"skipped {m['skipped_rows']['total']}; {m['_timing']['total_s']:.1f}s)"
    )
    return 0
