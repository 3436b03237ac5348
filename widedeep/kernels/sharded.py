"""Row-wise sharded tables: a table-batched embedding bag whose large tables are split by rows
across the workers, exchanged by all-to-all, next to replicated tables in the same module.

``ShardedTableBatchedEmbeddingBag`` takes the same jagged, table-major input as
``TableBatchedEmbeddingBag`` and returns the same ``[B, sum(dims)]`` output; a
``sharding.ShardingPlan`` says which tables are ``replicated`` and which ``row_wise``.

- Replicated tables live in an inner ``TableBatchedEmbeddingBag`` (``self.replicated``) and
  stay identical through its exact all-gather exchange, unchanged.
- Row-wise tables: this worker's rows of each of them live in an inner
  ``TableBatchedEmbeddingBag`` (``self.shard``, tables ordered by dim so that each dim is one
  *run*: one ``[rows, D]`` matrix). A step, per run (TorchRec's row-wise sharding, with per-id
  rather than pooled-partial replies so that pooling, mean and per-sample weights stay on the
  requester exactly as in the kernel):

  1. the requester coalesces its ids (``torch.unique``: each distinct row is asked for once),
     maps each to its owner and the owner's local row, buckets them by owner;
  2. one all-to-all of the counts (every run at once), one of the ids;
  3. each owner gathers the asked rows from its shard (the kernel's one-id-per-bag gather) and
     all-to-alls them back;
  4. the requester pools them into bags (``F.embedding_bag`` over the distinct rows, the
     kernel's sum / mean / per-sample-weight semantics; empty bags give zeros);
  5. backward: the requester sums the gradient of each distinct row with the kernel's own
     coalescing (``_distinct_row_grads``), all-to-alls it to the owner (same order as the
     ids: no ids resent); each owner merges the rows asked by several workers
     (``vectorized.segment_sum``), divides by the world size (DDP's mean, like the replicated
     exchange) and applies the fused optimizer update of its backend (``_impl.apply``: the one
     implementation of SGD, row-wise Adagrad and FTRL).

  The result equals single-process training on the union of the workers' batches: every row
  touched by any worker gets the summed gradient over all workers, once.

Every worker must call forward (training and evaluation alike: lookups are collective) and
backward the same number of times, like the replicated exchange's backward. Traffic per step
and run, per worker: ``U`` distinct ids out (8 bytes each), ``U * D`` floats back and
``U * D`` gradient floats out, each times ``(W-1)/W`` (the share owned by other workers),
against ``(W-1) * max_U * (D + 2)`` words for the replicated all-gather.

``shard_model`` swaps the ``TableBatchedEmbeddingBag`` modules of a built model for sharded
ones (rows and optimizer state taken from the built, identically initialised modules) and
tells DDP to leave their tensors alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from widedeep.errors import ConfigError, KernelInputError
from widedeep.kernels import vectorized
from widedeep.kernels.config import OptimizerConfig, TableConfig
from widedeep.kernels.layout import Run, TableLayout, check_inputs_info
from widedeep.kernels.module import TableBatchedEmbeddingBag
from widedeep.kernels.sharding import RowRange, ShardingPlan, TablePlan
from widedeep.kernels.traffic import Traffic

STATE_KINDS = ("adagrad_sum", "ftrl_z", "ftrl_n")


def table_tensors(m: TableBatchedEmbeddingBag, t: int) -> dict[str, torch.Tensor]:
    """Views of table ``t`` of a plain module: ``weight`` ``[n, D]`` and its optimizer state
    (``adagrad_sum`` ``[n]``; ``ftrl_z``, ``ftrl_n`` ``[n, D]``)."""
    lay = m.layout
    tc = lay.tables[t]
    out = {"weight": m.table_weight(t)}
    for k, v in m.optimizer_state().items():
        if k == "adagrad_sum":
            out[k] = v.data[lay.row_offsets[t] : lay.row_offsets[t + 1]]
        else:
            out[k] = v.data[lay.elem_offsets[t] : lay.elem_offsets[t + 1]].view(tc.num_rows, tc.dim)
    return out


def table_storage(module: nn.Module, t: int) -> tuple[TableBatchedEmbeddingBag, int, RowRange]:
    """Where this process keeps table ``t`` of ``module`` (plain or sharded): the plain module
    holding it, its index there, and the global rows it holds."""
    if isinstance(module, ShardedTableBatchedEmbeddingBag):
        return module.storage(t)
    if isinstance(module, TableBatchedEmbeddingBag):
        return module, t, RowRange(0, module.layout.tables[t].num_rows, 1)
    raise TypeError(f"not an embedding bag module: {type(module).__name__}")


def select_tables(
    indices: torch.Tensor,
    offsets: torch.Tensor,
    psw: torch.Tensor | None,
    num_tables: int,
    B: int,
    keep: Sequence[int],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The jagged input of tables ``keep`` (in that order) cut out of a table-major batch."""
    if list(keep) == list(range(num_tables)):
        return indices, offsets, psw
    if B == 0:
        return indices[:0], offsets[:1], None if psw is None else psw[:0]
    bounds = offsets[0::B].tolist()
    lengths = (offsets[1:] - offsets[:-1]).view(num_tables, B)
    sel = torch.tensor(list(keep), dtype=torch.int64, device=offsets.device)
    new_off = offsets.new_zeros(len(keep) * B + 1)
    torch.cumsum(lengths.index_select(0, sel).reshape(-1), 0, out=new_off[1:])
    idx = torch.cat([indices[bounds[t] : bounds[t + 1]] for t in keep])
    w = None if psw is None else torch.cat([psw[bounds[t] : bounds[t + 1]] for t in keep])
    return idx, new_off, w


