"""Full-size checks of the kernel on a CUDA device (``gpu`` marker: skipped cleanly without one).

Run them with ``tests/gpu/run.sh OUTDIR`` (also runs both benchmark configs)."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.batches import random_batch, train_side_by_side
from widedeep.kernels import OptimizerConfig, TableBatchedEmbeddingBag, TableConfig

pytestmark = pytest.mark.gpu

OPTS = [
    OptimizerConfig("sgd", lr=0.3),
    OptimizerConfig("rowwise_adagrad", lr=0.2, initial_accumulator=0.1),
    OptimizerConfig("ftrl", lr=0.5, l1=0.02, l2=0.1, initial_accumulator=0.05),
]
TABLES = [
    TableConfig("u", 100_000, 128),
    TableConfig("tags", 5_000, 128, pooling="mean"),
    TableConfig("i", 30_001, 128),
    TableConfig("wide", 200_000, 1),
    TableConfig("odd", 777, 48, pooling="mean"),
]


@pytest.mark.parametrize("opt", OPTS, ids=lambda o: o.kind)
@pytest.mark.parametrize("backend", ["triton", "vectorized"])
def test_cuda_backends_match_reference(opt, backend):
    train_side_by_side(
        TABLES, opt, backend, B=2048, steps=4, seed=1, weighted=True, max_len=30, device="cuda", atol=2e-5, rtol=2e-5
    )


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("opt", OPTS[1:], ids=lambda o: o.kind)
def test_half_weights_fp32_accumulation(dtype, opt):
    train_side_by_side(
        TABLES, opt, "triton", B=1024, steps=3, seed=2, max_len=20, dtype=dtype, device="cuda", atol=2e-2, rtol=2e-2
    )


@pytest.mark.parametrize("opt", OPTS, ids=lambda o: o.kind)
def test_coalesce_and_apply_modes_match_vectorized(opt):
    tri = TableBatchedEmbeddingBag(TABLES, opt, backend="triton", device="cuda", seed=3)
    vec = TableBatchedEmbeddingBag(TABLES, opt, backend="vectorized", device="cuda", seed=3)
    idx, off, w = random_batch(TABLES, 512, seed=4, max_len=16, weighted=True, device="cuda")
    _, s_tri = tri._impl.forward(tri, idx, off, w, 512, True)
    _, s_vec = vec._impl.forward(vec, idx, off, w, 512, True)
    g = torch.randn(512, tri.total_dim, device="cuda")
    c_tri, c_vec = tri._impl.coalesce(tri, s_tri, g), vec._impl.coalesce(vec, s_vec, g)
    for (r1, g1), (r2, g2) in zip(c_tri, c_vec, strict=True):
        assert torch.equal(r1, r2)
        torch.testing.assert_close(g1, g2, atol=1e-5, rtol=1e-5)
    for r, (rows, grads) in enumerate(c_vec):
        tri._impl.apply(tri, r, rows, grads.clone())
        vec._impl.apply(vec, r, rows, grads.clone())
    torch.testing.assert_close(tri.weight, vec.weight, atol=1e-5, rtol=1e-5)


def test_backward_is_deterministic():
    """Sort-based coalescing: two identical runs give bit-identical weights (no atomics)."""
    finals = []
    for _ in range(2):
        tbe = TableBatchedEmbeddingBag(TABLES, OPTS[1], device="cuda", seed=5)
        for step in range(3):
            idx, off, w = random_batch(TABLES, 4096, seed=step, max_len=30, weighted=True, device="cuda")
            out = tbe(idx, off, w)
            (out * torch.linspace(-1, 1, out.shape[1], device="cuda")).sum().backward()
        finals.append(tbe.weight.detach().clone())
    assert torch.equal(finals[0], finals[1])


def test_int64_addressing_beyond_2_pow_31_elements():
    """A table that starts past element 2**31 of the packed weights (int32 overflow check)."""
    big_rows = (2**31) // 4 + 1000  # 4 dims -> the second table starts past 2**31 elements
    tables = [TableConfig("big", big_rows, 4, init="zeros"), TableConfig("after", 10, 4, init="zeros")]
    tbe = TableBatchedEmbeddingBag(tables, OptimizerConfig("sgd", lr=1.0), device="cuda", dtype=torch.bfloat16)
    big, after = tbe.table_weight("big"), tbe.table_weight("after")
    big[big_rows - 1] = 1.0
    after[9] = 2.0
    idx = torch.tensor([big_rows - 1, 9], device="cuda")
    off = torch.tensor([0, 1, 2], device="cuda")
    out = tbe(idx, off)
    torch.testing.assert_close(out, torch.tensor([[1.0] * 4 + [2.0] * 4], device="cuda"))
    out.backward(torch.ones_like(out))
    torch.testing.assert_close(big[big_rows - 1].float(), torch.zeros(4, device="cuda"))
    torch.testing.assert_close(after[9].float(), torch.ones(4, device="cuda"))
