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
    p.add_argument("--day", type=int, default=0, help="write day N's window of the world (timestamps follow day N-1's)")
    p.add_argument(
        "--drift",
        type=float,
        default=0.0,
        help="in [0, 1): fraction of apps released on days 1..3, and the per-day popularity trend",
    )
    p.add_argument("--poison", help="a corrupted window on purpose: flip-labels | scale:COLUMN:FACTOR")


def run(args: argparse.Namespace) -> int:
    from widedeep.data.generate import generate_appstore
    from widedeep.errors import ConfigError

    for k in ("rows", "users", "items", "shard_rows"):
        if getattr(args, k) <= 0:
            raise ConfigError(f"--{k.replace('_', '-')}: must be > 0")
    if args.items < 20:
        raise ConfigError("--items: must be >= 20 (planted pairs and categories need room)")
    try:
        m = generate_appstore(
            args.out,
            args.rows,
            users=args.users,
            items=args.items,
            seed=args.seed,
            shard_rows=args.shard_rows,
            day=args.day,
            drift=args.drift,
            poison=args.poison,
        )
    except ValueError as e:
        raise ConfigError(f"--{str(e).split(':', 1)[0]}: {str(e).split(':', 1)[1].strip()}") from None
    print(
        f"generated {m['rows']} rows in {m['shards']} shard(s) -> {args.out} "
        f"({m['rows'] / max(m['seconds'], 1e-9):,.0f} rows/s); "
        f"install rate {m['install_rate']:.3f}; oracle AUC {m['oracle_auc']}"
    )
    return 0
