"""``widedeep bench shard`` at a tiny shape: the JSON keys the acceptance check reads, and the byte
counts of both exchanges equal what the batches imply (distinct ids per worker and owner)."""

from __future__ import annotations

import json

import pytest
import torch

from widedeep.cli import main
from widedeep.kernels.shard_bench import ShardBenchConfig, _batch, run_shard_benchmark
from widedeep.kernels.sharding import ShardingConfig, plan_tables

pytestmark = pytest.mark.shard

TINY = ShardBenchConfig(scale=4000, batch=8, ids_per_bag=5, steps=2, warmup=1, budget_mb=0.1)


def _distinct(cfg: ShardBenchConfig, step: int, rank: int, world: int) -> list[torch.Tensor]:
    ids, _offsets, _ = _batch(cfg, step, rank, world)
    per_table = cfg.batch * cfg.ids_per_bag
    return [torch.unique(ids[t * per_table : (t + 1) * per_table]) for t in range(len(cfg.tables()))]


@pytest.mark.timeout(300)
def test_byte_counts_match_the_batches_distinct_ids():
    world = 2
    r = run_shard_benchmark(TINY, (world,))
    sec = r["worlds"]["2"]
    tables, opt = TINY.tables(), TINY.optimizer()
    plan = plan_tables([(t, opt) for t in tables], world, ShardingConfig(mode="row_wise"))
    rep_ids = rw_ids = 0.0
    for step in range(TINY.warmup, TINY.warmup + TINY.steps):
        for rank in range(world):
            for tc, u in zip(tables, _distinct(TINY, step, rank, world), strict=True):
                rep_ids += u.numel() * 8 * (world - 1)  # all-gather: every distinct id to every other worker
                tp = plan.table(tc.name)
                if tp.sharded:  # all-to-all: each distinct id once, to its owner when that is another worker
                    mine = tp.row_range(tc.num_rows, rank, world)
                    rw_ids += int(((u < mine.start) | (u >= mine.stop)).sum()) * 8
                else:
                    rw_ids += u.numel() * 8 * (world - 1)
    kinds = sec["bytes_exchanged_per_step_by_kind"]
    n = TINY.steps * world
    assert kinds["replicated"]["ids"] == pytest.approx(rep_ids / n)
    assert kinds["row_wise"]["ids"] == pytest.approx(rw_ids / n)
    # the all-to-all answers every id with an embedding and sends a gradient back: D floats each
    assert (
        kinds["row_wise"]["embeddings"]
        == kinds["row_wise"]["gradients"]
        == pytest.approx((rw_ids / n) / 8 * 4 * TINY.dim, rel=0.05)
    )  # (a replicated table with < 2 rows would add to gradients)
    assert sec["table_bytes_per_worker"]["row_wise"] < 0.55 * sec["table_bytes_per_worker"]["replicated"]
    assert r["memory_ratio_2"] == sec["memory_ratio"] and r["traffic_ratio_2"] == sec["traffic_ratio"]


@pytest.mark.timeout(300)
def test_cli_writes_the_acceptance_keys(tmp_path):
    out = tmp_path / "shard.json"
    assert (
        main(
            [
                "bench",
                "shard",
                "--worlds",
                "2",
                "--steps",
                "2",
                "--batch",
                "8",
                "--scale",
                "4000",
                "--ids-per-bag",
                "5",
                "--budget-mb",
                "0.1",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    r = json.loads(out.read_text())
    for key in ("memory_ratio_2", "traffic_ratio_2", "traffic_ratio_unpadded_2", "step_time_ratio_2"):
        assert r[key] > 0, key
    assert r["largest_table"]["exceeds_budget"] is True
    assert main(["bench", "shard", "--worlds", "1"]) == 2  # a clear error, not a hang
