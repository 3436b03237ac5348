"""``widedeep bench serve``: HTTP latency/throughput of the recommender vs Serve's no-op floor."""

from __future__ import annotations

import argparse

HELP = "closed-loop HTTP benchmark of /v1/recommend and /v1/rank vs a no-op Serve endpoint and in-process compute"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bundle", help="serving bundle (default: build a synthetic one: 100k items)")
    parser.add_argument("--json", help="write the results here")
    parser.add_argument("--seconds", type=float, default=10.0, help="T: measured seconds per phase (after 1 s warm-up)")
    parser.add_argument("--items", type=int, default=100_000, help="catalog size of the synthetic bundle")
    parser.add_argument("--candidates", type=int, default=500, help="N candidates retrieved and ranked")
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--rank-items", type=int, default=500, help="items per /v1/rank request")
    parser.add_argument("--clients", default="1,8", help="concurrent clients per phase, comma-separated")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--with-chain",
        action="store_true",
        help="also measure the Ingress -> Retriever -> Ranker chain (shows the cost of actor hops)",
    )


def run(args: argparse.Namespace) -> int:
    import json

    from widedeep.benchmarks.serve import ServeBenchConfig, run_bench, summary

    cfg = ServeBenchConfig(
        bundle=args.bundle,
        seconds=args.seconds,
        clients=tuple(int(c) for c in args.clients.split(",")),
        items=args.items,
        candidates=args.candidates,
        k=args.k,
        rank_items=args.rank_items,
        port=args.port,
        with_chain=args.with_chain,
    )
    out = run_bench(cfg)
    print(summary(out))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=2)
    return 0
