"""FBGEMM's table-batched embedding bag (the kernel TorchRec trains with) as a benchmark contender.

Optional: it needs ``fbgemm_gpu`` (``pip install 'widedeep[bench]'`` installs the CPU build,
``fbgemm-gpu-cpu``, which must match the installed torch). Nothing here runs at import time;
``load_fbgemm`` imports it and says why when it cannot.

The contender is ``SplitTableBatchedEmbeddingBagsCodegen`` with ``EXACT_ROWWISE_ADAGRAD``
(FBGEMM's row-wise Adagrad: ``m += mean(g**2)``; ``w -= lr * g / (sqrt(m) + eps)``, the same
formula as ``reference.reference_update``), the same learning rate and ``eps``, weights on
the host, started from the same weights as ours. Its bounds check is left at FBGEMM's default
(``WARNING``), as TorchRec users get it; ours validates its input too (``validate=True``).

Before it is timed, ``check_step`` compares its first step on a benchmark batch with the
plain PyTorch reference (forward output, updated rows, Adagrad state): a contender that
computes something else is not a contender, and the benchmark refuses to report it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from widedeep.kernels.config import OptimizerConfig, TableConfig
from widedeep.kernels.reference import (
    reference_forward,
    reference_row_grads,
    reference_update,
)


@dataclass(frozen=True)
class FbgemmApi:
    """The pieces of ``fbgemm_gpu`` the contender uses, imported by ``load_fbgemm``."""

    version: str
    tbe_class: Any  # SplitTableBatchedEmbeddingBagsCodegen
    location_host: Any  # EmbeddingLocation.HOST
    compute_cpu: Any  # ComputeDevice.CPU
    rowwise_adagrad: Any  # EmbOptimType.EXACT_ROWWISE_ADAGRAD
    pooling_sum: Any  # PoolingMode.SUM
    pooling_mean: Any  # PoolingMode.MEAN


def load_fbgemm() -> tuple[FbgemmApi | None, str]:
    """(the API, "") when ``fbgemm_gpu`` imports and registers its CPU operators, else
    (None, why not)."""
    try:
        import fbgemm_gpu
        from fbgemm_gpu.split_embedding_configs import EmbOptimType
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import (
            EmbeddingLocation,
            PoolingMode,
        )
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
            ComputeDevice,
            SplitTableBatchedEmbeddingBagsCodegen,
        )
    except ImportError as e:
        return None, f"fbgemm_gpu is not installed (pip install 'widedeep[bench]'): {e}"
    except (OSError, RuntimeError) as e:  # a build that does not match the installed torch
        return None, f"fbgemm_gpu does not load with torch {torch.__version__}: {e}"
    api = FbgemmApi(
        version=str(getattr(fbgemm_gpu, "__version__", "unknown")),
        tbe_class=SplitTableBatchedEmbeddingBagsCodegen,
        location_host=EmbeddingLocation.HOST,
        compute_cpu=ComputeDevice.CPU,
        rowwise_adagrad=EmbOptimType.EXACT_ROWWISE_ADAGRAD,
        pooling_sum=PoolingMode.SUM,
        pooling_mean=PoolingMode.MEAN,
    )
    return api, ""


def build_fbgemm_tbe(
    api: FbgemmApi,
    tables: Sequence[TableConfig],
    opt: OptimizerConfig,
    weights: Sequence[torch.Tensor],
) -> torch.nn.Module:
    """FBGEMM's CPU table-batched embedding bag with exact row-wise Adagrad, initialised with
    ``weights`` (one ``[rows, dim]`` tensor per table)."""
    if opt.kind != "rowwise_adagrad":
        raise ValueError(f"the FBGEMM contender runs rowwise_adagrad only, got {opt.kind!r}")
    poolings = {t.pooling for t in tables}
    if len(poolings) != 1:
        raise ValueError(f"FBGEMM pools every table of one module alike; got poolings {sorted(poolings)}")
    tbe = api.tbe_class(
        [(t.num_rows, t.dim, api.location_host, api.compute_cpu) for t in tables],
        optimizer=api.rowwise_adagrad,
        learning_rate=opt.lr,
        eps=opt.eps,
        weight_decay=0.0,
        pooling_mode=api.pooling_mean if poolings == {"mean"} else api.pooling_sum,
    )
    with torch.no_grad():
        for dst, src in zip(tbe.split_embedding_weights(), weights, strict=True):
            dst.copy_(src)
        for momentum, *_ in tbe.split_optimizer_states():
            momentum.fill_(opt.initial_accumulator)
    return tbe


@dataclass(frozen=True)
class StepCheck:
    """Largest differences from the reference after one step, each ``|a - b| / (1 + |b|)``
    (absolute for small values, relative for large ones such as a hot row's Adagrad sum)."""

    forward: float
    weights: float
    state: float
    untouched_rows_changed: int

    def ok(self, atol: float) -> bool:
        return (
            all(math.isfinite(v) and v <= atol for v in (self.forward, self.weights, self.state))
            and self.untouched_rows_changed == 0
        )


def check_step(
    step: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor],
    weights_after: Callable[[], Sequence[torch.Tensor]],
    state_after: Callable[[], Sequence[torch.Tensor]],
    tables: Sequence[TableConfig],
    opt: OptimizerConfig,
    weights_before: Sequence[torch.Tensor],
    indices: torch.Tensor,
    offsets: torch.Tensor,
    grad: torch.Tensor,
) -> StepCheck:
    """Run one training step of a contender (``step(indices, offsets, grad)`` returns the
    forward output and applies the update) and compare it with the reference.

    ``weights_before`` are the contender's weights before the step (one ``[rows, dim]`` tensor
    per table, not aliased with the contender's); ``weights_after`` / ``state_after`` read its
    weights and per-row Adagrad state after it. Only the rows the batch touches are compared
    with the reference update; every other row must be left exactly as it was.
    """
    with torch.no_grad():
        expected = reference_forward(weights_before, tables, indices, offsets)
    out = step(indices, offsets, grad)
    fwd_err = _max_err(out.detach(), expected)
    per_table = reference_row_grads(weights_before, tables, indices, offsets, None, grad)
    w_err = s_err = 0.0
    changed = 0
    for (rows, g), before, after, state in zip(per_table, weights_before, weights_after(), state_after(), strict=True):
        want_w = before[rows].clone()
        want_state = {"adagrad_sum": torch.full((rows.numel(),), float(opt.initial_accumulator), device=rows.device)}
        reference_update(opt, want_w, want_state, torch.arange(rows.numel(), device=rows.device), g)
        w_err = max(w_err, _max_err(after[rows], want_w))
        s_err = max(s_err, _max_err(state.reshape(-1)[rows], want_state["adagrad_sum"]))
        moved = torch.nonzero((after != before).any(dim=1)).flatten()
        changed += int((~torch.isin(moved, rows)).sum())
    return StepCheck(fwd_err, w_err, s_err, changed)


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    if not a.numel():
        return 0.0
    b = b.float()
    return float(((a.float() - b).abs() / (1 + b.abs())).max())
