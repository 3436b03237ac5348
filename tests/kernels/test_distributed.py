"""Exact data parallelism: 2 processes on gloo stay bit-identical, and equal single-process
training on the union of their batches."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.kernels.batches import random_batch
from widedeep.kernels import (
    OptimizerConfig,
    TableBatchedEmbeddingBag,
    TableConfig,
    exchange_coalesced,
)

TABLES = [
    TableConfig("a", 30, 6),
    TableConfig("b", 7, 6, pooling="mean"),
    TableConfig("wide", 50, 1),
]
OPTS = [
    OptimizerConfig("rowwise_adagrad", lr=0.2, initial_accumulator=0.1),
    OptimizerConfig("ftrl", lr=0.5, l1=0.01, l2=0.1),
]
B, STEPS, WORLD = 5, 4, 2


def _batch(step: int, rank: int):
    # Different lengths per rank, so the exchanged (row, grad) lists have different sizes.
    return random_batch(TABLES, B, seed=1000 * step + rank, max_len=3 + rank, weighted=True)


def _target(step: int, rank: int, width: int) -> torch.Tensor:
    return torch.randn((B, width), generator=torch.Generator().manual_seed(77 + 10 * step + rank))


def _union(parts):
    """Concatenate per-rank jagged batches into one batch of WORLD*B bags per table."""
    T = len(TABLES)
    idx, off_lens, w = [], [], []
    for t in range(T):
        for indices, offsets, psw in parts:
            lo, hi = int(offsets[t * B]), int(offsets[(t + 1) * B])
            idx.append(indices[lo:hi])
            w.append(psw[lo:hi])
            off_lens.append(offsets[t * B + 1 : (t + 1) * B + 1] - offsets[t * B : (t + 1) * B])
    lengths = torch.cat(off_lens)
    offsets = torch.zeros(lengths.numel() + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(lengths, 0)
    return torch.cat(idx), offsets, torch.cat(w)


def _worker(rank: int, store_path: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store_path}", rank=rank, world_size=WORLD)
    try:
        for k, opt in enumerate(OPTS):
            tbe = TableBatchedEmbeddingBag(TABLES, opt, seed=11)
            tbe.set_process_group(dist.group.WORLD)
            for step in range(STEPS):
                out = tbe(*_batch(step, rank))
                ((out * _target(step, rank, out.shape[1])).sum() / B).backward()
            torch.save(dict(tbe.state_dict()), Path(out_dir) / f"opt{k}_rank{rank}.pt")
        # exchange_coalesced on its own: rank r sends rows {r, 5} with grads r+1.
        rows = torch.tensor([rank, 5])
        grads = torch.full((2, 3), float(rank + 1))
        u, g = exchange_coalesced(rows, grads)
        torch.save({"rows": u, "grads": g}, Path(out_dir) / f"exchange_rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.timeout(180)
def test_two_gloo_replicas_identical_and_equal_union_training(tmp_path):
    mp.spawn(_worker, args=(str(tmp_path / "store"), str(tmp_path)), nprocs=WORLD, join=True)

    ex = [torch.load(tmp_path / f"exchange_rank{r}.pt", weights_only=True) for r in range(WORLD)]
    assert ex[0]["rows"].tolist() == [0, 1, 5]
    torch.testing.assert_close(ex[0]["grads"], torch.tensor([[0.5] * 3, [1.0] * 3, [1.5] * 3]))
    assert torch.equal(ex[0]["grads"], ex[1]["grads"])

    for k, opt in enumerate(OPTS):
        states = [torch.load(tmp_path / f"opt{k}_rank{r}.pt", weights_only=True) for r in range(WORLD)]
        for name in states[0]:
            assert torch.equal(states[0][name], states[1][name]), f"{opt.kind}: replicas differ in {name}"
        single = TableBatchedEmbeddingBag(TABLES, opt, seed=11)
        initial = single.weight.detach().clone()
        for step in range(STEPS):
            out = single(*_union([_batch(step, r) for r in range(WORLD)]))
            target = torch.cat([_target(step, r, out.shape[1]) for r in range(WORLD)])
            ((out * target).sum() / (WORLD * B)).backward()
        assert not torch.equal(single.weight, initial)
        for name, value in single.state_dict().items():
            torch.testing.assert_close(
                states[0][name],
                value,
                atol=1e-6,
                rtol=1e-5,
                msg=lambda m, kind=opt.kind, name=name: f"{kind} {name}: {m}",
            )
