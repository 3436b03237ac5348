"""Sharding plans (automatic from table bytes and a per-worker budget, overridable, validated
like the rest of the training config), row ownership, and table pieces read into any placement
in one process (no process group needed: construction and checkpoint reads are local)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from widedeep.errors import CheckpointError, ConfigError, KernelInputError
from widedeep.kernels import OptimizerConfig, TableBatchedEmbeddingBag, TableConfig
from widedeep.kernels.sharded import ShardedTableBatchedEmbeddingBag, shard_model, table_storage, table_tensors
from widedeep.kernels.sharding import (
    ShardingConfig,
    ShardingPlan,
    TablePlan,
    plan_tables,
    row_bytes,
    table_bytes,
    worker_bytes,
)
from widedeep.kernels.table_store import (
    load_model_state,
    load_tables,
    packed_sources,
    piece_sources,
    tables_meta,
    write_checkpoint_tables,
    write_rank_tables,
)
from widedeep.train.config import load_train_config

pytestmark = pytest.mark.shard

ADAGRAD = OptimizerConfig("rowwise_adagrad", lr=0.1)
FTRL = OptimizerConfig("ftrl", lr=0.1)
SGD = OptimizerConfig("sgd", lr=0.1)
# bytes per row: big 16*4+4 = 68, mid 68, tiny 68; wide 1*4 + 8 = 12
BIG, MID, TINY = (
    TableConfig("deep/big", 100_000, 16),
    TableConfig("deep/mid", 10_000, 16),
    TableConfig("deep/tiny", 50, 16),
)
WIDE = TableConfig("wide/cross", 200_000, 1, init="zeros")
TABLES = [(BIG, ADAGRAD), (MID, ADAGRAD), (TINY, ADAGRAD), (WIDE, FTRL)]
MIB = 1024 * 1024


def test_row_and_table_bytes_count_weights_and_optimizer_state():
    assert row_bytes(BIG, SGD) == 64
    assert row_bytes(BIG, ADAGRAD) == 68
    assert row_bytes(WIDE, FTRL) == 12
    assert table_bytes(MID, ADAGRAD) == 680_000


def test_auto_replicates_what_fits_and_shards_beyond_the_budget():
    total = sum(table_bytes(t, o) for t, o in TABLES)  # 6.8 + 0.68 + 0.0034 + 2.4 MB
    assert not plan_tables(TABLES, 4, ShardingConfig()).any_sharded  # no budget
    assert not plan_tables(TABLES, 4, ShardingConfig(memory_budget_mb=total / MIB + 1)).any_sharded
    plan = plan_tables(TABLES, 4, ShardingConfig(memory_budget_mb=4))
    assert plan.sharded_names() == ["deep/big", "deep/mid", "deep/tiny", "wide/cross"]
    per_worker = worker_bytes(TABLES, plan)
    assert per_worker <= 4 * MIB and per_worker < 0.3 * total
    plan = plan_tables(TABLES, 4, ShardingConfig(memory_budget_mb=4, min_rows=100))
    assert plan.sharded_names() == ["deep/big", "deep/mid", "wide/cross"]  # tiny (< min_rows) stays replicated
    assert plan_tables(TABLES, 64, ShardingConfig(memory_budget_mb=4)).table("deep/tiny").placement == "replicated"


def test_a_plan_over_the_budget_fails_naming_the_bytes():
    with pytest.raises(ConfigError, match=r"sharding\.memory_budget_mb: the tables need .* MiB per worker with 2"):
        plan_tables(TABLES, 2, ShardingConfig(memory_budget_mb=1))
    with pytest.raises(ConfigError, match="with 1 worker"):  # one worker cannot shard
        plan_tables(TABLES, 1, ShardingConfig(memory_budget_mb=4))
    with pytest.raises(ConfigError, match="memory_budget_mb"):  # a forced replicated plan is checked too
        plan_tables(TABLES, 4, ShardingConfig(mode="replicated", memory_budget_mb=4))


def test_modes_and_overrides():
    plan = plan_tables(TABLES, 2, ShardingConfig(mode="row_wise", min_rows=20_000, rows="hashed"))
    assert plan.sharded_names() == ["deep/big", "wide/cross"]
    assert plan.table("deep/big").rows == "hashed"
    plan = plan_tables(
        TABLES, 2, ShardingConfig(mode="row_wise", tables={"deep/big": "replicated", "deep/tiny": "row_wise"})
    )
    assert plan.sharded_names() == ["deep/mid", "deep/tiny", "wide/cross"]
    with pytest.raises(ConfigError, match=r"sharding\.tables\.deep/nope: unknown table"):
        plan_tables(TABLES, 2, ShardingConfig(tables={"deep/nope": "row_wise"}))
    with pytest.raises(ConfigError, match=r"sharding\.tables\.deep/tiny: row_wise needs at least one row per worker"):
        plan_tables(TABLES, 64, ShardingConfig(tables={"deep/tiny": "row_wise"}))
    assert ShardingPlan.from_dict(plan.to_dict()) == plan


@pytest.mark.parametrize("scheme", ["contiguous", "hashed"])
@pytest.mark.parametrize("n,world", [(10, 3), (7, 7), (100, 4)])
def test_row_ranges_cover_every_row_once(scheme, n, world):
    tp = TablePlan("t", "row_wise", scheme)
    ranges = [tp.row_range(n, k, world) for k in range(world)]
    rows = sorted(r for rr in ranges for r in range(rr.start, rr.stop, rr.step))
    assert rows == list(range(n))
    sizes = [len(tp.row_range(n, k, world)) for k in range(world)]
    assert max(sizes) - min(sizes) <= 1


def test_train_config_sharding_section_is_strict():
    cfg = load_train_config(None, ["data=/x", "sharding.memory_budget_mb=512", "sharding.tables.deep/C1=row_wise"])
    assert cfg.sharding == ShardingConfig(memory_budget_mb=512.0, tables={"deep/C1": "row_wise"})
    with pytest.raises(ConfigError, match=r"sharding\.budget: unknown key"):
        load_train_config(None, ["data=/x", "sharding.budget=1"])
    with pytest.raises(ConfigError, match=r"sharding\.tables\.deep/C1: must be one of \['replicated', 'row_wise'\]"):
        load_train_config(None, ["data=/x", "sharding.tables.deep/C1=column_wise"])
    with pytest.raises(ConfigError, match=r"sharding\.memory_budget_mb: must be > 0"):
        load_train_config(None, ["data=/x", "sharding.memory_budget_mb=-1"])
    with pytest.raises(ConfigError, match=r"sharding\.rows: must be one of"):
        load_train_config(None, ["data=/x", "sharding.rows=random"])


SMALL = [
    TableConfig("a", 23, 4),
    TableConfig("b", 5, 4, pooling="mean"),
    TableConfig("c", 17, 2),
    TableConfig("d", 9, 1),
]


def _trained(opt: OptimizerConfig) -> TableBatchedEmbeddingBag:
    """A plain module with non-trivial weights and state (a few local steps)."""
    from tests.kernels.batches import random_batch

    m = TableBatchedEmbeddingBag(SMALL, opt, seed=3)
    for s in range(3):
        out = m(*random_batch(SMALL, 6, seed=s, max_len=5, weighted=True))
        (out * torch.randn(out.shape, generator=torch.Generator().manual_seed(s))).sum().backward()
    return m


def _plan(world: int, scheme: str) -> ShardingPlan:
    return ShardingPlan(
        world,
        (
            TablePlan("a", "row_wise", scheme),
            TablePlan("b", "replicated"),
            TablePlan("c", "row_wise", scheme),
            TablePlan("d", "row_wise", "hashed"),
        ),
    )


def _assert_rows_equal(got, want: TableBatchedEmbeddingBag) -> None:
    for t, tc in enumerate(want.layout.tables):
        inner, i, rows = table_storage(got, t)
        for kind, v in table_tensors(inner, i).items():
            assert torch.equal(v, table_tensors(want, t)[kind][rows.start : rows.stop : rows.step]), (tc.name, kind)


@pytest.mark.parametrize("opt", [ADAGRAD, FTRL, SGD], ids=lambda o: o.kind)
def test_shards_hold_their_rows_and_a_packed_checkpoint_loads_into_any_placement(opt, tmp_path):
    src = _trained(opt)
    world = 3
    held = 0
    for r in range(world):
        m = ShardedTableBatchedEmbeddingBag(_trained(opt), _plan(world, "contiguous"), r)
        _assert_rows_equal(m, src)
        held += m.table_bytes_held()
    full = sum(t.numel() * 4 for t in [src.weight, *src.optimizer_state().values()])
    # row-wise tables counted once across the workers, the replicated one (b) once per worker
    b_bytes = 5 * (4 * 4 + {"rowwise_adagrad": 4, "ftrl": 32, "sgd": 0}[opt.kind])
    assert held == full + (world - 1) * b_bytes

    # a checkpoint written without sharding (tables packed in model.safetensors), read sharded
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "model.safetensors"))
    for scheme in ("contiguous", "hashed"):
        for r in range(world):
            m = ShardedTableBatchedEmbeddingBag(TableBatchedEmbeddingBag(SMALL, opt, seed=9), _plan(world, scheme), r)
            load_tables(m, packed_sources(tmp_path / "model.safetensors", m), str(tmp_path))
            _assert_rows_equal(m, src)


def test_pieces_from_any_world_load_into_one_process_and_missing_pieces_fail(tmp_path):
    src = _trained(FTRL)
    world = 2
    shards = [ShardedTableBatchedEmbeddingBag(_trained(FTRL), _plan(world, "hashed"), r) for r in range(world)]
    for r, m in enumerate(shards):
        write_rank_tables(tmp_path, m, r)
    meta = {"tables": tables_meta(shards[0])}
    assert meta["tables"]["plan"]["world_size"] == 2
    one = TableBatchedEmbeddingBag(SMALL, FTRL, seed=9)
    load_tables(one, piece_sources(tmp_path, meta, one), str(tmp_path))
    _assert_rows_equal(one, src)
    # a module trained with another optimizer is refused, naming both
    with pytest.raises(CheckpointError, match="trained with ftrl, the config builds rowwise_adagrad"):
        piece_sources(tmp_path, meta, TableBatchedEmbeddingBag(SMALL, ADAGRAD))
    (tmp_path / "tables" / "tables.rank00001.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"table piece tables/tables.rank00001.safetensors is missing"):
        piece_sources(tmp_path, meta, one)


def test_whole_model_state_round_trip_through_row_range_checkpoint(tmp_path):
    """A model with a sharded submodule: dense tensors in model.safetensors, tables by row range."""
    from torch import nn

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.tbe = TableBatchedEmbeddingBag(SMALL, ADAGRAD, seed=1)
            self.head = nn.Linear(11, 1)

    ref = Net()
    ref.tbe = _trained(ADAGRAD)

    def sharded(rank: int) -> nn.Module:
        n = Net()
        n.tbe = _trained(ADAGRAD)
        n.head.load_state_dict(ref.head.state_dict())
        return shard_model(n, _plan(2, "contiguous"), rank)

    net, other = sharded(0), sharded(1)
    assert isinstance(net.tbe, ShardedTableBatchedEmbeddingBag)
    assert "tbe.shard.weight" in net._ddp_params_and_buffers_to_ignore
    tables = write_checkpoint_tables(tmp_path, net, rank=0)
    assert tables is not None
    meta_tables, skip = tables
    write_rank_tables(tmp_path, other, 1)
    save_file(
        {k: v.contiguous() for k, v in net.state_dict().items() if k not in skip}, str(tmp_path / "model.safetensors")
    )
    (tmp_path / "checkpoint.json").write_text(json.dumps({"tables": meta_tables}))
    plain = Net()
    load_model_state(tmp_path, {"tables": meta_tables}, plain)
    _assert_rows_equal(plain.tbe, ref.tbe)
    assert torch.equal(plain.head.weight, ref.head.weight)


def test_sharded_lookup_without_its_process_group_fails_clearly():
    m = ShardedTableBatchedEmbeddingBag(TableBatchedEmbeddingBag(SMALL, SGD), _plan(2, "contiguous"), 0)
    from tests.kernels.batches import random_batch

    with pytest.raises(KernelInputError, match="set_process_group"):
        m(*random_batch(SMALL, 2, seed=0))
    with pytest.raises(ConfigError, match="row_wise needs >= 10 rows"):
        ShardedTableBatchedEmbeddingBag(TableBatchedEmbeddingBag(SMALL, SGD), _plan(10, "contiguous"), 0)


def test_replicated_checkpoint_resumes_sharded(tmp_path):
    """A checkpoint of a model without sharding (tables packed in model.safetensors) loads into
    the same model sharded over 2 workers: each keeps its rows, the dense part is shared."""
    from torch import nn

    class Net(nn.Module):
        def __init__(self, opt: OptimizerConfig) -> None:
            super().__init__()
            self.tbe = TableBatchedEmbeddingBag(SMALL, opt, seed=1)
            self.head = nn.Linear(11, 1)

    for opt in (ADAGRAD, FTRL, SGD):
        ref = Net(opt)
        ref.tbe = _trained(opt)
        save_file({k: v.contiguous() for k, v in ref.state_dict().items()}, str(tmp_path / "model.safetensors"))
        for r in range(2):
            net = shard_model(Net(opt), _plan(2, "hashed"), r)
            load_model_state(tmp_path, {}, net)
            _assert_rows_equal(net.tbe, ref.tbe)
            assert torch.equal(net.head.bias, ref.head.bias)
        with pytest.raises(CheckpointError, match="missing"):  # a dense tensor the checkpoint lacks
            save_file(
                {k: v.contiguous() for k, v in ref.state_dict().items() if k != "head.bias"},
                str(tmp_path / "model.safetensors"),
            )
            load_model_state(tmp_path, {}, shard_model(Net(opt), _plan(2, "hashed"), 0))
