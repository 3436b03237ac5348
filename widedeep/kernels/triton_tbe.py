"""The Triton kernels of the table-batched embedding bag (CUDA; CPU only under ``TRITON_INTERPRET=1``).

Shape letters: ``T`` tables, ``B`` bags per table, ``N`` ids, ``U`` distinct rows, ``D`` dim.

Forward (``_tbe_forward_kernel``): one program per (table, bag). It walks the bag's ids
``BLOCK_N`` at a time, gathers ``[BLOCK_N, BLOCK_D]`` rows of the packed weights (any dtype),
accumulates in fp32, scales for mean pooling and writes its ``D`` columns of the ``[B, sum D]``
fp32 output. In training it also writes, per id, its *global* row (table row offset + id)
and its bag, which backward needs: that costs ``2 * N * 8`` bytes, far less than re-deriving
them from the offsets.

Backward + update (``_tbe_backward_update_kernel``). How duplicates are coalesced: by
SORTING, not atomics. The global rows are sorted (``torch.sort``, a CUB radix sort on CUDA),
equal rows form segments (``unique_consecutive``), and ONE program owns each distinct row:
it sums the gradient of every (bag, weight) in its segment in fp32 registers, then applies
the optimizer to that row and writes it back. Why not ``atomic_add``:

* the optimizers are not linear in the gradient (row-wise Adagrad needs the full row sum
  before it can scale; FTRL's ``sigma`` needs the summed ``g``), so atomics would need a
  second pass over a materialised ``[U, D]`` gradient; sorting lets the update be fused;
* atomics make float sums order-dependent, so data-parallel replicas would drift apart;
  the sort is stable, so this kernel is deterministic;
* each row is read and written exactly once per step: the minimum traffic.

The cost is the sort (``N`` keys) and one device-to-host sync to learn ``U``. A very hot row
(Zipf head) is summed by a single program, which bounds the tail latency by that row's count;
FBGEMM splits such segments, which we leave for later.

With a process group the same kernel runs in a coalesce-only mode (writes the summed
``[U, D]`` gradients instead of updating), the pairs are exchanged, and an apply-only mode
updates from the exchanged gradients.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

_OPT_CODE = {"sgd": 0, "rowwise_adagrad": 1, "ftrl": 2}


@triton.jit
def _tbe_forward_kernel(
    W,  # pointer to the packed weights (flat; fp32 / fp16 / bf16)
    IDS,  # pointer to the ids, int64 [N], local to their table
    OFFSETS,  # pointer to the bag boundaries, int64 [T*B + 1]
    PSW,  # pointer to the per-sample weights, fp32 [N] (unused unless HAS_PSW)
    ELEM_OFF,  # pointer to each table's first element in W, int64 [T]
    ROW_OFF,  # pointer to each table's first global row, int64 [T]
    DIMS,  # pointer to each table's dim, int64 [T]
    COL_OFF,  # pointer to each table's first output column, int64 [T]
    MEAN,  # pointer to each table's pooling flag (1 = mean), int64 [T]
    OUT,  # pointer to the output, fp32 [B, out_stride]
    KEYS,  # pointer to the per-id global row, int64 [N] (written if SAVE)
    BAG_OF_ID,  # pointer to the per-id bag (t*B + b), int64 [N] (written if SAVE)
    B,  # bags per table
    out_stride,  # row stride of OUT (= sum of dims)
    HAS_PSW: tl.constexpr,
    SAVE: tl.constexpr,
    BLOCK_N: tl.constexpr,  # ids gathered per iteration
    BLOCK_D: tl.constexpr,  # >= the largest dim, a power of two
):
    # Map the program id to the (table, bag) it pools.
    pid = tl.program_id(0).to(tl.int64)
    t = pid // B
    b = pid % B
    start = tl.load(OFFSETS + pid)
    end = tl.load(OFFSETS + pid + 1)
    D = tl.load(DIMS + t)
    elem0 = tl.load(ELEM_OFF + t)
    row0 = tl.load(ROW_OFF + t)
    d = tl.arange(0, BLOCK_D)
    dmask = d < D
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for j in range(start, end, BLOCK_N):
        n = j + tl.arange(0, BLOCK_N)
        nmask = n < end
        ids = tl.load(IDS + n, mask=nmask, other=0)
        rows = tl.load(W + elem0 + ids[:, None] * D + d[None, :], mask=nmask[:, None] & dmask[None, :], other=0.0).to(
            tl.float32
        )
        if HAS_PSW:
            rows = rows * tl.load(PSW + n, mask=nmask, other=0.0)[:, None]
        acc += tl.sum(rows, axis=0)
        if SAVE:
            tl.store(KEYS + n, row0 + ids, mask=nmask)
            tl.store(BAG_OF_ID + n, tl.zeros((BLOCK_N,), dtype=tl.int64) + pid, mask=nmask)
    if tl.load(MEAN + t) != 0:
        acc = acc / tl.maximum(end - start, 1).to(tl.float32)
    col = tl.load(COL_OFF + t)
    tl.store(OUT + b * out_stride + col + d, acc, mask=dmask)


@triton.jit
def _tbe_backward_update_kernel(
    W,  # pointer to the packed weights (flat), updated in place if APPLY
    M,  # pointer to row-wise Adagrad's accumulator, fp32 [total rows] (OPT == 1)
    Z,  # pointer to FTRL's z, fp32, laid out like W (OPT == 2)
    NACC,  # pointer to FTRL's n, fp32, laid out like W (OPT == 2)
    UNIQ,  # pointer to the distinct global rows, int64 [U], sorted
    TABLE_OF_U,  # pointer to each distinct row's table, int64 [U]
    SEG,  # pointer to segment boundaries into PERM, int64 [U + 1]
    PERM,  # pointer to the id order sorted by row, int64 [n]
    BAG_OF_ID,  # pointer to each id's bag (t*B + b), int64 [N] (FROM_BAGS)
    OFFSETS,  # pointer to the bag boundaries, int64 [T*B + 1] (mean pooling)
    PSW,  # pointer to the per-sample weights, fp32 [N] (HAS_PSW)
    G,  # pointer to the gradient source: grad_out [B, g_stride] (FROM_BAGS) or grads [n, g_stride]
    GRAD_OUT,  # pointer to the summed gradients, fp32 [U, BLOCK_D] (written unless APPLY)
    ELEM_OFF,  # pointer to each table's first element in W, int64 [T]
    ROW_OFF,  # pointer to each table's first global row, int64 [T]
    DIMS,  # pointer to each table's dim, int64 [T]
    COL_OFF,  # pointer to each table's first output column, int64 [T]
    MEAN,  # pointer to each table's pooling flag (1 = mean), int64 [T]
    B,  # bags per table
    g_stride,  # row stride of G
    lr,
    eps,
    l1,
    l2,
    beta,
    lr_power,
    OPT: tl.constexpr,  # 0 sgd, 1 rowwise_adagrad, 2 ftrl
    SQRT_POWER: tl.constexpr,  # lr_power == -0.5: use sqrt
    FROM_BAGS: tl.constexpr,  # gradient rows come from grad_out via each id's bag
    HAS_PSW: tl.constexpr,
    APPLY: tl.constexpr,  # update the row in place (else write the summed gradient)
    BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr,
):
    # Map the program id to the distinct row it owns: no other program touches this row.
    u = tl.program_id(0).to(tl.int64)
    key = tl.load(UNIQ + u)
    t = tl.load(TABLE_OF_U + u)
    D = tl.load(DIMS + t)
    d = tl.arange(0, BLOCK_D)
    dmask = d < D
    s = tl.load(SEG + u)
    e = tl.load(SEG + u + 1)
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    for j in range(s, e, BLOCK_N):
        n = j + tl.arange(0, BLOCK_N)
        nmask = n < e
        src = tl.load(PERM + n, mask=nmask, other=0)
        if FROM_BAGS:
            bag = tl.load(BAG_OF_ID + src, mask=nmask, other=0)
            col = tl.load(COL_OFF + t)
            grow = bag % B
            scale = tl.where(nmask, 1.0, 0.0)
            if tl.load(MEAN + t) != 0:
                length = tl.load(OFFSETS + bag + 1, mask=nmask, other=1) - tl.load(OFFSETS + bag, mask=nmask, other=0)
                scale = scale / tl.maximum(length, 1).to(tl.float32)
            if HAS_PSW:
                scale = scale * tl.load(PSW + src, mask=nmask, other=0.0)
        else:
            col = 0
            grow = src
            scale = tl.where(nmask, 1.0, 0.0)
        g = tl.load(G + grow[:, None] * g_stride + col + d[None, :], mask=nmask[:, None] & dmask[None, :], other=0.0)
        acc += tl.sum(g.to(tl.float32) * scale[:, None], axis=0)
    if not APPLY:
        tl.store(GRAD_OUT + u * BLOCK_D + d, acc, mask=dmask)
    else:
        elem = tl.load(ELEM_OFF + t) + (key - tl.load(ROW_OFF + t)) * D
        wptr = W + elem + d
        w = tl.load(wptr, mask=dmask, other=0.0).to(tl.float32)
        if OPT == 0:
            w = w - lr * acc
        elif OPT == 1:
            m = tl.load(M + key) + tl.sum(acc * acc, axis=0) / D.to(tl.float32)
            tl.store(M + key, m)
            w = w - lr * acc / (tl.sqrt(m) + eps)
        else:
            n_old = tl.load(NACC + elem + d, mask=dmask, other=0.0)
            z = tl.load(Z + elem + d, mask=dmask, other=0.0)
            n_new = n_old + acc * acc
            if SQRT_POWER:
                p_new = tl.sqrt(n_new)
                p_old = tl.sqrt(n_old)
            else:
                p_new = tl.exp2(-lr_power * tl.log2(n_new))
                p_old = tl.where(n_old > 0, tl.exp2(-lr_power * tl.log2(n_old)), 0.0)
                p_new = tl.where(n_new > 0, p_new, 0.0)
            z = z + acc - (p_new - p_old) / lr * w
            denom = (beta + p_new) / lr + l2
            sign = tl.where(z > 0, 1.0, tl.where(z < 0, -1.0, 0.0))
            w = tl.where(tl.abs(z) <= l1, 0.0, -(z - sign * l1) / denom)
            tl.store(NACC + elem + d, n_new, mask=dmask)
            tl.store(Z + elem + d, z, mask=dmask)
        tl.store(wptr, w.to(W.dtype.element_ty), mask=dmask)


class _Meta:
    """Per-module int64 tables of the layout, on the weights' device (built once, cached)."""

    def __init__(self, m) -> None:
        lay = m.layout
        dev = m.weight.device
        T = lay.num_tables

        def col(values: list[int]) -> torch.Tensor:
            return torch.tensor(values, dtype=torch.int64, device=dev)

        self.elem_off = col(lay.elem_offsets[:T])
        self.row_off = col(lay.row_offsets[:T])
        self.row_bounds = col(lay.row_offsets)
        self.dims = col([t.dim for t in lay.tables])
        self.col_off = col(lay.col_offsets[:T])
        self.mean = col([1 if t.pooling == "mean" else 0 for t in lay.tables])
        self.block_d = triton.next_power_of_2(max(t.dim for t in lay.tables))


