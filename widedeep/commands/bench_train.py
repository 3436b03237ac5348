"""``widedeep bench train``: training throughput vs a plain PyTorch W&D, and the full pipeline."""

from __future__ import annotations

import argparse

HELP = "benchmark the W&D training step vs plain PyTorch (nn.EmbeddingBag + Adam) and the streaming pipeline"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", metavar="FILE", help="write the report here")
    parser.add_argument("--rows", type=int, default=400_000, help="generated Criteo-shaped train rows")
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--hidden", default="256,128", help="MLP layer sizes, comma-separated (default 256,128)")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed window")
    parser.add_argument("--repeats", type=int, default=3, help="timed windows (median reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help=(
            "torch CPU threads in every contender "
            "(default 1: on a shared 2-core machine extra OpenMP threads spin-wait)"
        ),
    )
    parser.add_argument(
        "--buckets",
        type=int,
        default=100_000,
        help="hash each categorical into this many rows (0: fitted vocabularies, min_count 4; small tables)",
    )
    parser.add_argument("--workdir", help="keep / reuse the generated data here")
    parser.add_argument("--no-pipeline", action="store_true", help="skip (c), the Ray Train pipeline run")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from widedeep.errors import ConfigError
    from widedeep.train.bench import run_bench

    try:
        hidden = [int(x) for x in args.hidden.split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"--hidden: expected comma-separated integers, got {args.hidden!r}") from None
    if args.buckets < 0:
        raise ConfigError(f"--buckets: expected >= 0, got {args.buckets}")
    for name in ("rows", "batch_size", "steps", "repeats", "threads"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name.replace('_', '-')}: expected >= 1, got {getattr(args, name)}")
    report = run_bench(
        rows=args.rows,
        batch_size=args.batch_size,
        hidden=hidden,
        steps=args.steps,
        repeats=args.repeats,
        warmup=args.warmup,
        workdir=args.workdir,
        pipeline=not args.no_pipeline,
        threads=args.threads,
        buckets=args.buckets,
    )
    lines = [
        f"(a) WideAndDeep step      {report['model_step_samples_per_s']:>12,.0f} samples/s",
        f"(b) plain PyTorch W&D     {report['plain_torch_samples_per_s']:>12,.0f} samples/s   "
        f"(a)/(b) = {report['speedup_vs_plain']:.2f}x",
    ]
    if "pipeline_samples_per_s" in report:
        lines.append(
            f"(c) widedeep train        {report['pipeline_samples_per_s']:>12,.0f} samples/s   "
            f"(c)/(a) = {report['pipeline_vs_model_step']:.0%}"
        )
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=float))
    return 0
