"""Row-wise sharded tables over 2 and 4 gloo processes equal one unsharded table trained on the
union of the batches (outputs, weights, optimizer state) for SGD, row-wise Adagrad and FTRL,
with empty bags, weighted bags and hot ids; the checkpoint pieces they write load into any
other placement (one process, three workers, replicated or hashed)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.kernels.batches import random_batch
from widedeep.kernels import OptimizerConfig, TableBatchedEmbeddingBag, TableConfig
from widedeep.kernels.sharded import ShardedTableBatchedEmbeddingBag, table_storage, table_tensors
from widedeep.kernels.sharding import ShardingPlan, TablePlan
from widedeep.kernels.table_store import load_tables, piece_sources, tables_meta, write_rank_tables
from widedeep.ports import free_port

pytestmark = pytest.mark.shard

# deep-like: two dims (two runs), a replicated table between sharded ones, a mean-pooled table
# with few rows and long bags (every id repeated many times in a step)
DEEP = [
    TableConfig("a", 41, 6),
    TableConfig("b", 9, 6, pooling="mean"),
    TableConfig("c", 33, 4),
    TableConfig("hot", 8, 6, pooling="mean"),
]
DEEP_PLAN = [
    ("a", "row_wise", "contiguous"),
    ("b", "replicated", "contiguous"),
    ("c", "row_wise", "hashed"),
    ("hot", "row_wise", "contiguous"),
]
# wide-like: dim-1 tables, all row-wise
WIDE = [TableConfig("w1", 50, 1, init="zeros"), TableConfig("w2", 17, 1, init="zeros"), TableConfig("wx", 64, 1)]
WIDE_PLAN = [("w1", "row_wise", "contiguous"), ("w2", "row_wise", "hashed"), ("wx", "row_wise", "contiguous")]
SETS = {"deep": (DEEP, DEEP_PLAN), "wide": (WIDE, WIDE_PLAN)}
OPTS = {
    "sgd": OptimizerConfig("sgd", lr=0.3),
    "rowwise_adagrad": OptimizerConfig("rowwise_adagrad", lr=0.2, initial_accumulator=0.1),
    "ftrl": OptimizerConfig("ftrl", lr=0.5, l1=0.01, l2=0.1),
}
B, STEPS, SEED = 4, 4, 11


def _plan(spec, world: int) -> ShardingPlan:
    return ShardingPlan(world, tuple(TablePlan(n, p, r) for n, p, r in spec))


def _batch(tables, step: int, rank: int, device: str = "cpu"):
    # lengths differ by rank (different exchange sizes); every other step unweighted
    return random_batch(tables, B, seed=1000 * step + rank, max_len=4 + rank, weighted=step % 2 == 0, device=device)


def _target(step: int, rank: int, width: int) -> torch.Tensor:
    return torch.randn((B, width), generator=torch.Generator().manual_seed(77 + 10 * step + rank))


def _union(parts, T: int):
    """Per-rank jagged batches (B bags per table each) -> one batch of W*B bags per table."""
    idx, lens, w = [], [], []
    weighted = parts[0][2] is not None
    for t in range(T):
        for indices, offsets, psw in parts:
            lo, hi = int(offsets[t * B]), int(offsets[(t + 1) * B])
            idx.append(indices[lo:hi])
            if weighted:
                w.append(psw[lo:hi])
            lens.append(offsets[t * B + 1 : (t + 1) * B + 1] - offsets[t * B : (t + 1) * B])
    lengths = torch.cat(lens)
    offsets = torch.zeros(lengths.numel() + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(lengths, 0)
    return torch.cat(idx), offsets, torch.cat(w) if weighted else None


def _eval_batch(tables, rank: int, world: int, device: str = "cpu"):
    """Evaluation batches of different sizes; the last rank has none (B=0), yet must take part."""
    n = 0 if rank == world - 1 else 3 + rank
    return random_batch(tables, n, seed=555 + rank, max_len=5, device=device)


def _worker(rank: int, world: int, port: int, out_dir: str, backend: str = "gloo", device: str = "cpu") -> None:
    """One process: every table set and optimizer, sharded per the plan, on ``device`` ("cuda":
    GPU ``rank`` mod the visible count; the kernel's CUDA backend), over ``backend``."""
    torch.set_num_threads(1)
    dev = torch.device("cuda", rank % torch.cuda.device_count()) if device == "cuda" else torch.device("cpu")
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        for set_name, (tables, spec) in SETS.items():
            for opt_name, opt in OPTS.items():
                plain = TableBatchedEmbeddingBag(tables, opt, seed=SEED, device=dev)
                m = ShardedTableBatchedEmbeddingBag(plain, _plan(spec, world), rank)
                del plain
                m.set_process_group(dist.group.WORLD)
                outs = []
                for step in range(STEPS):
                    out = m(*_batch(tables, step, rank, str(dev)))
                    outs.append(out.detach().cpu())
                    ((out * _target(step, rank, out.shape[1]).to(dev)).sum() / B).backward()
                m.eval()
                with torch.no_grad():
                    ev = m(*_eval_batch(tables, rank, world, str(dev))).cpu()
                d = Path(out_dir) / f"{set_name}-{opt_name}"
                write_rank_tables(d, m, rank)
                if rank == 0:
                    (d / "meta.json").write_text(json.dumps({"tables": tables_meta(m)}))
                torch.save({"outs": outs, "eval": ev}, d / f"outs{rank}.pt")
    finally:
        dist.destroy_process_group()


def _load(d: Path, module) -> None:
    meta = json.loads((d / "meta.json").read_text())
    load_tables(module, piece_sources(d, meta, module), str(d))


def _assert_tables_equal(got, want: TableBatchedEmbeddingBag, what: str, atol: float, rtol: float) -> None:
    """Every row ``got`` holds (plain or sharded) equals the same row of ``want``."""
    for t, tc in enumerate(want.layout.tables):
        inner, i, rows = table_storage(got, t)
        ref = table_tensors(want, t)
        for kind, v in table_tensors(inner, i).items():
            torch.testing.assert_close(
                v,
                ref[kind][rows.start : rows.stop : rows.step],
                atol=atol,
                rtol=rtol,
                msg=lambda m, kind=kind, tc=tc: f"{what} table {tc.name} {kind}: {m}",
            )


@pytest.mark.timeout(300)
@pytest.mark.parametrize("world", [2, 4])
def test_row_wise_equals_unsharded_union_training(world, tmp_path):
    check_row_wise_training(world, tmp_path)


def check_row_wise_training(
    world: int, tmp_path: Path, backend: str = "gloo", device: str = "cpu", atol: float = 1e-6, rtol: float = 1e-5
) -> None:
    """Train sharded over ``world`` processes, then compare with the plain module (CPU) trained on
    the union of the batches, and read the written pieces into other placements."""
    mp.spawn(_worker, args=(world, free_port(), str(tmp_path), backend, device), nprocs=world, join=True)
    for set_name, (tables, _spec) in SETS.items():
        for opt_name, opt in OPTS.items():
            what = f"{set_name}/{opt_name}/W={world}"
            d = tmp_path / f"{set_name}-{opt_name}"
            ranks = [torch.load(d / f"outs{r}.pt", weights_only=True) for r in range(world)]
            ref = TableBatchedEmbeddingBag(tables, opt, seed=SEED)
            initial = ref.weight.detach().clone()
            for step in range(STEPS):
                out = ref(*_union([_batch(tables, step, r) for r in range(world)], len(tables)))
                for r in range(world):
                    torch.testing.assert_close(
                        ranks[r]["outs"][step],
                        out[r * B : (r + 1) * B],
                        atol=atol,
                        rtol=rtol,
                        msg=lambda m, step=step, what=what: f"{what} step {step} output: {m}",
                    )
                target = torch.cat([_target(step, r, out.shape[1]) for r in range(world)])
                ((out * target).sum() / (world * B)).backward()
            assert not torch.equal(ref.weight, initial), what
            ref.eval()
            with torch.no_grad():
                for r in range(world):
                    torch.testing.assert_close(
                        ranks[r]["eval"], ref(*_eval_batch(tables, r, world)), atol=atol, rtol=rtol
                    )

            # the pieces written by `world` workers, read into one process ...
            one = TableBatchedEmbeddingBag(tables, opt, seed=999)
            _load(d, one)
            _assert_tables_equal(one, ref, f"{what} -> 1 process", atol, rtol)
            # ... and into 3 workers, row-wise everywhere with the other row scheme
            for scheme in ("contiguous", "hashed"):
                plan3 = ShardingPlan(3, tuple(TablePlan(tc.name, "row_wise", scheme) for tc in tables))
                for r in range(3):
                    m3 = ShardedTableBatchedEmbeddingBag(TableBatchedEmbeddingBag(tables, opt, seed=999), plan3, r)
                    _load(d, m3)
                    _assert_tables_equal(m3, ref, f"{what} -> 3 workers {scheme} rank {r}", atol, rtol)
