"""``widedeep bench train``: every training contender in one run (see ``widedeep.train.bench``)."""

from __future__ import annotations

import argparse

HELP = (
    "benchmark training: widedeep train vs a plain PyTorch W&D on Adult; the W&D step vs sparse and "
    "dense-Adam baselines and the pipeline on Criteo-shaped data"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", metavar="FILE", help="write the report here")
    parser.add_argument("--rows", type=int, default=2_000_000, help="generated Criteo-shaped train rows")
    parser.add_argument("--batch-size", type=int, default=4096, help="Criteo-shaped batch size (Adult: the recipe's)")
    parser.add_argument("--hidden", default="256,128", help="Criteo-shaped MLP layer sizes, comma-separated")
    parser.add_argument("--steps", type=int, default=10, help="steps per timed window")
    parser.add_argument("--repeats", type=int, default=5, help="timed windows per contender (median reported)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--pipeline-epochs", type=int, default=3, help="epochs of the Criteo-shaped widedeep train")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads in every contender (default 1: on a shared 2-core machine extra threads spin-wait)",
    )
    parser.add_argument(
        "--buckets",
        type=int,
        default=0,
        help="hash each categorical into this many rows (default 0: fitted vocabularies, min_count 4)",
    )
    parser.add_argument(
        "--adult-input", help="raw Adult Parquet (default: shared/data/adult.parquet, else tests/assets)"
    )
    parser.add_argument("--workdir", help="keep / reuse the generated and prepared data here")
    parser.add_argument("--no-pipeline", action="store_true", help="skip the Criteo-shaped widedeep train run")
    parser.add_argument(
        "--device", default="cpu", help="device of the Criteo-shaped step contenders (cuda: tests/gpu/run.sh)"
    )
    parser.add_argument(
        "--embedding-dtype",
        default="fp32",
        choices=["fp32", "bf16", "fp16"],
        help="our tables' weight dtype in the step contender (bf16/fp16 need CUDA: the Triton kernel)",
    )
    parser.add_argument("--no-adult", action="store_true", help="skip the Adult contenders")


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
    for name in ("rows", "batch_size", "steps", "repeats", "threads", "pipeline_epochs"):
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
        adult=not args.no_adult,
        threads=args.threads,
        pipeline_epochs=args.pipeline_epochs,
        buckets=args.buckets,
        adult_input=args.adult_input,
        device=args.device,
        embedding_dtype=args.embedding_dtype,
    )
    c = report["criteo"]
    print(
        f"criteo step contenders on {c['device']}, our embedding weights {c['embedding_dtype']}, "
        f"batch {args.batch_size}"
    )
    lines = [
        f"criteo (a) WideAndDeep step      {c['model_step_samples_per_s']:>12,.0f} samples/s",
        f"criteo (b) fair sparse baseline  {c['fair_baseline_samples_per_s']:>12,.0f} samples/s   "
        f"(a)/(b) = {c['step_vs_fair_baseline']:.2f}x",
        f"criteo (c) dense Adam (DeepCTR)  {c['dense_adam_samples_per_s']:>12,.0f} samples/s   "
        f"(a)/(c) = {c['step_vs_dense_adam']:.2f}x",
    ]
    side = c.get("embedding_side_speedup_vs_fair")
    lines.append(
        f"criteo     MLP alone (shared)    {c['mlp_only_samples_per_s']:>12,.0f} samples/s   "
        f"embedding side alone: (a) vs (b) = {f'{side:.2f}x' if side else 'n/a'}"
    )
    if "pipeline_samples_per_s" in c:
        lines.append(
            f"criteo (d) widedeep train        {c['pipeline_samples_per_s']:>12,.0f} samples/s   "
            f"(d)/(a) = {c['pipeline_vs_model_step']:.0%}"
        )
    if "adult" in report:
        a = report["adult"]
        lines.append(
            f"adult widedeep train {a['widedeep_wall_s']:.1f}s (Ray start {a['ray_start_s']:.1f}s) "
            f"{a['widedeep_steady_samples_per_s']:,.0f} samples/s steady, "
            f"AUC {a['widedeep_best_valid_auc'] or 0:.4f}; plain {a['plain_wall_s']:.1f}s "
            f"{a['plain_samples_per_s']:,.0f} samples/s, AUC {a['plain_best_valid_auc']:.4f}"
        )
    print("\n".join(lines))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=float))
    return 0