def _meta(m) -> _Meta:
    meta = getattr(m, "_triton_meta", None)
    if meta is None or meta.dims.device != m.weight.device:
        meta = _Meta(m)
        m._triton_meta = meta
    return meta


def _block_n(avg_len: float, block_d: int) -> int:
    # Enough ids in flight to hide latency on long bags, without wasting lanes on one-hot bags.
    n = triton.next_power_of_2(max(2, int(avg_len)))
    return max(2, min(n, 32, max(2, 4096 // block_d)))


def _num_warps(block_n: int, block_d: int) -> int:
    # One warp per 256 elements of the [BLOCK_N, BLOCK_D] tile: one-hot D=16 bags get one warp.
    return max(1, min(8, (block_n * block_d) // 256))


class TritonImpl:
    """The Triton kernels behind the module interface (see ``module.py``)."""

    @staticmethod
    def forward(m, indices, offsets, psw, B, save: bool, bag_len: int = 0):
        """Pooled bags; with ``save`` (training) also each id's global row and bag for backward.
        ``bag_len`` (the checked length of every bag, see ``layout.check_inputs_info``) is unused."""
        meta = _meta(m)
        T = m.layout.num_tables
        N = indices.numel()
        out = torch.empty((B, m.layout.total_dim), dtype=torch.float32, device=indices.device)
        keys = torch.empty(N if save else 0, dtype=torch.int64, device=indices.device)
        bag_of_id = torch.empty_like(keys)
        if B > 0:
            block_n = _block_n(N / max(T * B, 1), meta.block_d)
            _tbe_forward_kernel[(T * B,)](
                m.weight.data, indices, offsets, psw if psw is not None else indices,
                meta.elem_off, meta.row_off, meta.dims, meta.col_off, meta.mean,
                out, keys if save else indices, bag_of_id if save else indices,
                B, m.layout.total_dim,
                HAS_PSW=psw is not None, SAVE=save,
                BLOCK_N=block_n, BLOCK_D=meta.block_d, num_warps=_num_warps(block_n, meta.block_d),
            )  # fmt: skip
        return out, (keys, bag_of_id, offsets, psw, B)

    @staticmethod
    def _segments(m, keys):
        sorted_keys, perm = torch.sort(keys, stable=True)
        uniq, counts = torch.unique_consecutive(sorted_keys, return_counts=True)
        seg = torch.zeros(uniq.numel() + 1, dtype=torch.int64, device=keys.device)
        torch.cumsum(counts, 0, out=seg[1:])
        table_of_u = torch.searchsorted(_meta(m).row_bounds, uniq, right=True) - 1
        return uniq, table_of_u, seg, perm

    @classmethod
    def _launch(cls, m, uniq, table_of_u, seg, perm, bag_of_id, offsets, psw, G, g_stride, B, *, from_bags, apply):
        meta = _meta(m)
        opt = m.optimizer
        state = m.optimizer_state()
        dummy = m.weight.data
        U = uniq.numel()
        grads = None if apply else torch.empty((U, meta.block_d), dtype=torch.float32, device=uniq.device)
        if U == 0:
            return grads
        block_n = _block_n(perm.numel() / U, meta.block_d)
        _tbe_backward_update_kernel[(U,)](
            m.weight.data,
            state.get("adagrad_sum", dummy), state.get("ftrl_z", dummy), state.get("ftrl_n", dummy),
            uniq, table_of_u, seg, perm,
            bag_of_id, offsets, psw if psw is not None else dummy,
            G, grads if grads is not None else dummy,
            meta.elem_off, meta.row_off, meta.dims, meta.col_off, meta.mean,
            B, g_stride,
            opt.lr, opt.eps, opt.l1, opt.l2, opt.beta, opt.lr_power,
            OPT=_OPT_CODE[opt.kind], SQRT_POWER=opt.lr_power == -0.5,
            FROM_BAGS=from_bags, HAS_PSW=psw is not None, APPLY=apply,
            BLOCK_N=block_n, BLOCK_D=meta.block_d, num_warps=_num_warps(block_n, meta.block_d),
        )  # fmt: skip
        return grads

    @classmethod
    def backward_update(cls, m, saved, grad_out):
        keys, bag_of_id, offsets, psw, B = saved
        if keys.numel() == 0:
            return
        uniq, table_of_u, seg, perm = cls._segments(m, keys)
        g = grad_out.contiguous()
        cls._launch(
            m, uniq, table_of_u, seg, perm, bag_of_id, offsets, psw, g, g.stride(0), B, from_bags=True, apply=True
        )

    @classmethod
    def coalesce(cls, m, saved, grad_out):
        """Per run: (run-global distinct rows, summed fp32 grads ``[U_r, D_r]``)."""
        keys, bag_of_id, offsets, psw, B = saved
        dev = grad_out.device
        if keys.numel() == 0:
            return [
                (torch.empty(0, dtype=torch.int64, device=dev), torch.zeros((0, r.dim), device=dev))
                for r in m.layout.runs
            ]
        uniq, table_of_u, seg, perm = cls._segments(m, keys)
        g = grad_out.contiguous()
        grads = cls._launch(
            m, uniq, table_of_u, seg, perm, bag_of_id, offsets, psw, g, g.stride(0), B, from_bags=True, apply=False
        )
        starts = torch.tensor([r.row_start for r in m.layout.runs] + [m.layout.total_rows], device=dev)
        cut = torch.searchsorted(uniq, starts).tolist()
        return [
            (uniq[cut[i] : cut[i + 1]] - run.row_start, grads[cut[i] : cut[i + 1], : run.dim])
            for i, run in enumerate(m.layout.runs)
        ]

    @classmethod
    def apply(cls, m, r, rows, grads):
        run = m.layout.runs[r]
        U = rows.numel()
        if U == 0:
            return
        uniq = rows + run.row_start
        table_of_u = torch.searchsorted(_meta(m).row_bounds, uniq, right=True) - 1
        ar = torch.arange(U + 1, device=rows.device)
        g = grads.float().contiguous()
        cls._launch(m, uniq, table_of_u, ar, ar[:U], ar, ar, None, g, g.stride(0), 1, from_bags=False, apply=True)
