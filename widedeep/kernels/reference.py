"""The plain PyTorch reference of the table-batched embedding bag: the single source of truth.

Everything here is written to be obviously right, not fast: one ``F.embedding_bag`` per table,
gradients by autograd on a dense fp32 copy of each table (fine for the small tables tests use;
never do this at scale: it is the dense gradient the fast paths exist to avoid), and the
optimizer math spelled out formula by formula. Tests compare the CPU path and the Triton
kernel against these functions; the benchmark imports them for its correctness check.

Semantics shared by every backend:

* input is jagged and table-major: ``offsets`` has ``T*B + 1`` entries, bag ``b`` of table ``t``
  holds ``indices[offsets[t*B + b] : offsets[t*B + b + 1]]`` (ids local to table ``t``);
* ``sum`` pooling: ``out = sum_i w_i * E[id_i]``; ``mean``: the same sum divided by the bag
  length (so per-sample weights scale ids inside a mean); an empty bag gives zeros;
* output ``[B, sum(dims)]`` float32, table ``t`` in columns ``col_offsets[t] : +dim``;
* the rows a step updates are the distinct ids of the batch (a row in the batch whose gradient
  happens to be zero still counts as touched: FTRL then re-derives its weight from ``z``, ``n``);
* optimizers, per touched row ``r`` with summed gradient ``g`` (fp32):

  - sgd: ``w -= lr * g``
  - rowwise_adagrad (FBGEMM EXACT_ROWWISE_ADAGRAD): ``m += mean(g**2)``;
    ``w -= lr * g / (sqrt(m) + eps)``
  - ftrl (FTRL-Proximal, McMahan et al. 2013, Algorithm 1, per element; ``p = -lr_power``):
    ``n' = n + g**2``; ``sigma = (n'**p - n**p) / lr``; ``z += g - sigma * w``; ``n = n'``;
    ``w = 0 if |z| <= l1 else -(z - sign(z) * l1) / ((beta + n**p) / lr + l2)``
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from widedeep.kernels.config import OptimizerConfig, TableConfig


def split_jagged(
    indices: torch.Tensor,
    offsets: torch.Tensor,
    per_sample_weights: torch.Tensor | None,
    num_tables: int,
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]]:
    """Per table: its ids, its ``B+1`` offsets rebased to 0, its per-sample weights."""
    B = (offsets.numel() - 1) // num_tables
    out = []
    for t in range(num_tables):
        offs = offsets[t * B : (t + 1) * B + 1]
        lo, hi = int(offs[0]), int(offs[-1])
        w = None if per_sample_weights is None else per_sample_weights[lo:hi]
        out.append((indices[lo:hi], offs - lo, w))
    return out


def reference_table_forward(
    weight: torch.Tensor,
    ids: torch.Tensor,
    offs: torch.Tensor,
    psw: torch.Tensor | None,
    pooling: str,
) -> torch.Tensor:
    """One table's pooled bags ``[B, D]`` in fp32 (differentiable w.r.t. ``weight``)."""
    w = weight.float()
    if offs.numel() == 1:  # B == 0
        return w.new_zeros((0, w.shape[1]))
    out = F.embedding_bag(ids, w, offs, mode="sum", per_sample_weights=psw, include_last_offset=True)
    if pooling == "mean":
        lengths = (offs[1:] - offs[:-1]).clamp(min=1).to(out.dtype)
        out = out / lengths[:, None]
    return out


def reference_forward(
    weights: Sequence[torch.Tensor],
    tables: Sequence[TableConfig],
    indices: torch.Tensor,
    offsets: torch.Tensor,
    per_sample_weights: torch.Tensor | None = None,
) -> torch.Tensor:
    """``[B, sum(dims)]`` fp32: every table's pooled bags side by side."""
    parts = split_jagged(indices, offsets, per_sample_weights, len(tables))
    outs = [
        reference_table_forward(w, ids, offs, psw, tc.pooling)
        for w, tc, (ids, offs, psw) in zip(weights, tables, parts, strict=True)
    ]
    return torch.cat(outs, dim=1)


def reference_row_grads(
    weights: Sequence[torch.Tensor],
    tables: Sequence[TableConfig],
    indices: torch.Tensor,
    offsets: torch.Tensor,
    per_sample_weights: torch.Tensor | None,
    grad_out: torch.Tensor,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per table: (distinct ids of the batch, sorted; their summed fp32 gradients ``[U, D]``).

    Computed by autograd through ``reference_table_forward`` on a dense fp32 copy of the table.
    """
    parts = split_jagged(indices, offsets, per_sample_weights, len(tables))
    result = []
    col = 0
    for w, tc, (ids, offs, psw) in zip(weights, tables, parts, strict=True):
        leaf = w.detach().float().clone().requires_grad_(True)
        with torch.enable_grad():
            out = reference_table_forward(leaf, ids, offs, psw, tc.pooling)
            out.backward(grad_out[:, col : col + tc.dim].float())
        grad = leaf.grad if leaf.grad is not None else torch.zeros_like(leaf)
        rows = torch.unique(ids)
        result.append((rows, grad[rows]))
        col += tc.dim
    return result


def ftrl_pow(n: torch.Tensor, lr_power: float) -> torch.Tensor:
    """``n ** -lr_power`` (``sqrt(n)`` for the usual -0.5, computed as sqrt in every backend)."""
    return torch.sqrt(n) if lr_power == -0.5 else torch.pow(n, -lr_power)


def reference_update(
    opt: OptimizerConfig,
    weight: torch.Tensor,
    state: dict[str, torch.Tensor],
    rows: torch.Tensor,
    grads: torch.Tensor,
) -> None:
    """Apply one step of ``opt`` in place to ``weight[rows]`` (``[R, D]``) and its state.

    ``rows`` must be distinct. ``state`` holds ``"adagrad_sum"`` (``[R]``) for rowwise_adagrad,
    ``"ftrl_z"`` and ``"ftrl_n"`` (``[R, D]``) for ftrl; state is fp32, math is fp32, the new
    weights are rounded to ``weight.dtype`` once at the end.
    """
    g = grads.float()
    w = weight[rows].float()
    if opt.kind == "sgd":
        w_new = w - opt.lr * g
    elif opt.kind == "rowwise_adagrad":
        m = state["adagrad_sum"][rows] + (g * g).mean(dim=1)
        state["adagrad_sum"][rows] = m
        w_new = w - opt.lr * g / (torch.sqrt(m)[:, None] + opt.eps)
    elif opt.kind == "ftrl":
        n = state["ftrl_n"][rows]
        z = state["ftrl_z"][rows]
        n_new = n + g * g
        sigma = (ftrl_pow(n_new, opt.lr_power) - ftrl_pow(n, opt.lr_power)) / opt.lr
        z = z + g - sigma * w
        denom = (opt.beta + ftrl_pow(n_new, opt.lr_power)) / opt.lr + opt.l2
        w_new = torch.where(z.abs() <= opt.l1, torch.zeros_like(z), -(z - torch.sign(z) * opt.l1) / denom)
        state["ftrl_n"][rows] = n_new
        state["ftrl_z"][rows] = z
    else:  # pragma: no cover - OptimizerConfig validates kind
        raise AssertionError(opt.kind)
    weight[rows] = w_new.to(weight.dtype)
