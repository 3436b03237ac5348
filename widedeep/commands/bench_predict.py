"""``widedeep bench predict``: Ray Data batch scoring vs the same job in one process, same rows."""

from __future__ import annotations

import argparse

HELP = "benchmark predict on Criteo-shaped rows: Ray Data actor pool vs the in-process model, same rows and batch"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--cardinality", type=int, default=200_000, help="distinct values per categorical column")
    p.add_argument("--batch-size", type=int, default=8192, help="rows per scoring batch (both contenders)")
    p.add_argument("--shard-rows", type=int, default=250_000, help="rows per generated Parquet file (= read unit)")
    p.add_argument(
        "--workers",
        type=int,
        default=0,
        help="Ray actors (default: as widedeep predict: one per CPU core the job may use)",
    )
    p.add_argument("--json", default=None, help="write the figures here")
    p.add_argument("--workdir", default=None, help="where to write data (default: a temp dir, removed after)")


def run(args: argparse.Namespace) -> int:
    import json
    import shutil
    import tempfile
    from pathlib import Path

    from widedeep.benchmarks.predict import PredictBenchConfig, run_predict_bench

    cfg = PredictBenchConfig(
        rows=args.rows,
        cardinality=args.cardinality,
        shard_rows=args.shard_rows,
        batch_size=args.batch_size,
        workers=args.workers,
    )
    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="widedeep-bench-predict-"))
    try:
        res = run_predict_bench(work, cfg)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    for line in res.pop("_lines"):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")
    return 0
