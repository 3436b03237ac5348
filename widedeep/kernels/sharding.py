"""Which embedding tables are replicated on every worker and which are split by rows.

Two placements per table (TorchRec calls them data-parallel and row-wise):

- ``replicated``: every worker holds the whole table; replicas stay identical through the exact
  all-gather of coalesced ``(row, gradient)`` pairs (``distributed.exchange_coalesced``). Cheap
  for small tables, impossible once a table (weights + optimizer state) outgrows one worker.
- ``row_wise``: worker ``r`` of ``W`` owns a subset of the rows; lookups and updates travel by
  all-to-all (``sharded.ShardedTableBatchedEmbeddingBag``). Two ways to pick the subset, both
  described by one :class:`RowRange` (``start, stop, step``) per worker:

  * ``contiguous``: rows ``[n*r//W, n*(r+1)//W)`` (TorchRec's row-wise blocks);
  * ``hashed``: rows ``r, r+W, r+2W, ...`` (``id mod W``). Vocabularies are numbered by
    frequency, so contiguous blocks put the whole hot head of a table on worker 0; ``mod W``
    spreads it over every worker.

The plan is decided by :func:`plan_tables` from each table's bytes (weights + fused optimizer
state, :func:`table_bytes`) and a per-worker budget (:class:`ShardingConfig`, the ``sharding:``
section of a training config), and overridable per table. It is deterministic, so every worker
computes the same plan, and it is written into elastic checkpoints (``table_store``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

from widedeep.errors import ConfigError
from widedeep.kernels.config import OptimizerConfig, TableConfig

Placement = Literal["replicated", "row_wise"]
RowScheme = Literal["contiguous", "hashed"]
PlanMode = Literal["auto", "replicated", "row_wise"]

_MIB = 1024 * 1024


@dataclass(frozen=True)
class ShardingConfig:
    """The ``sharding:`` section of a training config.

    Args:
        mode: ``auto`` (default): every table replicated while all of them fit
            ``memory_budget_mb``; beyond it, every table of at least ``min_rows`` rows (and at
            least one row per worker) is row-wise sharded. Why all of them, not just enough to
            fit: per distinct row a worker touches in a step, the row-wise exchange moves
            ``(W-1)/W * (8 + 8D)`` bytes (id out, embedding back, gradient out) against the
            replicated all-gather's ``(W-1) * (8 + 4D)``, and a module without replicated
            tables makes no all-gather at all; so once a module pays for the all-to-all,
            sharding its other tables saves bytes and collectives as well as memory (measured
            by ``widedeep bench shard``). ``replicated``: never shard. ``row_wise``: shard as
            ``auto`` does beyond the budget, whatever the budget.
        memory_budget_mb: per-worker budget for table bytes (weights + optimizer state), MiB;
            ``null``: no budget (``auto`` then replicates). A plan that does not fit fails
            before training, naming the bytes needed.
        min_rows: tables with fewer rows stay replicated under ``auto`` / ``row_wise``
            (default 1: only tables with fewer rows than workers stay replicated); raise it to
            keep small tables whole on every worker.
        rows: how rows of a row-wise table are split: ``contiguous`` blocks or ``hashed``
            (row ``i`` on worker ``i mod W``).
        tables: per-table override by table name (``deep/C1: row_wise``); names are checked
            against the model's tables when the plan is made.
    """

    mode: PlanMode = "auto"
    memory_budget_mb: float | None = None
    min_rows: int = 1
    rows: RowScheme = "contiguous"
    tables: dict[str, Placement] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.memory_budget_mb is not None and not (
            math.isfinite(self.memory_budget_mb) and self.memory_budget_mb > 0
        ):
            raise ConfigError(f"memory_budget_mb: must be > 0 or null, got {self.memory_budget_mb!r}")
        if self.min_rows < 1:
            raise ConfigError(f"min_rows: must be >= 1, got {self.min_rows!r}")


@dataclass(frozen=True)
class RowRange:
    """Global rows ``range(start, stop, step)`` of one table held by one worker."""

    start: int
    stop: int
    step: int = 1

    def __len__(self) -> int:
        return len(range(self.start, self.stop, self.step))

    def to_dict(self) -> dict[str, int]:
        return {"start": self.start, "stop": self.stop, "step": self.step}


@dataclass(frozen=True)
class TablePlan:
    """Placement of one table."""

    name: str
    placement: Placement = "replicated"
    rows: RowScheme = "contiguous"

    def __post_init__(self) -> None:
        if self.placement not in ("replicated", "row_wise"):
            raise ConfigError(
                f"TablePlan({self.name!r}).placement: expected replicated or row_wise, got {self.placement!r}"
            )
        if self.rows not in ("contiguous", "hashed"):
            raise ConfigError(f"TablePlan({self.name!r}).rows: expected contiguous or hashed, got {self.rows!r}")

    @property
    def sharded(self) -> bool:
        return self.placement == "row_wise"

    def row_range(self, num_rows: int, rank: int, world: int) -> RowRange:
        """The rows worker ``rank`` of ``world`` holds (all rows when replicated)."""
        if not self.sharded or world == 1:
            return RowRange(0, num_rows, 1)
        if self.rows == "hashed":
            return RowRange(rank, num_rows, world)
        return RowRange(num_rows * rank // world, num_rows * (rank + 1) // world, 1)


@dataclass(frozen=True)
class ShardingPlan:
    """Placement of every table of a model, for ``world_size`` workers."""

    world_size: int
    tables: tuple[TablePlan, ...]

    def __post_init__(self) -> None:
        names = [t.name for t in self.tables]
        if len(set(names)) != len(names):
            raise ConfigError(f"sharding plan: table names must be unique, got {names}")
        if self.world_size < 1:
            raise ConfigError(f"sharding plan: world_size must be >= 1, got {self.world_size}")

    def table(self, name: str) -> TablePlan:
        for t in self.tables:
            if t.name == name:
                return t
        raise ConfigError(f"sharding plan: no table named {name!r}; tables: {[t.name for t in self.tables]}")

    @property
    def any_sharded(self) -> bool:
        return self.world_size > 1 and any(t.sharded for t in self.tables)

    def sharded_names(self) -> list[str]:
        return [t.name for t in self.tables if t.sharded]

    def to_dict(self) -> dict[str, Any]:
        return {
            "world_size": self.world_size,
            "tables": [{"name": t.name, "placement": t.placement, "rows": t.rows} for t in self.tables],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ShardingPlan:
        return cls(
            int(d["world_size"]), tuple(TablePlan(str(t["name"]), t["placement"], t["rows"]) for t in d["tables"])
        )


def row_bytes(table: TableConfig, optimizer: OptimizerConfig, weight_bytes: int = 4) -> int:
    """Bytes one row costs: its weights plus the fused optimizer's state (fp32).

    sgd: none; rowwise_adagrad: one accumulator per row; ftrl: ``z`` and ``n`` per element.
    """
    state = {"sgd": 0, "rowwise_adagrad": 4, "ftrl": 8 * table.dim}[optimizer.kind]
    return table.dim * weight_bytes + state


def table_bytes(table: TableConfig, optimizer: OptimizerConfig, weight_bytes: int = 4) -> int:
    """Bytes of the whole table (weights + optimizer state)."""
    return table.num_rows * row_bytes(table, optimizer, weight_bytes)


def worker_bytes(
    tables: Sequence[tuple[TableConfig, OptimizerConfig]], plan: ShardingPlan, rank: int | None = None
) -> int:
    """Table bytes a worker holds under ``plan``: ``rank``'s, or the largest over ranks."""
    ranks = range(plan.world_size) if rank is None else (rank,)
    best = 0
    for r in ranks:
        total = 0
        for tc, opt in tables:
            n = len(plan.table(tc.name).row_range(tc.num_rows, r, plan.world_size))
            total += n * row_bytes(tc, opt)
        best = max(best, total)
    return best


