"""The Triton kernel against the reference under ``TRITON_INTERPRET=1`` (CPU, tiny shapes).

Run as a script in its own process (``test_triton_interpret.py`` does), because the
interpreter switch must be set before triton is imported and must not leak into the other
tests of a pytest session: ``TRITON_INTERPRET=1 python -m tests.kernels.triton_interpret_check``.
"""

from __future__ import annotations

import os
import sys
import time

import torch

from tests.kernels.batches import random_batch, train_side_by_side
from widedeep.kernels import OptimizerConfig, TableBatchedEmbeddingBag, TableConfig

OPTS = [
    OptimizerConfig("sgd", lr=0.3),
    OptimizerConfig("rowwise_adagrad", lr=0.2, initial_accumulator=0.1),
    OptimizerConfig("ftrl", lr=0.5, l1=0.02, l2=0.1, initial_accumulator=0.05),
]
MIXED = [
    TableConfig("a", 17, 5),
    TableConfig("b", 3, 5, pooling="mean"),
    TableConfig("wide", 40, 1),
    TableConfig("e", 23, 12, init="uniform", init_scale=0.1),
]


def check_training() -> None:
    for opt in OPTS:
        train_side_by_side(MIXED, opt, "triton", B=5, steps=3, seed=3, weighted=True)
        train_side_by_side(MIXED, opt, "triton", B=1, steps=2, seed=4, max_len=6)
    # duplicates everywhere: one tiny table, long bags
    train_side_by_side([TableConfig("t", 3, 7, pooling="mean")], OPTS[1], "triton", B=4, steps=3, seed=5, max_len=9)
    # FTRL with a general learning-rate power (the pow path, not sqrt)
    ftrl = OptimizerConfig("ftrl", lr=0.5, l1=0.01, l2=0.1, lr_power=-0.7, initial_accumulator=0.1)
    train_side_by_side(MIXED, ftrl, "triton", B=3, steps=2, seed=6, weighted=True)


def check_half_precision() -> None:
    for dtype in (torch.float16, torch.bfloat16):
        train_side_by_side(MIXED[:3], OPTS[1], "triton", B=4, steps=2, seed=7, dtype=dtype, atol=1e-2, rtol=1e-2)


def check_coalesce_and_apply() -> None:
    """The data-parallel path: coalesce-only mode equals the vectorized coalesce, and
    apply-only mode equals the vectorized update."""
    for opt in OPTS:
        tri = TableBatchedEmbeddingBag(MIXED, opt, backend="triton", seed=1)
        vec = TableBatchedEmbeddingBag(MIXED, opt, backend="vectorized", seed=1)
        idx, off, w = random_batch(MIXED, 6, seed=8, weighted=True)
        B = 6
        _, s_tri = tri._impl.forward(tri, idx, off, w, B, True)
        _, s_vec = vec._impl.forward(vec, idx, off, w, B, True)
        g = torch.randn(B, tri.total_dim, generator=torch.Generator().manual_seed(0))
        c_tri = tri._impl.coalesce(tri, s_tri, g)
        c_vec = vec._impl.coalesce(vec, s_vec, g)
        for (r1, g1), (r2, g2) in zip(c_tri, c_vec, strict=True):
            assert torch.equal(r1, r2), (r1, r2)
            torch.testing.assert_close(g1, g2, atol=1e-5, rtol=1e-5)
        for r, (rows, grads) in enumerate(c_vec):
            tri._impl.apply(tri, r, rows, grads.clone())
            vec._impl.apply(vec, r, rows, grads.clone())
        torch.testing.assert_close(tri.weight, vec.weight, atol=1e-5, rtol=1e-5)
        for k, v in vec.optimizer_state().items():
            torch.testing.assert_close(tri.optimizer_state()[k], v, atol=1e-5, rtol=1e-5)


def main() -> int:
    if os.environ.get("TRITON_INTERPRET") != "1":
        print("set TRITON_INTERPRET=1", file=sys.stderr)
        return 2
    torch.set_num_threads(1)
    for check in (check_training, check_half_precision, check_coalesce_and_apply):
        t0 = time.perf_counter()
        check()
        print(f"{check.__name__}: ok ({time.perf_counter() - t0:.1f}s)", flush=True)
    print("ALL OK")
    return 0


if __name__ == "__main__":
    sys.exit(main())
