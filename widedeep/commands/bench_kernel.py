"""``widedeep bench kernel``: the fused embedding kernel vs per-table torch baselines."""

from __future__ import annotations

import argparse

HELP = (
    "benchmark the fused table-batched embedding bag against per-table nn.EmbeddingBag + SparseAdam/Adagrad "
    "and FBGEMM's table-batched embedding bag (when fbgemm_gpu is installed)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where to run (default cpu)")
    parser.add_argument("--config", choices=["criteo", "multihot"], default="criteo", help="benchmark shape")
    parser.add_argument("--json", metavar="FILE", help="write the full report (incl. 'speedup') here")
    parser.add_argument(
        "--steps", type=int, default=0, help="steps per timed window (default 0: about 0.5 s of our kernel, 3..30)"
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed windows; the median is reported (default 5)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed warm-up steps (default 2)")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch CPU threads, the same for every contender (default 1: on a shared machine a second "
        "OpenMP thread turns each op into a barrier wait on a descheduled thread)",
    )
    parser.add_argument(
        "--dist", choices=["zipf", "uniform", "both"], default="both", help="id distribution (default both)"
    )
    parser.add_argument(
        "--fbgemm",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time FBGEMM's table-batched embedding bag with the same optimizer, when fbgemm_gpu is "
        "installed (pip install 'widedeep[bench]'; CPU; default on)",
    )


def run(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import torch

    from widedeep.errors import ConfigError
    from widedeep.kernels.bench import bench_config, format_report, run_benchmark

    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is available here")
    if args.steps < 0:
        raise ConfigError(f"--steps: expected >= 0 (0 = automatic), got {args.steps}")
    if args.repeats < 1:
        raise ConfigError(f"--repeats: expected >= 1, got {args.repeats}")
    if args.threads < 1:
        raise ConfigError(f"--threads: expected >= 1, got {args.threads}")
    threads = args.threads
    torch.set_num_threads(threads)
    dists = ("zipf", "uniform") if args.dist == "both" else (args.dist,)
    report = run_benchmark(
        bench_config(args.config, args.device),
        args.device,
        steps=args.steps,
        repeats=args.repeats,
        warmup=args.warmup,
        dists=dists,
        fbgemm=args.fbgemm,
    )
    print(format_report(report), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2))
    return 0
