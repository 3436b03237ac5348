"""``widedeep bench shard``: row-wise sharded tables vs replicated tables over gloo processes."""

from __future__ import annotations

import argparse

HELP = (
    "benchmark row-wise sharded embedding tables (all-to-all) against replicated ones (all-gather): "
    "per-worker table memory, bytes exchanged and step time at 2 and 4 processes"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", metavar="FILE", help="write the full report (memory_ratio_4, traffic_ratio_4, ...) here"
    )
    parser.add_argument("--worlds", default="2,4", help="process counts, comma-separated (default 2,4)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps (default 8)")
    parser.add_argument("--batch", type=int, default=512, help="bags per table per process and step (default 512)")
    parser.add_argument(
        "--device",
        choices=["cpu", "cuda"],
        default="cpu",
        help="where the tables live (cuda: process r on GPU r mod the visible count)",
    )
    parser.add_argument(
        "--backend",
        choices=["gloo", "nccl"],
        default=None,
        help="torch.distributed backend (default: gloo on cpu, nccl on cuda; nccl needs one GPU per process)",
    )
    parser.add_argument(
        "--scale", type=int, default=40, help="Criteo cardinalities above 10k rows are divided by this (default 40)"
    )
    parser.add_argument("--ids-per-bag", type=int, default=20, help="multi-hot bag length (default 20)")
    parser.add_argument("--budget-mb", type=float, default=24.0, help="the stated per-worker table budget (default 24)")


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from widedeep.errors import ConfigError
    from widedeep.kernels.shard_bench import ShardBenchConfig, format_report, run_shard_benchmark

    try:
        worlds = tuple(int(w) for w in args.worlds.split(","))
    except ValueError:
        raise ConfigError(f"--worlds: expected comma-separated integers, got {args.worlds!r}") from None
    if any(w < 2 for w in worlds):
        raise ConfigError(f"--worlds: every process count must be >= 2, got {args.worlds!r}")
    for flag in ("steps", "batch", "scale", "ids_per_bag"):
        if getattr(args, flag) < 1:
            raise ConfigError(f"--{flag.replace('_', '-')}: expected >= 1, got {getattr(args, flag)}")
    if args.budget_mb <= 0:
        raise ConfigError(f"--budget-mb: expected > 0, got {args.budget_mb}")
    backend = args.backend or ("nccl" if args.device == "cuda" else "gloo")
    if args.device == "cuda" or backend == "nccl":
        import torch

        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ConfigError("--device cuda / --backend nccl: no CUDA device is visible here")
        if backend == "nccl" and max(worlds) > n:
            raise ConfigError(
                f"--backend nccl: NCCL needs one GPU per process; {n} visible, --worlds asks for "
                f"{max(worlds)} (use --backend gloo to share GPUs)"
            )
        if args.device == "cpu":
            raise ConfigError("--backend nccl needs --device cuda")
    cfg = ShardBenchConfig(
        steps=args.steps,
        batch=args.batch,
        budget_mb=args.budget_mb,
        scale=args.scale,
        ids_per_bag=args.ids_per_bag,
        device=args.device,
        backend=backend,
    )
    report = run_shard_benchmark(cfg, worlds)
    print(format_report(report), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0
