"""``widedeep quickstart``: the whole platform once on a local Ray (see widedeep/quickstart.py)."""

from __future__ import annotations

import argparse

HELP = "generate -> prepare -> train ranker + retriever -> evaluate -> export -> serve -> sample requests"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--workdir", default="widedeep-quickstart", help="where every artifact is written")
    p.add_argument("--rows", type=int, default=40_000, help="synthetic impressions to generate")
    p.add_argument("--users", type=int, default=2_000)
    p.add_argument("--items", type=int, default=300)
    p.add_argument("--epochs", type=int, default=3, help="training epochs for the ranker and the retriever")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--port", type=int, default=8000, help="Serve HTTP port (127.0.0.1)")
    p.add_argument("--keep-serving", action="store_true", help="keep the endpoint up until Ctrl-C")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from widedeep.errors import ConfigError
    from widedeep.quickstart import QuickstartConfig, run_quickstart

    for k in ("rows", "users", "items", "epochs"):
        if getattr(args, k) <= 0:
            raise ConfigError(f"--{k}: must be > 0")
    run_quickstart(
        QuickstartConfig(
            workdir=Path(args.workdir),
            rows=args.rows,
            users=args.users,
            items=args.items,
            seed=args.seed,
            epochs=args.epochs,
            port=args.port,
            keep_serving=args.keep_serving,
        )
    )
    return 0