def _blank(tables: Sequence[TableConfig], source: TableBatchedEmbeddingBag) -> TableBatchedEmbeddingBag:
    """A plain module for ``tables`` with the source's optimizer, backend and dtype; weights are
    filled by the caller (zeros init: nothing random is drawn)."""
    return TableBatchedEmbeddingBag(
        [dataclasses.replace(tc, init="zeros") for tc in tables],
        source.optimizer,
        device=source.weight.device,
        dtype=source.weight.dtype,
        backend=source.backend,
        validate=False,
    )


class ShardedTableBatchedEmbeddingBag(nn.Module):
    """A ``TableBatchedEmbeddingBag`` whose ``row_wise`` tables are split across workers.

    Args:
        source: the plain module to shard (built the usual way, so every worker starts from the
            same weights); this worker keeps its rows of it, with their optimizer state.
        plan: the placement of every table of ``source`` (names must match).
        rank: this worker's rank in the process group given to ``set_process_group``.
    """

    def __init__(self, source: TableBatchedEmbeddingBag, plan: ShardingPlan, rank: int) -> None:
        super().__init__()
        world = plan.world_size
        if not 0 <= rank < world:
            raise ConfigError(f"rank: expected 0 <= rank < {world}, got {rank}")
        self.layout = source.layout
        self.optimizer: OptimizerConfig = source.optimizer
        self.backend = source.backend
        self.validate = source.validate
        self.rank, self.world = rank, world
        tables = self.layout.tables
        self.table_plans: tuple[TablePlan, ...] = tuple(plan.table(tc.name) for tc in tables)
        row_wise = [world > 1 and p.sharded for p in self.table_plans]
        for tc, rw in zip(tables, row_wise, strict=True):
            if rw and tc.num_rows < world:
                raise ConfigError(f"table {tc.name!r}: row_wise needs >= {world} rows, has {tc.num_rows}")
        self.rep_ids = [t for t in range(len(tables)) if not row_wise[t]]
        self.shard_ids = sorted((t for t in range(len(tables)) if row_wise[t]), key=lambda t: (tables[t].dim, t))
        self._pg: dist.ProcessGroup | None = None
        self._traffic: Traffic | None = None

        self.replicated = _blank([tables[t] for t in self.rep_ids], source) if self.rep_ids else None
        self.shard = None
        if self.shard_ids:
            local = [dataclasses.replace(tables[t], num_rows=len(self._range(t, rank))) for t in self.shard_ids]
            self.shard = _blank(local, source)
            # the full-size layout of the row-wise tables (requester side: ids, pooling, grads)
            self.shard_layout = TableLayout([tables[t] for t in self.shard_ids])
            if [(r.first, r.last, r.dim) for r in self.shard_layout.runs] != [
                (r.first, r.last, r.dim) for r in self.shard.layout.runs
            ]:  # pragma: no cover - runs depend only on dims, which are equal
                raise AssertionError("shard runs differ from the global runs")
            # run-local row where table k's rows start on worker j: [k][j]
            self._local_base = []
            for k in range(len(self.shard_ids)):
                run = next(r for r in self.shard_layout.runs if r.first <= k < r.last)
                bases = []
                for j in range(world):
                    lay = TableLayout(
                        [dataclasses.replace(tables[s], num_rows=len(self._range(s, j))) for s in self.shard_ids]
                    )
                    bases.append(lay.row_offsets[k] - lay.row_offsets[run.first])
                self._local_base.append(bases)
        with torch.no_grad():
            for i, t in enumerate(self.rep_ids):
                assert self.replicated is not None
                self._copy_rows(source, t, self.replicated, i, RowRange(0, tables[t].num_rows))
            for i, t in enumerate(self.shard_ids):
                assert self.shard is not None
                self._copy_rows(source, t, self.shard, i, self._range(t, rank))
        order = self.rep_ids + self.shard_ids
        cols = []
        for t in order:
            cols += [self.layout.col_offsets[t] + c for c in range(tables[t].dim)]
        # output column c of this module is column position[c] of cat(replicated, shard)
        position = [0] * len(cols)
        for p, c in enumerate(cols):
            position[c] = p
        self._col_perm = None if position == list(range(len(cols))) else position
        self._cache: dict[torch.device, Any] = {}

    # ------------------------------------------------------------------ layout
    def _range(self, t: int, rank: int) -> RowRange:
        return self.table_plans[t].row_range(self.layout.tables[t].num_rows, rank, self.world)

    @staticmethod
    def _copy_rows(src: TableBatchedEmbeddingBag, t: int, dst: TableBatchedEmbeddingBag, i: int, rr: RowRange) -> None:
        s, d = table_tensors(src, t), table_tensors(dst, i)
        for k, v in d.items():
            v.copy_(s[k][rr.start : rr.stop : rr.step])

    def storage(self, t: int) -> tuple[TableBatchedEmbeddingBag, int, RowRange]:
        """(plain inner module holding table ``t``, its index there, the global rows held here)."""
        t = self.layout.table_index(t)
        if t in self.rep_ids:
            assert self.replicated is not None
            return self.replicated, self.rep_ids.index(t), RowRange(0, self.layout.tables[t].num_rows)
        assert self.shard is not None
        return self.shard, self.shard_ids.index(t), self._range(t, self.rank)

    @property
    def tables(self) -> list[TableConfig]:
        return list(self.layout.tables)

    @property
    def total_dim(self) -> int:
        return self.layout.total_dim

    @property
    def weight(self) -> torch.Tensor:
        """The weights of either inner module (their device and dtype are this module's)."""
        inner = self.replicated if self.replicated is not None else self.shard
        assert inner is not None
        return inner.weight

    def table_bytes_held(self) -> int:
        """Bytes of table weights and optimizer state this worker holds."""
        return sum(
            t.numel() * t.element_size()
            for m in (self.replicated, self.shard)
            if m is not None
            for t in [m.weight, *m.optimizer_state().values()]
        )

    def set_process_group(self, pg: dist.ProcessGroup | None, traffic: Traffic | None = None) -> None:
        """The group of the plan's ``world_size`` workers (ranks as given to the constructor);
        ``traffic`` (optional) counts the bytes this module's exchanges move."""
        if pg is not None and self.shard is not None:
            w, r = dist.get_world_size(pg), dist.get_rank(pg)
            if (w, r) != (self.world, self.rank):
                raise ConfigError(
                    f"process group: world {w} rank {r}, "
                    f"but the tables were sharded for world {self.world} rank {self.rank}"
                )
        self._pg = pg
        self._traffic = traffic
        if self.replicated is not None:
            self.replicated.set_process_group(pg, traffic)

    def extra_repr(self) -> str:
        return (
            f"tables={self.layout.num_tables} (row_wise={len(self.shard_ids)}), world={self.world}, rank={self.rank}, "
            f"optimizer={self.optimizer.kind}, backend={self.backend!r}"
        )

    # ------------------------------------------------------------------ forward
    def forward(
        self,
        indices: torch.Tensor,
        offsets: torch.Tensor,
        per_sample_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Pooled bags ``[B, sum(dims)]`` fp32, exactly like ``TableBatchedEmbeddingBag``."""
        T = self.layout.num_tables
        B, _ = check_inputs_info(
            self.layout, indices, offsets, per_sample_weights, self.weight.device, check_values=self.validate
        )
        parts = []
        if self.replicated is not None:
            parts.append(self.replicated(*select_tables(indices, offsets, per_sample_weights, T, B, self.rep_ids)))
        if self.shard is not None:
            if self._pg is None and self.world > 1:
                raise KernelInputError(
                    "row-wise sharded tables need their process group: call set_process_group(pg) on every worker"
                )
            i, o, w = select_tables(indices, offsets, per_sample_weights, T, B, self.shard_ids)
            if self.training and torch.is_grad_enabled():
                anchor = torch.empty(0, device=self.weight.device, requires_grad=True)
                parts.append(_RowWiseLookup.apply(anchor, self, i, o, w, B))
            else:
                with torch.no_grad():
                    parts.append(self._lookup(i, o, w, B)[0])
        out = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        if self._col_perm is None:
            return out
        perm = self._cached("col_perm", lambda dev: torch.tensor(self._col_perm, dtype=torch.int64, device=dev))
        return out.index_select(1, perm)

    def _cached(self, key: str, make: Any) -> Any:
        dev = self.weight.device
        per_dev = self._cache.setdefault(dev, {})
        if key not in per_dev:
            per_dev[key] = make(dev)
        return per_dev[key]

    def _owners(self, r: int, uniq: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Owner rank and owner-local run row of distinct run-global rows ``uniq`` (sorted)."""
        lay = self.shard_layout
        run = lay.runs[r]
        owner = torch.empty_like(uniq)
        local = torch.empty_like(uniq)
        starts = torch.tensor(
            [lay.row_offsets[k] - run.row_start for k in range(run.first, run.last + 1)],
            dtype=torch.int64,
            device=uniq.device,
        )
        cut = torch.searchsorted(uniq, starts).tolist()
        for k in range(run.first, run.last):
            lo, hi = cut[k - run.first], cut[k - run.first + 1]
            if hi == lo:
                continue
            t = self.shard_ids[k]
            ids = uniq[lo:hi] - (lay.row_offsets[k] - run.row_start)
            plan = self.table_plans[t]
            base = self._cached(
                f"base{k}", lambda dev, k=k: torch.tensor(self._local_base[k], dtype=torch.int64, device=dev)
            )
            if plan.rows == "hashed":
                o = torch.remainder(ids, self.world)
                loc = torch.div(ids, self.world, rounding_mode="floor")
            else:
                n = self.layout.tables[t].num_rows
                cuts = [n * j // self.world for j in range(self.world + 1)]
                bounds = self._cached(f"bounds{k}", lambda dev, c=cuts: torch.tensor(c, dtype=torch.int64, device=dev))
                o = torch.searchsorted(bounds, ids, right=True) - 1
                loc = ids - bounds.index_select(0, o)
            owner[lo:hi] = o
            local[lo:hi] = loc + base.index_select(0, o)
        return owner, local

    def _a2a(self, send: torch.Tensor, in_splits: list[int], out_splits: list[int], kind: str) -> torch.Tensor:
        out = send.new_empty((sum(out_splits), *send.shape[1:]))
        dist.all_to_all_single(out, send.contiguous(), out_splits, in_splits, group=self._pg)
        if self._traffic is not None:
            row = send[0].numel() * send.element_size() if send.dim() > 1 else send.element_size()
            self._traffic.add(
                (sum(in_splits) - in_splits[self.rank]) * row, (sum(out_splits) - out_splits[self.rank]) * row, kind
            )
        return out

    def _lookup(
        self, indices: torch.Tensor, offsets: torch.Tensor, psw: torch.Tensor | None, B: int
    ) -> tuple[torch.Tensor, Any]:
        """Requester + owner forward of the row-wise tables: ``([B, dims] fp32, saved state)``."""
        assert self.shard is not None
        lay, W = self.shard_layout, self.world
        runs = _split_runs(lay, indices, offsets, psw, B)
        asks = []
        counts = torch.zeros((W, len(lay.runs)), dtype=torch.int64)
        for r, ri in enumerate(runs):
            uniq, inverse = torch.unique(ri.ids, sorted=True, return_inverse=True)
            owner, local = self._owners(r, uniq)
            order = torch.argsort(owner, stable=True)
            counts[:, r] = torch.bincount(owner, minlength=W).cpu()
            asks.append((inverse, order, local.index_select(0, order)))
        dev = self.weight.device
        recv_counts = self._a2a(counts.to(dev).reshape(-1), [len(lay.runs)] * W, [len(lay.runs)] * W, "counts")
        recv_counts = recv_counts.view(W, len(lay.runs)).cpu()
        out = torch.empty((B, lay.total_dim), dtype=torch.float32, device=dev)
        saved = []
        for r, (run, ri, (inverse, order, send_rows)) in enumerate(zip(lay.runs, runs, asks, strict=True)):
            sends, recvs = counts[:, r].tolist(), recv_counts[:, r].tolist()
            rows = self._a2a(send_rows, sends, recvs, "ids")  # owner side: local run rows asked by each worker
            mine = vectorized.run_weight(self.shard.layout, self.shard.weight.data, self.shard.layout.runs[r])
            got = self._a2a(mine.index_select(0, rows).float(), recvs, sends, "embeddings")
            emb = torch.empty_like(got)
            emb[order] = got  # back to sorted distinct-row order
            block = out[:, run.col_start : run.col_start + run.num_tables * run.dim]
            if B:
                pooled = F.embedding_bag(
                    inverse, emb, ri.offsets, mode="sum", per_sample_weights=ri.weights, include_last_offset=True
                )
                if ri.scale is not None:
                    pooled.mul_(ri.scale[:, None])
                block.view(B, run.num_tables, run.dim).copy_(pooled.view(run.num_tables, B, run.dim).transpose(0, 1))
            saved.append((order, sends, recvs, rows, inverse))
        return out, (runs, B, saved)

    def _backward(self, saved: Any, grad_out: torch.Tensor) -> None:
        """Requester: coalesced row gradients to their owners; owner: merge and apply."""
        assert self.shard is not None
        runs, B, per_run = saved
        lay = self.shard_layout
        for r, (run, ri, (order, sends, recvs, rows, inverse)) in enumerate(zip(lay.runs, runs, per_run, strict=True)):
            g = _distinct_row_grads(run, ri, inverse, grad_out, B)
            got = self._a2a(g.index_select(0, order), sends, recvs, "gradients")
            if rows.numel() == 0:
                continue
            uniq, summed = vectorized.segment_sum(rows, got, torch.arange(rows.numel(), device=rows.device))
            summed.div_(self.world)
            self.shard._impl.apply(self.shard, r, uniq, summed)


class _RowWiseLookup(torch.autograd.Function):
    """Forward: the row-wise lookup. Backward: gradients to the owners, fused update there;
    returns no gradients (``anchor`` makes autograd call backward, as in ``module._FusedUpdate``)."""

    @staticmethod
    def forward(ctx, anchor, module, indices, offsets, per_sample_weights, B):  # type: ignore[override]
        out, saved = module._lookup(indices, offsets, per_sample_weights, B)
        ctx.module = module
        ctx.saved = saved
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        with torch.no_grad():
            ctx.module._backward(ctx.saved, grad_out.contiguous())
        ctx.saved = None
        return None, None, None, None, None, None


# ---------------------------------------------------------------------- whole models
EMBEDDING_TYPES = (TableBatchedEmbeddingBag, ShardedTableBatchedEmbeddingBag)


def embedding_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` of the outermost embedding bag modules of ``model`` (a sharded
    module's inner plain modules are not listed); ``""`` when ``model`` itself is one."""
    out: list[tuple[str, nn.Module]] = []
    for name, m in model.named_modules():
        if isinstance(m, EMBEDDING_TYPES) and not any(name.startswith(p + ".") or p == "" for p, _ in out):
            out.append((name, m))
    return out


def model_tables(model: nn.Module) -> list[tuple[TableConfig, OptimizerConfig]]:
    """Every table of every embedding module of ``model``, with its optimizer."""
    return [(tc, m.optimizer) for _, m in embedding_modules(model) for tc in m.layout.tables]


def has_sharded_tables(model: nn.Module) -> bool:
    return any(isinstance(m, ShardedTableBatchedEmbeddingBag) for _, m in embedding_modules(model))


def shard_model(model: nn.Module, plan: ShardingPlan, rank: int) -> nn.Module:
    """Replace every ``TableBatchedEmbeddingBag`` of ``model`` by a sharded one under ``plan``
    (every module, when any table is row-wise: a checkpoint then stores every table by row
    range). Returns ``model`` (changed in place) or, when ``model`` is itself an embedding bag,
    the new module. A plan without row-wise tables leaves the model as it is.

    DDP is told to ignore the replaced modules' tensors (their shapes differ between workers
    and they are synchronised by the modules themselves).

    Memory: the plain modules were built whole (that is what makes every worker's rows equal to
    an unsharded run's initial rows), so each worker holds each module's full initial tables
    once, on the host, until this returns; call it before moving the model to a GPU, which then
    only ever holds the shards. Tables that do not fit a worker's host memory even once would
    need the initial rows drawn per row block instead (not done).
    """
    if not plan.any_sharded:
        return model
    root: nn.Module = model
    ignore: list[str] = []
    for name, m in embedding_modules(model):
        if isinstance(m, ShardedTableBatchedEmbeddingBag):
            continue
        new = ShardedTableBatchedEmbeddingBag(m, plan, rank)
        if name == "":
            root = new
        else:
            parent_name, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent_name) if parent_name else model, attr, new)
        ignore += [f"{name}.{k}" if name else k for k in new.state_dict()]
    if ignore:
        from torch.nn.parallel import DistributedDataParallel

        prev = list(getattr(root, "_ddp_params_and_buffers_to_ignore", []))
        DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(root, prev + ignore)
    return root


@dataclass(frozen=True)
class _ShardRunInput:
    """One run of a batch as the row-wise exchange needs it (table-major, like the input)."""

    ids: torch.Tensor  # int64 [n]: run-global rows, input order
    offsets: torch.Tensor  # [T_r * B + 1], from 0
    weights: torch.Tensor | None  # fp32 [n]
    scale: torch.Tensor | None  # fp32 [T_r * B]: 1/len for mean-pooled tables; None when all 1
    bags: torch.Tensor  # int64 [n]: the (table-major) bag of each id


def _split_runs(
    lay: TableLayout, indices: torch.Tensor, offsets: torch.Tensor, psw: torch.Tensor | None, B: int
) -> list[_ShardRunInput]:
    """Cut a batch into runs with run-global ids. Kept apart from ``vectorized.split_runs``,
    whose layout is tuned for the local pooling kernel (bag-major, table-local ids)."""
    out = []
    bounds = offsets[0 :: max(B, 1)].tolist() if B > 0 else [0] * (lay.num_tables + 1)
    for run in lay.runs:
        lo, hi = bounds[run.first], bounds[run.last]
        offs = offsets[run.first * B : run.last * B + 1] - lo
        ids = indices[lo:hi].to(torch.int64)
        counts = torch.tensor([bounds[t + 1] - bounds[t] for t in range(run.first, run.last)], dtype=torch.int64)
        shift = torch.tensor(
            [lay.row_offsets[t] - run.row_start for t in range(run.first, run.last)], dtype=torch.int64
        )
        ids = ids + torch.repeat_interleave(shift, counts, output_size=hi - lo).to(ids.device)
        lengths = offs[1:] - offs[:-1]
        bags = torch.repeat_interleave(
            torch.arange(run.num_tables * B, device=ids.device), lengths, output_size=hi - lo
        )
        mean = torch.tensor([lay.tables[t].pooling == "mean" for t in range(run.first, run.last)], device=ids.device)
        scale = None
        if B and bool(mean.any()):
            inv = lengths.clamp(min=1).to(torch.float32).reciprocal()
            scale = torch.where(mean.repeat_interleave(B), inv, torch.ones_like(inv))
        out.append(_ShardRunInput(ids, offs, None if psw is None else psw[lo:hi], scale, bags))
    return out


def _distinct_row_grads(
    run: Run, ri: _ShardRunInput, inverse: torch.Tensor, grad_out: torch.Tensor, B: int
) -> torch.Tensor:
    """fp32 ``[U, D]``: each distinct row's gradient summed over its occurrences (sorted-row order)."""
    U = int(inverse.max()) + 1 if inverse.numel() else 0
    if U == 0:
        return grad_out.new_zeros((0, run.dim), dtype=torch.float32)
    g = grad_out[:, run.col_start : run.col_start + run.num_tables * run.dim].float()
    bag_grads = g.reshape(B, run.num_tables, run.dim).transpose(0, 1).reshape(run.num_tables * B, run.dim)
    if ri.scale is not None:
        bag_grads = bag_grads * ri.scale[:, None]
    per_id = bag_grads.index_select(0, ri.bags)
    if ri.weights is not None:
        per_id = per_id * ri.weights[:, None].float()
    return per_id.new_zeros((U, run.dim)).index_add_(0, inverse, per_id)
