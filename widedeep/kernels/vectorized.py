"""The fast vectorized PyTorch path (the default on CPU; also runs on any device torch supports).

No Python loop over tables or bags: each *run* of equal-dim tables (see ``layout.py``) is one
``[rows, D]`` matrix, ids are shifted to run-global row ids, and ONE ``F.embedding_bag`` call
pools every (table, bag) of the run (bag ``t*B + b``). Mean pooling scales the pooled bags,
so the per-id work is the same for sum and mean.

Backward coalesces duplicates by sorting (stable, so the result is deterministic): sorting
the run-global ids groups equal rows into segments; the summed gradient of distinct row
``u`` is the sum, over its segment, of the gradient of the bag each id came from. That is
itself an embedding bag over the ``[T*B, D]`` bag gradients, so a second
``F.embedding_bag`` computes all ``[U, D]`` row gradients without ever materialising the
``[N, D]`` per-id gradients (20x the bag gradients on a 20-id multi-hot batch), let alone a
dense ``[rows, D]`` table gradient. The optimizer is then applied to the ``U`` distinct rows in
place, in row chunks that stay in cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from widedeep.kernels.config import OptimizerConfig
from widedeep.kernels.layout import Run, TableLayout
from widedeep.kernels.reference import ftrl_pow

# Rows per optimizer chunk: a [chunk, D] fp32 block and its temporaries stay in L2.
_UPDATE_CHUNK_ELEMS = 1 << 16


@dataclass
class RunInput:
    """One run's share of a batch, kept from forward for backward."""

    ids: torch.Tensor  # int64 [n]: run-global row ids
    offsets: torch.Tensor  # int64 [T_r*B + 1], rebased to 0
    weights: torch.Tensor | None  # fp32 [n] per-sample weights
    bag_scale: torch.Tensor | None  # fp32 [T_r*B]: 1/len for mean-pooled bags, 1 for sum


def split_runs(
    layout: TableLayout,
    indices: torch.Tensor,
    offsets: torch.Tensor,
    per_sample_weights: torch.Tensor | None,
    B: int,
) -> list[RunInput]:
    """Cut a batch into its runs and turn table-local ids into run-global row ids."""
    out = []
    bounds = offsets[0 :: max(B, 1)].tolist() if B > 0 else [0] * (layout.num_tables + 1)
    for run in layout.runs:
        lo, hi = bounds[run.first], bounds[run.last]
        offs = offsets[run.first * B : run.last * B + 1]
        if lo:
            offs = offs - lo
        ids = indices[lo:hi]
        if run.num_tables > 1 and hi > lo:
            shift = torch.tensor(
                [layout.row_offsets[t] - run.row_start for t in range(run.first, run.last)],
                dtype=torch.int64,
                device=ids.device,
            )
            counts = torch.tensor(
                [bounds[t + 1] - bounds[t] for t in range(run.first, run.last)],
                dtype=torch.int64,
                device=ids.device,
            )
            ids = ids + torch.repeat_interleave(shift, counts, output_size=hi - lo)
        psw = None if per_sample_weights is None else per_sample_weights[lo:hi]
        out.append(RunInput(ids, offs, psw, _bag_scale(layout, run, offs, B)))
    return out


def _bag_scale(layout: TableLayout, run: Run, offs: torch.Tensor, B: int) -> torch.Tensor | None:
    mean = [layout.tables[t].pooling == "mean" for t in range(run.first, run.last)]
    if not any(mean) or B == 0:
        return None
    lengths = (offs[1:] - offs[:-1]).clamp(min=1).to(torch.float32)
    scale = 1.0 / lengths
    if not all(mean):
        is_mean = torch.tensor(mean, device=offs.device).repeat_interleave(B)
        scale = torch.where(is_mean, scale, torch.ones_like(scale))
    return scale


def run_weight(layout: TableLayout, weight: torch.Tensor, run: Run) -> torch.Tensor:
    """The ``[rows, D]`` view of one run in the flat weight (or per-element state) tensor."""
    return weight[run.elem_start : run.elem_start + run.num_rows * run.dim].view(run.num_rows, run.dim)


def forward(
    layout: TableLayout, weight: torch.Tensor, runs: list[RunInput], B: int
) -> torch.Tensor:
    """Pooled bags of every table, ``[B, sum(dims)]`` fp32."""
    if len(layout.runs) == 1:
        run, ri = layout.runs[0], runs[0]
        pooled = _pool_run(layout, weight, run, ri, B)
        return pooled.view(run.num_tables, B, run.dim).transpose(0, 1).reshape(B, layout.total_dim)
    out = torch.empty((B, layout.total_dim), dtype=torch.float32, device=weight.device)
    for run, ri in zip(layout.runs, runs, strict=True):
        pooled = _pool_run(layout, weight, run, ri, B)
        block = out[:, run.col_start : run.col_start + run.num_tables * run.dim]
        block.view(B, run.num_tables, run.dim).copy_(pooled.view(run.num_tables, B, run.dim).transpose(0, 1))
    return out


