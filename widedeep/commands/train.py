"""``widedeep train``: run a training job (Ray Train TorchTrainer) from a job config."""

from __future__ import annotations

import argparse

HELP = "train a model from a job config (platform/jobs/*.yaml) on Ray Train"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", required=True, help="job config YAML (platform/jobs/adult.yaml)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config key, e.g. --set seed=1 --set model.hidden=[64,32] (repeatable)",
    )
    parser.add_argument("--metrics-out", help="write the run's metrics JSON here (best checkpoint path included)")
    parser.add_argument("--warm-start-from", help="initialise tables and weights from this checkpoint")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")


def _process_start() -> float:
    """When this process started (``time.time()`` scale), so the metrics JSON's
    ``timings.ray_start_s`` counts the interpreter and the imports too."""
    import psutil

    return float(psutil.Process().create_time())


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import json

    import yaml

    from widedeep.train.config import load_train_config

    cfg = load_train_config(args.config, args.overrides)
    if args.warm_start_from:
        cfg = dataclasses.replace(cfg, warm_start_from=args.warm_start_from)
    if args.print_config:
        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
        return 0
    from widedeep.train.driver import run_training

    summary = run_training(cfg, metrics_out=args.metrics_out, started_at=_process_start())
    keys = ("auc", "logloss", "accuracy", "calibration", "rmse", "train_samples_per_s", "best_epoch", "checkpoint")
    print(json.dumps({k: summary[k] for k in keys if k in summary}, default=float))
    return 0
