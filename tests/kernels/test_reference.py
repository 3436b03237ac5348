"""The reference itself against hand-written arithmetic on tiny inputs: pooling and each
optimizer's formula, element by element."""

from __future__ import annotations

import math

import torch

from widedeep.kernels import OptimizerConfig, TableConfig
from widedeep.kernels.reference import (
    reference_forward,
    reference_row_grads,
    reference_update,
)


def test_forward_matches_python_loop():
    tables = [TableConfig("s", 4, 2), TableConfig("m", 3, 2, pooling="mean")]
    w0 = torch.arange(8, dtype=torch.float32).view(4, 2)
    w1 = 10 + torch.arange(6, dtype=torch.float32).view(3, 2)
    # B=2. table s: bags [0, 3, 3] and []; table m: bags [1] and [2, 2].
    indices = torch.tensor([0, 3, 3, 1, 2, 2])
    offsets = torch.tensor([0, 3, 3, 4, 6])
    psw = torch.tensor([1.0, 2.0, 0.5, 1.0, 3.0, 1.0])
    out = reference_forward([w0, w1], tables, indices, offsets, psw)
    s0 = 1 * w0[0] + 2 * w0[3] + 0.5 * w0[3]
    m0 = (1.0 * w1[1]) / 1
    m1 = (3.0 * w1[2] + 1.0 * w1[2]) / 2  # mean divides the weighted sum by the bag length
    expected = torch.stack([torch.cat([s0, m0]), torch.cat([torch.zeros(2), m1])])
    torch.testing.assert_close(out, expected)


def test_row_grads_sum_duplicates():
    tables = [TableConfig("s", 5, 3)]
    w = torch.zeros(5, 3)
    indices = torch.tensor([4, 4, 1, 4])
    offsets = torch.tensor([0, 2, 4])  # bags [4,4], [1,4]
    grad_out = torch.tensor([[1.0, 2.0, 3.0], [10.0, 20.0, 30.0]])
    ((rows, grads),) = reference_row_grads([w], tables, indices, offsets, None, grad_out)
    assert rows.tolist() == [1, 4]
    torch.testing.assert_close(grads, torch.tensor([[10.0, 20.0, 30.0], [12.0, 24.0, 36.0]]))


def test_rowwise_adagrad_formula():
    opt = OptimizerConfig("rowwise_adagrad", lr=0.1, eps=1e-3, initial_accumulator=0.5)
    w = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    state = {"adagrad_sum": torch.tensor([0.5, 0.5])}
    reference_update(opt, w, state, torch.tensor([1]), torch.tensor([[3.0, 1.0]]))
    m = 0.5 + (9 + 1) / 2
    assert state["adagrad_sum"].tolist() == [0.5, m]
    expected = [3 - 0.1 * 3 / (math.sqrt(m) + 1e-3), 4 - 0.1 * 1 / (math.sqrt(m) + 1e-3)]
    torch.testing.assert_close(w[1], torch.tensor(expected))
    assert w[0].tolist() == [1.0, 2.0]


def test_ftrl_formula_elementwise():
    lr, l1, l2, beta = 0.5, 0.3, 0.2, 1.0
    opt = OptimizerConfig("ftrl", lr=lr, l1=l1, l2=l2, beta=beta)
    w = torch.tensor([[0.1, -0.2, 0.0]])
    z0, n0 = [0.4, -1.0, 0.0], [0.25, 1.0, 0.0]
    state = {"ftrl_z": torch.tensor([z0]), "ftrl_n": torch.tensor([n0])}
    g = [0.5, -2.0, 0.1]
    reference_update(opt, w, state, torch.tensor([0]), torch.tensor([g]))
    for j in range(3):
        n_new = n0[j] + g[j] ** 2
        sigma = (math.sqrt(n_new) - math.sqrt(n0[j])) / lr
        z = z0[j] + g[j] - sigma * [0.1, -0.2, 0.0][j]
        wj = 0.0 if abs(z) <= l1 else -(z - math.copysign(l1, z)) / ((beta + math.sqrt(n_new)) / lr + l2)
        assert math.isclose(float(state["ftrl_n"][0, j]), n_new, rel_tol=1e-6)
        assert math.isclose(float(state["ftrl_z"][0, j]), z, rel_tol=1e-6)
        assert math.isclose(float(w[0, j]), wj, rel_tol=1e-5, abs_tol=1e-7)
    assert float(w[0, 2]) == 0.0  # |z| <= l1: exactly zero (the sparsity FTRL is chosen for)


def test_ftrl_general_lr_power():
    opt = OptimizerConfig("ftrl", lr=1.0, lr_power=-1.0, beta=1.0)
    w = torch.zeros(1, 1)
    state = {"ftrl_z": torch.zeros(1, 1), "ftrl_n": torch.zeros(1, 1)}
    reference_update(opt, w, state, torch.tensor([0]), torch.tensor([[2.0]]))
    # n = 4, z = 2, w = -2 / (1 + 4)
    torch.testing.assert_close(w, torch.tensor([[-0.4]]))
