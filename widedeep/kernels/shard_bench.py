"""Benchmark of row-wise sharded tables against today's replicated tables, over gloo processes.

Config: Criteo-shaped (the 26 categorical columns of the Kaggle/Terabyte display-ads logs, with
DLRM's per-column cardinalities, the large ones divided by ``scale`` so that a CPU machine holds
them), multi-hot bags of ``ids_per_bag`` ids drawn Zipf(1.1) per table (``bench.make_batch``:
hot ids scattered by a fixed permutation, as hashing does), row-wise Adagrad. The largest
table alone is larger than the stated per-worker budget ``budget_mb``.

For each world size, every process builds both contenders from the same initial weights and
trains them on the same batches, interleaved step by step (the same load hits both):

* ``replicated``: ``TableBatchedEmbeddingBag`` with its exact exchange (every worker coalesces its
  rows, all-gathers ``(row, gradient)`` pairs padded to the largest worker, applies the union);
* ``row_wise``: ``ShardedTableBatchedEmbeddingBag``, the plan ``sharding.plan_tables`` makes once
  the tables exceed the budget (``row_wise`` mode: every table with at least one row per worker
  split into contiguous row blocks, tables with fewer rows than workers replicated); ids,
  embeddings and gradients travel by all-to-all.

Reported per world size: table bytes per worker (weights + optimizer state, measured on the
tensors; the largest worker for row_wise), bytes exchanged per step per worker (counted at the
collective calls, ``traffic.Traffic``: what leaves a worker for the others, by kind), and step
time (forward + backward + fused update; per worker the median over timed steps, then the
slowest worker, since every step waits for it). Ratios are row_wise / replicated measured in
the same run.
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from widedeep.kernels.bench import BenchConfig, make_batch
from widedeep.kernels.config import OptimizerConfig, TableConfig
from widedeep.kernels.sharding import ShardingConfig, plan_tables, table_bytes
from widedeep.ports import free_port

# Kaggle Criteo (display-ads challenge) categorical cardinalities C1..C26, as DLRM preprocesses them.
CRITEO_CARDINALITIES = (
    1460,
    583,
    10131227,
    2202608,
    305,
    24,
    12517,
    633,
    3,
    93145,
    5683,
    8351593,
    3194,
    27,
    14992,
    5461306,
    10,
    5652,
    2173,
    4,
    7046547,
    18,
    15,
    286181,
    105,
    142572,
)
_MIB = 1024 * 1024


@dataclass(frozen=True)
class ShardBenchConfig:
    """Shape of the benchmark (defaults: the CPU figures of ``widedeep bench shard``)."""

    scale: int = 40  # cardinalities above 10k rows are divided by this
    dim: int = 16
    ids_per_bag: int = 20
    batch: int = 512  # bags per table per worker and step
    budget_mb: float = 24.0  # the stated per-worker budget for table bytes
    min_rows: int = 1  # the planner's default: every table with at least one row per worker is row-wise
    lr: float = 0.05
    warmup: int = 2
    steps: int = 8
    threads: int = 1
    device: str = "cpu"  # "cuda": process r on GPU r mod the visible count
    backend: str = "gloo"  # "nccl" on CUDA needs one GPU per process; gloo stages CUDA tensors through the host

    def tables(self) -> list[TableConfig]:
        return [
            TableConfig(f"C{i + 1}", n if n <= 10_000 else n // self.scale, self.dim)
            for i, n in enumerate(CRITEO_CARDINALITIES)
        ]

    def optimizer(self) -> OptimizerConfig:
        return OptimizerConfig("rowwise_adagrad", lr=self.lr)


def _device(cfg: ShardBenchConfig, rank: int) -> torch.device:
    if cfg.device == "cuda":
        return torch.device("cuda", rank % torch.cuda.device_count())
    return torch.device("cpu")


def _batch(cfg: ShardBenchConfig, step: int, rank: int, world: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(indices, offsets, target) of worker ``rank`` at ``step``: table-major, fixed bag length."""
    ids = []
    for t, tc in enumerate(cfg.tables()):
        bc = BenchConfig("criteo-multihot", 1, tc.num_rows, tc.dim, cfg.ids_per_bag, cfg.batch)
        i, _ = make_batch(bc, "zipf", seed=((step * world + rank) * 131 + t), device=torch.device("cpu"))
        ids.append(i)
    T = len(ids)
    offsets = torch.arange(0, T * cfg.batch * cfg.ids_per_bag + 1, cfg.ids_per_bag, dtype=torch.int64)
    target = torch.randn((cfg.batch, T * cfg.dim), generator=torch.Generator().manual_seed(7 + step * world + rank))
    return torch.cat(ids), offsets, target


