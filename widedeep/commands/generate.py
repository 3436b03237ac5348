"""``widedeep generate``: synthetic app-store impression logs with a planted, documented signal."""

from __future__ import annotations

import argparse

HELP = "write synthetic app-store impressions (Parquet shards, constant memory; see widedeep/data/generate.py)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", required=True, help="output directory (part-*.parquet + _generator.json)")
    p.add_argument("--rows", type=int, required=True, help="impressions to write")
    p.add_argument("--users", type=int, default=10_000)
    p.add_argument("--items", type=int, default=1_000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard-rows", type=int, default=250_000, help="rows per Parquet file")


def run(args: argparse.Namespace) -> int:
    from widedeep.data.generate import generate_appstore
    from widedeep.errors import ConfigError

    for k in ("rows", "users", "items", "shard_rows"):
        if getattr(args, k) <= 0:
            raise ConfigError(f"--{k.replace('_', '-')}: must be > 0")
    if args.items < 20:
        raise ConfigError("--items: must be >= 20 (planted pairs and categories need room)")
    m = generate_appstore(args.out, args.rows, users=args.users, items=args.items, seed=args.seed, shard_rows=args.shard_rows)
    print(
        f"generated {m['rows']} rows in {m['shards']} shard(s) -> {args.out} ({m['rows'] / max(m['seconds'], 1e-9):,.0f} rows/s); "
        f"install rate {m['install_rate']:.3f}; oracle AUC {m['oracle_auc']}"
    )
    return 0
