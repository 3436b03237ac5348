"""``python -m tests.cluster.train_driver SECONDS --config FILE --set k=v ... --metrics-out FILE``:
``widedeep train`` with the ``SlowFreshSteps(SECONDS)`` hook (``widedeep.train.hooks``).

Why a driver of its own: hooks reach the workers only through ``run_training(hooks=...)``, and the
node-kill test needs a run slow enough to be killed mid-way from outside. It runs as a separate
process with the cluster's environment (``RAY_ADDRESS`` ...), like ``widedeep train``."""

from __future__ import annotations

import argparse
import sys

from widedeep.train.config import load_train_config
from widedeep.train.driver import run_training
from widedeep.train.hooks import SlowFreshSteps


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser()
    p.add_argument("seconds", type=float, help="sleep after each step of an attempt that did not resume")
    p.add_argument("--config", required=True)
    p.add_argument("--set", action="append", default=[], dest="overrides")
    p.add_argument("--metrics-out", required=True)
    args = p.parse_args(argv)
    cfg = load_train_config(args.config, args.overrides)
    run_training(cfg, metrics_out=args.metrics_out, hooks=SlowFreshSteps(args.seconds))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