def _worker(rank: int, world: int, port: int, cfg: ShardBenchConfig, out_dir: str) -> None:
    import torch.distributed as dist

    from widedeep.kernels.module import TableBatchedEmbeddingBag
    from widedeep.kernels.sharded import ShardedTableBatchedEmbeddingBag
    from widedeep.kernels.traffic import Traffic

    torch.set_num_threads(cfg.threads)
    dev = _device(cfg, rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(cfg.backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        tables, opt = cfg.tables(), cfg.optimizer()
        plan = plan_tables([(t, opt) for t in tables], world, ShardingConfig(mode="row_wise", min_rows=cfg.min_rows))
        contenders: dict[str, Any] = {
            "replicated": TableBatchedEmbeddingBag(tables, opt, seed=0, device=dev),
            "row_wise": ShardedTableBatchedEmbeddingBag(
                TableBatchedEmbeddingBag(tables, opt, seed=0, device=dev), plan, rank
            ),
        }
        traffic = {name: Traffic() for name in contenders}
        for name, m in contenders.items():
            m.set_process_group(dist.group.WORLD, traffic[name])
        times: dict[str, list[float]] = {name: [] for name in contenders}
        batches = [tuple(x.to(dev) for x in _batch(cfg, s, rank, world)) for s in range(cfg.warmup + cfg.steps)]
        for s, (ids, offsets, target) in enumerate(batches):
            if s == cfg.warmup:
                for t in traffic.values():
                    t.reset()
            for name, m in contenders.items():
                dist.barrier()
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                t0 = time.perf_counter()
                out = m(ids, offsets)
                ((out * target).sum() / cfg.batch).backward()
                if dev.type == "cuda":
                    torch.cuda.synchronize(dev)
                if s >= cfg.warmup:
                    times[name].append(time.perf_counter() - t0)
        rep = contenders["replicated"]
        result = {
            "rank": rank,
            "table_bytes": {
                "replicated": sum(t.numel() * t.element_size() for t in [rep.weight, *rep.optimizer_state().values()]),
                "row_wise": contenders["row_wise"].table_bytes_held(),
            },
            "bytes_sent_per_step": {k: t.sent / cfg.steps for k, t in traffic.items()},
            "bytes_received_per_step": {k: t.received / cfg.steps for k, t in traffic.items()},
            "sent_per_step_by_kind": {
                k: {kk: v / cfg.steps for kk, v in t.sent_by_kind.items()} for k, t in traffic.items()
            },
            "collectives_per_step": {k: t.collectives / cfg.steps for k, t in traffic.items()},
            "step_seconds_median": {k: statistics.median(v) for k, v in times.items()},
            "row_wise_tables": plan.sharded_names(),
        }
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def run_world(cfg: ShardBenchConfig, world: int) -> dict[str, Any]:
    """Both contenders over ``world`` gloo processes; the per-world section of the report."""
    import torch.multiprocessing as mp

    with tempfile.TemporaryDirectory(prefix="widedeep-shard-bench-") as d:
        mp.spawn(_worker, args=(world, free_port(), cfg, d), nprocs=world, join=True)
        ranks = [json.loads((Path(d) / f"rank{r}.json").read_text()) for r in range(world)]

    def mean(key: str, name: str) -> float:
        return sum(r[key][name] for r in ranks) / world

    mem = {n: max(r["table_bytes"][n] for r in ranks) for n in ("replicated", "row_wise")}
    sent = {n: mean("bytes_sent_per_step", n) for n in ("replicated", "row_wise")}
    step = {n: max(r["step_seconds_median"][n] for r in ranks) for n in ("replicated", "row_wise")}
    kinds = {
        n: {
            k: sum(r["sent_per_step_by_kind"][n].get(k, 0.0) for r in ranks) / world
            for k in sorted({k for r in ranks for k in r["sent_per_step_by_kind"][n]})
        }
        for n in ("replicated", "row_wise")
    }
    return {
        "world": world,
        "table_bytes_per_worker": mem,
        "table_bytes_per_worker_by_rank": [r["table_bytes"]["row_wise"] for r in ranks],
        "bytes_exchanged_per_step_per_worker": sent,
        "bytes_exchanged_per_step_by_kind": kinds,
        "collectives_per_step": ranks[0]["collectives_per_step"],
        "step_seconds": step,
        "memory_ratio": mem["row_wise"] / mem["replicated"],
        "traffic_ratio": sent["row_wise"] / sent["replicated"],
        # against an all-gather that moved no padding (variable-size all-gather): the stricter baseline
        "traffic_ratio_unpadded": sent["row_wise"] / (sent["replicated"] - kinds["replicated"].get("padding", 0.0)),
        "step_time_ratio": step["row_wise"] / step["replicated"],
        "fits_budget": mem["row_wise"] <= cfg.budget_mb * _MIB,
        "row_wise_tables": ranks[0]["row_wise_tables"],
    }


def run_shard_benchmark(cfg: ShardBenchConfig, worlds: tuple[int, ...] = (2, 4)) -> dict[str, Any]:
    """The full report: config, then one section per world size and the flat ratio keys."""
    tables, opt = cfg.tables(), cfg.optimizer()
    sizes = {t.name: table_bytes(t, opt) for t in tables}
    largest = max(sizes, key=lambda k: sizes[k])
    report: dict[str, Any] = {
        "config": {
            **asdict(cfg),
            "tables": len(tables),
            "rows": sum(t.num_rows for t in tables),
            "ids_per_step_per_worker": len(tables) * cfg.batch * cfg.ids_per_bag,
            "optimizer": opt.kind,
            "backend": f"{cfg.backend} ({cfg.device})",
            "id_distribution": "zipf(1.1), scattered",
        },
        "budget_bytes": int(cfg.budget_mb * _MIB),
        "largest_table": {
            "name": largest,
            "bytes": sizes[largest],
            "exceeds_budget": sizes[largest] > cfg.budget_mb * _MIB,
        },
        "replicated_table_bytes": sum(sizes.values()),
        "worlds": {},
    }
    for w in worlds:
        sec = run_world(cfg, w)
        report["worlds"][str(w)] = sec
        report[f"memory_ratio_{w}"] = sec["memory_ratio"]
        report[f"traffic_ratio_{w}"] = sec["traffic_ratio"]
        report[f"traffic_ratio_unpadded_{w}"] = sec["traffic_ratio_unpadded"]
        report[f"step_time_ratio_{w}"] = sec["step_time_ratio"]
    return report


def format_report(r: dict[str, Any]) -> str:
    c = r["config"]
    lines = [
        f"shard bench: {c['tables']} Criteo-shaped tables ({c['rows']:,} rows, D={c['dim']}, {c['optimizer']}), "
        f"{c['ids_per_bag']} ids/bag, {c['batch']} bags/table/worker, {c['backend']}",
        f"  replicated tables: {r['replicated_table_bytes'] / _MIB:.1f} MiB; largest {r['largest_table']['name']} "
        f"{r['largest_table']['bytes'] / _MIB:.1f} MiB vs per-worker budget {r['budget_bytes'] / _MIB:.1f} MiB",
    ]
    for w, s in r["worlds"].items():
        m, b, t = s["table_bytes_per_worker"], s["bytes_exchanged_per_step_per_worker"], s["step_seconds"]
        lines.append(
            f"  {w} processes: table MiB/worker replicated {m['replicated'] / _MIB:.1f} | "
            f"row_wise {m['row_wise'] / _MIB:.1f} "
            f"(x{s['memory_ratio']:.2f}, fits budget: {s['fits_budget']}); exchanged MiB/step/worker all-gather "
            f"{b['replicated'] / _MIB:.2f} | all-to-all {b['row_wise'] / _MIB:.2f} (x{s['traffic_ratio']:.2f}; "
            f"x{s['traffic_ratio_unpadded']:.2f} vs an unpadded all-gather); "
            f"step s {t['replicated']:.3f} | {t['row_wise']:.3f} (x{s['step_time_ratio']:.2f})"
        )
    return "\n".join(lines)
