"""``widedeep recommend``: precomputed top-K per user from a bundle (Ray Data)."""

from __future__ import annotations

import argparse

HELP = "precompute every user's top-K from a bundle, on Ray Data, as Parquet (user, rank, item, score)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bundle", required=True, help="serving bundle (directory or URI)")
    p.add_argument("--out", required=True, help="output directory (local or URI): *.parquet + _recommend.json")
    p.add_argument("--users", help="a text file of user keys, one per line (default: every user of the bundle)")
    p.add_argument("--user", action="append", default=[], help="a user key (repeatable; with or instead of --users)")
    p.add_argument("-k", "--k", type=int, default=10, help="items per user (default %(default)s)")
    p.add_argument(
        "--candidates", type=int, default=500, help="N retrieved and ranked per user, as serving's `candidates`"
    )
    p.add_argument("--context", default="{}", help="JSON context fields for every user, e.g. '{\"hour\": 20}'")
    p.add_argument("--batch-size", type=int, default=256, help="users per actor call (one index search each)")
    p.add_argument("--workers", type=int, default=0, help="actors in the pool (default: one per cluster CPU)")
    p.add_argument("--cpus-per-worker", type=float, default=1.0)


def run(args: argparse.Namespace) -> int:
    import json

    from widedeep.batch.recommend import RecommendOptions, recommend
    from widedeep.errors import DataError
    from widedeep.paths import Location

    try:
        context = json.loads(args.context)
    except json.JSONDecodeError as e:
        raise DataError(f"--context: not JSON ({e})") from None
    if not isinstance(context, dict):
        raise DataError("--context: must be a JSON object of context fields")
    users: list[str] | None = None
    if args.users or args.user:
        users = list(args.user)
        if args.users:
            text = Location.of(args.users).read_text()
            users += [line.strip() for line in text.splitlines() if line.strip()]
    opts = RecommendOptions(
        bundle=args.bundle,
        out=args.out,
        users=tuple(users) if users is not None else None,
        k=args.k,
        candidates=args.candidates,
        context=context,
        batch_size=args.batch_size,
        workers=args.workers,
        cpus_per_worker=args.cpus_per_worker,
    )
    s = recommend(opts)
    print(f"recommended top {s['k']} for {s['users']} users -> {args.out} ({s['rows']} rows, {s['seconds']:.1f}s)")
    return 0