def plan_tables(
    tables: Sequence[tuple[TableConfig, OptimizerConfig]],
    world_size: int,
    cfg: ShardingConfig,
    where: str = "sharding",
) -> ShardingPlan:
    """Decide every table's placement (see :class:`ShardingConfig` for the rule).

    Raises ``ConfigError`` naming ``{where}.tables.<name>`` for an override of an unknown table or
    a row-wise table with fewer rows than workers, and naming the bytes when the plan does not
    fit ``memory_budget_mb``.
    """
    names = [tc.name for tc, _ in tables]
    for name in cfg.tables:
        if name not in names:
            raise ConfigError(f"{where}.tables.{name}: unknown table (tables: {', '.join(names)})")
    total = sum(table_bytes(tc, opt) for tc, opt in tables)
    budget = None if cfg.memory_budget_mb is None else int(cfg.memory_budget_mb * _MIB)
    if cfg.mode == "replicated" or world_size == 1:
        shard_big = False
    elif cfg.mode == "row_wise":
        shard_big = True
    else:
        shard_big = budget is not None and total > budget
    out = []
    for tc, _ in tables:
        placement: Placement = (
            "row_wise" if shard_big and tc.num_rows >= max(cfg.min_rows, world_size) else "replicated"
        )
        override = cfg.tables.get(tc.name)
        if override is not None and world_size > 1:
            if override == "row_wise" and tc.num_rows < world_size:
                raise ConfigError(
                    f"{where}.tables.{tc.name}: row_wise needs at least one row per worker "
                    f"({tc.num_rows} rows, {world_size} workers)"
                )
            placement = override
        out.append(TablePlan(tc.name, placement, cfg.rows))
    plan = ShardingPlan(world_size, tuple(out))
    if budget is not None:
        need = worker_bytes(tables, plan)
        if need > budget:
            sharded = plan.sharded_names()
            lower = sum(
                len(TablePlan("x", "row_wise", cfg.rows).row_range(tc.num_rows, 0, world_size)) * row_bytes(tc, opt)
                if tc.num_rows >= world_size
                else table_bytes(tc, opt)
                for tc, opt in tables
            )
            raise ConfigError(
                f"{where}.memory_budget_mb: the tables need {need / _MIB:.1f} MiB per worker with {world_size} "
                f"worker(s) ({len(sharded)} of {len(tables)} tables row-wise; {total / _MIB:.1f} MiB replicated, "
                f"at best {lower / _MIB:.1f} MiB with every table row-wise), over the budget of "
                f"{cfg.memory_budget_mb} MiB: add workers, raise the budget or shard more tables"
            )
    return plan
