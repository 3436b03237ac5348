"""Row-wise sharded tables on CUDA (the kernel's CUDA backend on the owners), against the plain
module trained on CPU on the union of the batches: the exactness test of
``tests/kernels/test_sharded.py`` with CUDA tensors.

Backend: ``nccl`` when there are at least as many GPUs as processes (NCCL needs one GPU per
process); otherwise ``gloo`` with CUDA tensors (it stages them through host memory), so that a
single-GPU machine still runs the CUDA paths over real processes.
"""

from __future__ import annotations

import pytest
import torch

from tests.kernels.test_sharded import check_row_wise_training

pytestmark = [pytest.mark.gpu, pytest.mark.shard]


@pytest.mark.timeout(600)
@pytest.mark.parametrize("world", [2, 4])
def test_row_wise_on_cuda_equals_unsharded_union_training(world, tmp_path):
    backend = "nccl" if torch.cuda.device_count() >= world else "gloo"
    check_row_wise_training(world, tmp_path, backend=backend, device="cuda", atol=1e-5, rtol=1e-4)