def _pool_run(layout: TableLayout, weight: torch.Tensor, run: Run, ri: RunInput, B: int) -> torch.Tensor:
    if B == 0:
        return weight.new_zeros((0, run.dim), dtype=torch.float32)
    w = run_weight(layout, weight, run)
    pooled = F.embedding_bag(
        ri.ids, w, ri.offsets, mode="sum", per_sample_weights=ri.weights, include_last_offset=True
    )
    if ri.bag_scale is not None:
        pooled.mul_(ri.bag_scale[:, None])
    return pooled


def coalesce(
    layout: TableLayout, runs: list[RunInput], grad_out: torch.Tensor, B: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per run: (distinct run-global rows, sorted; their summed fp32 gradients ``[U, D]``)."""
    result = []
    for run, ri in zip(layout.runs, runs, strict=True):
        n_bags = run.num_tables * B
        if ri.ids.numel() == 0:
            result.append((ri.ids.new_empty(0), grad_out.new_zeros((0, run.dim), dtype=torch.float32)))
            continue
        g = grad_out[:, run.col_start : run.col_start + run.num_tables * run.dim].float()
        bag_grads = g.reshape(B, run.num_tables, run.dim).transpose(0, 1).reshape(n_bags, run.dim)
        if ri.bag_scale is not None:
            bag_grads = bag_grads * ri.bag_scale[:, None]
        lengths = ri.offsets[1:] - ri.offsets[:-1]
        bag_of_id = torch.repeat_interleave(
            torch.arange(n_bags, device=ri.ids.device), lengths, output_size=ri.ids.numel()
        )
        result.append(segment_sum(ri.ids, bag_grads, bag_of_id, ri.weights))
    return result


def segment_sum(
    keys: torch.Tensor,
    source: torch.Tensor,
    source_index: torch.Tensor,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct ``keys`` (sorted) and, for each, ``sum_i weights[i] * source[source_index[i]]``.

    Deterministic (stable sort, then one pooled gather per distinct key), on CPU and CUDA
    alike, which keeps data-parallel replicas bit-identical.
    """
    sorted_keys, perm = torch.sort(keys, stable=True)
    uniq, counts = torch.unique_consecutive(sorted_keys, return_counts=True)
    seg = torch.zeros(uniq.numel() + 1, dtype=torch.int64, device=keys.device)
    torch.cumsum(counts, 0, out=seg[1:])
    sums = F.embedding_bag(
        source_index[perm],
        source,
        seg,
        mode="sum",
        per_sample_weights=None if weights is None else weights[perm],
        include_last_offset=True,
    )
    return uniq, sums


def update(
    opt: OptimizerConfig,
    weight: torch.Tensor,
    state: dict[str, torch.Tensor],
    rows: torch.Tensor,
    grads: torch.Tensor,
) -> None:
    """Apply ``opt`` in place to distinct ``rows`` of ``weight`` ``[R, D]`` (same math as
    ``reference.reference_update``), chunk by chunk. ``grads`` is consumed (overwritten)."""
    if rows.numel() == 0:
        return
    D = weight.shape[1]
    chunk = max(1, _UPDATE_CHUNK_ELEMS // D)
    for s in range(0, rows.numel(), chunk):
        r = rows[s : s + chunk]
        g = grads[s : s + chunk]
        w = weight.index_select(0, r)
        if opt.kind == "sgd":
            w.add_(g, alpha=-opt.lr)
        elif opt.kind == "rowwise_adagrad":
            acc = state["adagrad_sum"]
            m = acc.index_select(0, r).add_((g * g).mean(dim=1))
            acc.index_copy_(0, r, m)
            w.sub_(g.mul_(opt.lr).div_(m.sqrt_().add_(opt.eps)[:, None]))
        elif opt.kind == "ftrl":
            w = _ftrl(opt, w, g, state, r)
        else:  # pragma: no cover - OptimizerConfig validates kind
            raise AssertionError(opt.kind)
        weight.index_copy_(0, r, w)


def _ftrl(
    opt: OptimizerConfig, w: torch.Tensor, g: torch.Tensor, state: dict[str, torch.Tensor], r: torch.Tensor
) -> torch.Tensor:
    z_all, n_all = state["ftrl_z"], state["ftrl_n"]
    n = n_all.index_select(0, r)
    z = z_all.index_select(0, r)
    n_new = n + g * g
    p_new = ftrl_pow(n_new, opt.lr_power)
    sigma = (p_new - ftrl_pow(n, opt.lr_power)) / opt.lr
    z = z + g - sigma * w
    denom = (opt.beta + p_new) / opt.lr + opt.l2
    w = torch.where(z.abs() <= opt.l1, torch.zeros_like(z), -(z - torch.sign(z) * opt.l1) / denom)
    n_all.index_copy_(0, r, n_new)
    z_all.index_copy_(0, r, z)
    return w
