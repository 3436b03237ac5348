"""``TableBatchedEmbeddingBag``: every table of one side in one weight tensor, one call per batch,
with the sparse optimizer fused into backward (FBGEMM's design, in plain PyTorch + Triton).

Shape letters: ``T`` tables, ``B`` bags per table (the batch size), ``N`` ids, ``D`` dim.

Why the optimizer lives inside backward: a recommender's tables have millions of rows and a
batch touches a few thousand, so a dense ``[rows, D]`` gradient (what ``torch.optim`` needs)
would cost far more than the step itself. Backward instead coalesces the batch's duplicate
ids and updates just those rows in place. Consequently the weights are an
``nn.Parameter(requires_grad=False)`` (DDP and dense optimizers ignore them) and the update
happens only when ``self.training`` and grad mode are on; ``eval()``/``no_grad`` never update.

Backends (``backend=``): ``"reference"`` (``reference.py``: per-table, dense-gradient, the
gold standard), ``"vectorized"`` (``vectorized.py``: the fast PyTorch path, the CPU default),
``"triton"`` (``triton_tbe.py``: the CUDA kernel; on CPU tensors only under
``TRITON_INTERPRET=1``), ``"auto"`` (triton on CUDA, vectorized elsewhere).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from widedeep.errors import ConfigError
from widedeep.kernels import reference, vectorized
from widedeep.kernels.config import OptimizerConfig, TableConfig
from widedeep.kernels.distributed import exchange_coalesced
from widedeep.kernels.layout import TableLayout, check_id_ranges, check_inputs_info
from widedeep.kernels.traffic import Traffic

_BACKENDS = ("auto", "reference", "vectorized", "triton")
_HALF = (torch.float16, torch.bfloat16)


class TableBatchedEmbeddingBag(nn.Module):
    """Pooled embeddings of many tables in one call; the optimizer step is fused into backward.

    Args:
        tables: the tables, in output-column order.
        optimizer: the sparse optimizer applied in backward.
        device: where weights and state live (default CPU).
        dtype: weight dtype: float32; float16/bfloat16 only with the triton or reference
            backend (state and accumulation stay fp32).
        backend: ``"auto"``, ``"reference"``, ``"vectorized"`` or ``"triton"`` (see module doc).
        validate: check input values (id ranges, offsets) on every call; see
            ``layout.check_inputs_info`` for the cost. Shapes and dtypes are always checked.
        seed: seed of the weight init (table ``t`` uses ``seed + t``; init runs on CPU so every
            device and every data-parallel replica starts from the same weights).

    Example::

        tbe = TableBatchedEmbeddingBag(
            [TableConfig("user", 1000, 16), TableConfig("tags", 50, 16, pooling="mean")],
            OptimizerConfig("rowwise_adagrad", lr=0.05),
        )
        out = tbe(indices, offsets)   # [B, 32]
        loss_fn(out).backward()       # rows of this batch updated in place
    """

    def __init__(
        self,
        tables: Sequence[TableConfig],
        optimizer: OptimizerConfig,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
        backend: str = "auto",
        validate: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.layout = TableLayout(list(tables))
        self.optimizer = optimizer
        self.validate = validate
        self._pg: dist.ProcessGroup | None = None
        self._traffic: Traffic | None = None
        dev = torch.device(device) if device is not None else torch.device("cpu")
        if backend not in _BACKENDS:
            raise ConfigError(f"backend: expected one of {_BACKENDS}, got {backend!r}")
        if backend == "auto":
            backend = "triton" if dev.type == "cuda" else "vectorized"
        if dtype not in (torch.float32, *_HALF):
            raise ConfigError(f"dtype: expected torch.float32, float16 or bfloat16, got {dtype}")
        if dtype in _HALF and backend == "vectorized":
            raise ConfigError(
                f"dtype {dtype} needs backend 'triton' (CUDA) or 'reference'; the vectorized path is fp32 only"
            )
        if backend == "triton" and dev.type != "cuda" and os.environ.get("TRITON_INTERPRET") != "1":
            # NOTE: TRITON_INTERPRET is Triton's own switch, read here only to fail clearly.
            raise ConfigError(
                f"backend 'triton' needs a CUDA device (got {dev}); on CPU it runs only under TRITON_INTERPRET=1"
            )
        self.backend = backend
        self._impl = _load_impl(backend)

        flat = torch.empty(self.layout.total_elems, dtype=torch.float32)
        for t, tc in enumerate(self.layout.tables):
            view = flat[self.layout.elem_offsets[t] : self.layout.elem_offsets[t + 1]]
            gen = torch.Generator().manual_seed(seed + t)
            if tc.init == "zeros":
                view.zero_()
            elif tc.init == "normal":
                view.normal_(0.0, tc.init_scale, generator=gen)
            else:
                view.uniform_(-tc.init_scale, tc.init_scale, generator=gen)
        self.weight = nn.Parameter(flat.to(device=dev, dtype=dtype), requires_grad=False)
        acc = float(optimizer.initial_accumulator)
        if optimizer.kind == "rowwise_adagrad":
            self.register_buffer("adagrad_sum", torch.full((self.layout.total_rows,), acc, device=dev))
        elif optimizer.kind == "ftrl":
            self.register_buffer("ftrl_z", torch.zeros(self.layout.total_elems, device=dev))
            self.register_buffer("ftrl_n", torch.full((self.layout.total_elems,), acc, device=dev))

    # ------------------------------------------------------------------ public API
    @property
    def tables(self) -> list[TableConfig]:
        return list(self.layout.tables)

    @property
    def total_dim(self) -> int:
        """Width of the output: the sum of the tables' dims."""
        return self.layout.total_dim

    def table_weight(self, t: int | str) -> torch.Tensor:
        """Table ``t`` (index or name) as a ``[num_rows, dim]`` view into the packed weights."""
        i = self.layout.table_index(t)
        tc = self.layout.tables[i]
        lo = self.layout.elem_offsets[i]
        return self.weight.data[lo : lo + tc.num_rows * tc.dim].view(tc.num_rows, tc.dim)

    def set_process_group(self, pg: dist.ProcessGroup | None, traffic: Traffic | None = None) -> None:
        """Exchange coalesced gradients over ``pg`` in every backward (``None``: local only).

        Every replica must start from identical weights (same ``seed``) and call backward the
        same number of times; grads are averaged over the world size, like DDP. ``traffic``
        (optional) counts the bytes the exchange moves (``traffic.Traffic``).
        """
        self._pg = pg
        self._traffic = traffic

    def extra_repr(self) -> str:
        return (
            f"tables={self.layout.num_tables}, rows={self.layout.total_rows}, dim={self.layout.total_dim}, "
            f"optimizer={self.optimizer.kind}, backend={self.backend!r}, dtype={self.weight.dtype}"
        )

    def forward(
        self,
        indices: torch.Tensor,
        offsets: torch.Tensor,
        per_sample_weights: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Pooled bags ``[B, sum(dims)]`` fp32 of jagged, table-major input (``offsets``: ``T*B+1``).

        ``per_sample_weights`` scale ids; they receive no gradient.
        """
        # The vectorized CPU path checks ids itself, only where its gather does not (see
        # ``_VectorizedImpl.forward``): no separate pass over every id.
        own_check = self.backend == "vectorized" and self.weight.device.type == "cpu"
        B, bag_len = check_inputs_info(
            self.layout,
            indices,
            offsets,
            per_sample_weights,
            self.weight.device,
            check_values=self.validate,
            check_ids=not own_check,
        )
        if self.training and torch.is_grad_enabled():
            anchor = torch.empty(0, device=self.weight.device, requires_grad=True)
            return _FusedUpdate.apply(anchor, self, indices, offsets, per_sample_weights, B, bag_len)
        with torch.no_grad():
            out, _ = self._impl.forward(self, indices, offsets, per_sample_weights, B, False, bag_len)
        return out

    # ------------------------------------------------------------------ internals
    def optimizer_state(self) -> dict[str, torch.Tensor]:
        """The flat fp32 state buffers by name (empty for sgd)."""
        return {k: v for k, v in self.named_buffers(recurse=False) if k in ("adagrad_sum", "ftrl_z", "ftrl_n")}

    def run_state(self, r: int) -> dict[str, torch.Tensor]:
        """Run ``r``'s state: ``adagrad_sum`` ``[rows]``; ``ftrl_z``/``ftrl_n`` ``[rows, D]`` views."""
        run = self.layout.runs[r]
        out = {}
        for k, v in self.optimizer_state().items():
            if k == "adagrad_sum":
                out[k] = v[run.row_start : run.row_start + run.num_rows]
            else:
                out[k] = vectorized.run_weight(self.layout, v, run)
        return out

    def _backward(self, saved: Any, grad_out: torch.Tensor) -> None:
        if self._pg is None or dist.get_world_size(self._pg) == 1:
            self._impl.backward_update(self, saved, grad_out)
            return
        for r, (rows, grads) in enumerate(self._impl.coalesce(self, saved, grad_out)):
            rows, grads = exchange_coalesced(rows, grads, self._pg, self._traffic)
            self._impl.apply(self, r, rows, grads)


class _FusedUpdate(torch.autograd.Function):
    """Forward: pooled bags. Backward: coalesce + in-place optimizer step; returns no gradients.

    ``anchor`` is an empty tensor that requires grad, so autograd calls ``backward`` even
    though the weights themselves do not require grad (FBGEMM's placeholder trick).
    """

    @staticmethod
    def forward(ctx, anchor, module, indices, offsets, per_sample_weights, B, bag_len):  # type: ignore[override]
        out, saved = module._impl.forward(module, indices, offsets, per_sample_weights, B, True, bag_len)
        ctx.module = module
        ctx.saved = saved
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        with torch.no_grad():
            ctx.module._backward(ctx.saved, grad_out.contiguous())
        ctx.saved = None
        return None, None, None, None, None, None, None


# ---------------------------------------------------------------------- backends
class _ReferenceImpl:
    """Adapter: the per-table reference behind the module interface."""

    @staticmethod
    def forward(m: TableBatchedEmbeddingBag, indices, offsets, psw, B, save: bool, bag_len: int = 0):
        weights = [m.table_weight(t) for t in range(m.layout.num_tables)]
        out = reference.reference_forward(weights, m.layout.tables, indices, offsets, psw)
        return out, (indices, offsets, psw, B)

    @staticmethod
    def coalesce(m: TableBatchedEmbeddingBag, saved, grad_out):
        indices, offsets, psw, _ = saved
        weights = [m.table_weight(t) for t in range(m.layout.num_tables)]
        per_table = reference.reference_row_grads(weights, m.layout.tables, indices, offsets, psw, grad_out)
        out = []
        for run in m.layout.runs:
            rows = [per_table[t][0] + (m.layout.row_offsets[t] - run.row_start) for t in range(run.first, run.last)]
            grads = [per_table[t][1] for t in range(run.first, run.last)]
            out.append((torch.cat(rows), torch.cat(grads)))
        return out

    @staticmethod
    def apply(m: TableBatchedEmbeddingBag, r: int, rows, grads):
        w = vectorized.run_weight(m.layout, m.weight.data, m.layout.runs[r])
        reference.reference_update(m.optimizer, w, m.run_state(r), rows, grads)

    @classmethod
    def backward_update(cls, m: TableBatchedEmbeddingBag, saved, grad_out):
        for r, (rows, grads) in enumerate(cls.coalesce(m, saved, grad_out)):
            cls.apply(m, r, rows, grads)


class _VectorizedImpl:
    """Adapter: the vectorized PyTorch path behind the module interface."""

    @staticmethod
    def forward(m: TableBatchedEmbeddingBag, indices, offsets, psw, B, save: bool, bag_len: int = 0):
        """``bag_len``: the checked length of every bag (0: unknown, see ``check_inputs_info``).

        On CPU, with ``m.validate``, the ids are checked here instead of in ``check_inputs_info``:
        ATen's CPU ``embedding_bag`` refuses any id outside the weight it reads (inside the
        gather, free), and where that weight is exactly one table (``gather_checks_ids``) that
        is the table's own range check; the other runs get ``check_id_ranges``. A refused id
        is then named by ``check_id_ranges`` like everywhere else (KernelInputError). Measured
        on multihot (26 x 82k ids, one thread): the separate pass cost 4 ms of a 40 ms forward.
        """
        runs = vectorized.split_runs(m.layout, indices, offsets, psw, B, bag_len)
        if m.validate and m.weight.device.type == "cpu":
            for run, ri in zip(m.layout.runs, runs, strict=True):
                if not vectorized.gather_checks_ids(run, ri):
                    check_id_ranges(m.layout, indices, offsets, B, run.first, run.last, fixed=ri.bag_len > 0)
            try:
                out = vectorized.forward(m.layout, m.weight.data, runs, B)
            except RuntimeError:
                check_id_ranges(m.layout, indices, offsets, B)  # raises KernelInputError naming the id
                raise
        else:
            out = vectorized.forward(m.layout, m.weight.data, runs, B)
        return out, (runs, B)

    @staticmethod
    def coalesce(m: TableBatchedEmbeddingBag, saved, grad_out):
        runs, B = saved
        return vectorized.coalesce(m.layout, runs, grad_out, B)

    @staticmethod
    def apply(m: TableBatchedEmbeddingBag, r: int, rows, grads):
        w = vectorized.run_weight(m.layout, m.weight.data, m.layout.runs[r])
        vectorized.update(m.optimizer, w, m.run_state(r), rows, grads)

    @staticmethod
    def backward_update(m: TableBatchedEmbeddingBag, saved, grad_out):
        runs, B = saved
        states = [m.run_state(r) for r in range(len(m.layout.runs))]
        vectorized.fused_backward_update(m.layout, m.optimizer, m.weight.data, states, runs, grad_out, B)


def _load_impl(backend: str) -> Any:
    if backend == "reference":
        return _ReferenceImpl
    if backend == "vectorized":
        return _VectorizedImpl
    try:
        from widedeep.kernels import triton_tbe
    except ImportError as e:  # triton missing
        raise ConfigError(f"backend 'triton' needs the triton package: {e}") from e
    return triton_tbe.TritonImpl
