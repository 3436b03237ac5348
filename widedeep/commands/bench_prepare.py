"""``widedeep bench prepare``: generate + prepare a Criteo-shaped dataset on the local Ray,
against a single-process pandas implementation of the same fit + transform + write."""

from __future__ import annotations

import argparse

HELP = "benchmark prepare (fit + transform + write) on Criteo-shaped rows vs a pandas baseline"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--rows", type=int, default=2_000_000)
    p.add_argument("--cardinality", type=int, default=200_000, help="distinct values per categorical column")
    p.add_argument("--json", default=None, help="write the figures here")
    p.add_argument("--workdir", default=None, help="where to write data (default: a temp dir, removed after)")
    p.add_argument("--shard-rows", type=int, default=250_000, help="rows per generated input file")
    p.add_argument("--skip-pandas", action="store_true", help="skip the pandas baseline")


def run(args: argparse.Namespace) -> int:
    import json
    import shutil
    import tempfile
    from pathlib import Path

    from widedeep.data.bench import run_prepare_bench

    work = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="widedeep-bench-prepare-"))
    try:
        res = run_prepare_bench(work, args.rows, args.cardinality, args.shard_rows, pandas=not args.skip_pandas)
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    for line in res.pop("_lines"):
        print(line)
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1, sort_keys=True) + "\n")
    return 0
