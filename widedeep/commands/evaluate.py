"""``widedeep evaluate``: score a prepared split with a checkpoint (or run the top-K evaluation).

A split a checkpoint was fitted on (``refit.fit_splits``: train, and valid for a refit) is refused."""

from __future__ import annotations

import argparse

HELP = "evaluate a checkpoint on a prepared split (AUC, log loss, accuracy, calibration) or top-K"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--checkpoint", help="checkpoint directory (ranking task)")
    parser.add_argument("--data", required=True, help="prepared split directory, e.g. DIR/test")
    parser.add_argument("--metrics-out", help="write the metrics JSON here")
    parser.add_argument(
        "--task",
        choices=["ranking", "topk"],
        default="ranking",
        help="ranking: classification metrics of --checkpoint; topk: retrieval + ranking top-K",
    )
    parser.add_argument(
        "--retriever",
        action="append",
        help="retriever checkpoint (--task topk); repeat with --ranker for the same jobs trained with other "
        "seeds: the report adds each figure's mean and std over the pairs. A refit pair (refit.enabled) is "
        "evaluated with what it was fitted on, its settings chosen on valid by its refit.selected_by checkpoints",
    )
    parser.add_argument(
        "--ranker",
        action="append",
        help="ranker checkpoint (--task topk; optional: re-ranks the retrieved candidates); one per --retriever",
    )
    parser.add_argument("--batch-size", type=int, default=8192, help="scoring batch size")


def run(args: argparse.Namespace) -> int:
    from widedeep.errors import ConfigError

    if args.task == "topk":
        if not args.retriever:
            raise ConfigError("--task topk needs --retriever RET (and optionally --ranker RANK to re-rank)")
        from widedeep.evaluation.topk import run_topk

        return int(run_topk(args.retriever, args.ranker, args.data, args.metrics_out))
    if not args.checkpoint:
        raise ConfigError("--checkpoint is required for --task ranking")
    import json

    from widedeep.paths import write_json
    from widedeep.train.evaluate import evaluate_split

    metrics = evaluate_split(args.checkpoint, args.data, batch_size=args.batch_size)
    text = json.dumps(metrics, indent=1, sort_keys=True, default=float)
    print(text)
    if args.metrics_out:
        write_json(args.metrics_out, metrics)  # a local path or a URI
    return 0
