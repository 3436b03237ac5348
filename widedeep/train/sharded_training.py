"""Training with row-wise sharded embedding tables: the few things the training loop does
differently when ``cfg.sharding`` splits tables across workers (issue 16), in one module so the
loop keeps one marked call per hook.

- :func:`shard_for_training`: plan the tables from the config (``kernels.sharding.plan_tables``:
  table bytes vs ``sharding.memory_budget_mb``, per-table overrides) and swap the model's
  embedding bags for sharded ones (task ``ranking``; see the function for why not retrieval).
  Called on the freshly built model (every worker builds the same initial tables, then keeps its
  rows), before the model moves to its device, before a checkpoint is restored into it (restores
  read only this worker's rows) and after a warm start (which maps whole tables by vocabulary).
- :func:`write_rank_tables_into`: the checkpoint files a worker other than rank 0 writes: its rows of
  every sharded table. Ray Train merges the directories the workers report under one checkpoint
  name; rank 0 writes everything else (``model.checkpoint.save_checkpoint``).
- :func:`lockstep`: sharded lookups are collective, so every worker must run the same number of
  evaluation forwards although the validation rows split unevenly; a worker that has run out
  scores an empty batch until all have.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from widedeep.errors import ConfigError
from widedeep.kernels.sharded import has_sharded_tables, model_tables, shard_model
from widedeep.kernels.sharding import ShardingPlan, plan_tables, table_bytes, worker_bytes
from widedeep.train.config import TrainConfig

_MIB = 1024 * 1024


def plan_for(model: nn.Module, cfg: TrainConfig, world: int) -> ShardingPlan:
    """The sharding plan of ``model``'s tables for ``world`` workers under ``cfg.sharding``."""
    return plan_tables(model_tables(model), world, cfg.sharding)


def shard_for_training(model: nn.Module, cfg: TrainConfig, rank: int, world: int) -> tuple[nn.Module, str | None]:
    """``(model with sharded tables, a one-line summary)``; the model unchanged and ``None``
    when the plan shards nothing (a single worker, or every table fits replicated).

    Only the ranking task shards: the retrieval task's validation embeds the catalog lazily on
    each worker (``widedeep.train.retrieval_task``), a data-dependent number of lookups that
    collective lookups would deadlock on; it raises ``ConfigError`` instead.
    """
    tables = model_tables(model)
    plan = plan_tables(tables, world, cfg.sharding)
    if not plan.any_sharded:
        return model, None
    if cfg.task != "ranking":
        raise ConfigError(
            f"sharding: row-wise tables are supported for task 'ranking'; task {cfg.task!r} validates with "
            "lookups whose number depends on each worker's data (the catalog's item vectors), which sharded "
            "tables cannot serve (every lookup is collective): set sharding.mode: replicated or raise "
            "sharding.memory_budget_mb"
        )
    replicated = sum(table_bytes(tc, opt) for tc, opt in tables)
    held = worker_bytes(tables, plan)
    names = plan.sharded_names()
    shown = ", ".join(names[:6]) + (f", ... ({len(names)} in all)" if len(names) > 6 else "")
    msg = (
        f"sharding: {len(names)} of {len(tables)} tables row-wise over {world} workers ({shown}; rows "
        f"{cfg.sharding.rows}); table memory per worker {held / _MIB:.1f} MiB (replicated: {replicated / _MIB:.1f} MiB)"
    )
    return shard_model(model, plan, rank), msg


def rank_has_tables(model: nn.Module, rank: int) -> bool:
    """Whether worker ``rank`` writes checkpoint files of its own: its rows of sharded tables
    (rank 0's pieces go with the rest of the checkpoint)."""
    return rank != 0 and has_sharded_tables(model)


def write_rank_tables_into(directory: str | Path, model: nn.Module, rank: int) -> None:
    """Write worker ``rank``'s table pieces under ``directory`` (``rank_has_tables`` must hold)."""
    from widedeep.kernels.table_store import write_rank_tables

    write_rank_tables(directory, model, rank)


def lockstep(
    batches: Iterable[Any], model: nn.Module, make_empty: Callable[[], Any], device: torch.device
) -> Iterator[Any]:
    """``batches``, padded with ``make_empty()`` until every worker's batches are exhausted
    (one all-reduce per batch); ``batches`` unchanged for a model without sharded tables."""
    if not has_sharded_tables(model):
        yield from batches
        return
    import torch.distributed as dist

    it = iter(batches)
    while True:
        batch = next(it, None)
        more = torch.tensor([0 if batch is None else 1], dtype=torch.int64, device=device)
        dist.all_reduce(more, op=dist.ReduceOp.MAX)
        if int(more.item()) == 0:
            return
        yield make_empty() if batch is None else batch


def empty_batch(task: Any, fs: Any, cfg: TrainConfig, split_dir: str, columns: list[str]) -> Any:
    """The task's batch of zero rows of a prepared split (the schema's columns, no data)."""
    import pyarrow.dataset as pads

    schema = pads.dataset(split_dir, format="parquet").schema
    table = schema.empty_table()
    return task.collate(table.select(columns) if columns else table, fs, cfg)
