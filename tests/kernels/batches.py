"""Random jagged batches for kernel tests: seeded, with the edge cases the kernel must handle
(empty bags, duplicate ids within and across bags, ids at the last row of a table)."""

from __future__ import annotations

import torch

from widedeep.kernels import TableConfig


def random_batch(
    tables: list[TableConfig],
    B: int,
    seed: int,
    *,
    max_len: int = 4,
    weighted: bool = False,
    device: str = "cpu",
    min_len: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(indices int64 [N], offsets int64 [T*B+1], per-sample weights fp32 [N] | None).

    Bag lengths are uniform in ``[min_len, max_len]`` (so empty bags occur by default); ids come from a small
    hot set (duplicates within and across bags) mixed with uniform ids, and every table's
    last row appears whenever the table has at least one id.
    """
    g = torch.Generator().manual_seed(seed)
    T = len(tables)
    lengths = torch.randint(min_len, max_len + 1, (T * B,), generator=g)
    offsets = torch.zeros(T * B + 1, dtype=torch.int64)
    offsets[1:] = torch.cumsum(lengths, 0)
    parts = []
    for t, tc in enumerate(tables):
        n = int(lengths[t * B : (t + 1) * B].sum())
        hot = torch.randint(0, tc.num_rows, (3,), generator=g)
        ids = torch.where(
            torch.rand(n, generator=g) < 0.5,
            hot[torch.randint(0, 3, (n,), generator=g)],
            torch.randint(0, tc.num_rows, (n,), generator=g),
        )
        if n:
            ids[int(torch.randint(0, n, (1,), generator=g))] = tc.num_rows - 1
        parts.append(ids)
    indices = torch.cat(parts)
    weights = torch.rand(indices.numel(), generator=g) * 2 - 0.5 if weighted else None
    dev = torch.device(device)
    return indices.to(dev), offsets.to(dev), None if weights is None else weights.to(dev)


def train_side_by_side(
    tables: list[TableConfig],
    opt,
    backend: str,
    *,
    B: int,
    steps: int,
    seed: int,
    weighted: bool = False,
    max_len: int = 4,
    min_len: int = 0,
    dtype: torch.dtype = torch.float32,
    device: str = "cpu",
    atol: float = 1e-5,
    rtol: float = 1e-5,
) -> None:
    """Train a ``backend`` module and a reference module on the same batches and assert that
    forward outputs, weights and optimizer state agree after every step."""
    from widedeep.kernels import TableBatchedEmbeddingBag

    ref = TableBatchedEmbeddingBag(tables, opt, backend="reference", dtype=dtype, device=device, seed=seed)
    fast = TableBatchedEmbeddingBag(tables, opt, backend=backend, dtype=dtype, device=device, seed=seed)
    torch.testing.assert_close(fast.weight, ref.weight, atol=0, rtol=0)
    g = torch.Generator().manual_seed(seed + 1000)
    for step in range(steps):
        indices, offsets, psw = random_batch(
            tables, B, seed * 100 + step, max_len=max_len, weighted=weighted, device=device, min_len=min_len
        )
        out_ref = ref(indices, offsets, psw)
        out_fast = fast(indices, offsets, psw)
        assert out_fast.shape == (B, sum(t.dim for t in tables))
        assert out_fast.dtype == torch.float32
        torch.testing.assert_close(
            out_fast, out_ref, atol=atol, rtol=rtol, msg=lambda m, step=step: f"step {step} forward: {m}"
        )
        target = torch.randn(out_ref.shape, generator=g).to(device)
        (out_ref * target).sum().backward()
        (out_fast * target).sum().backward()
        torch.testing.assert_close(
            fast.weight.float(),
            ref.weight.float(),
            atol=atol,
            rtol=rtol,
            msg=lambda m, step=step: f"step {step} weights: {m}",
        )
        for name, value in ref.optimizer_state().items():
            torch.testing.assert_close(
                fast.optimizer_state()[name],
                value,
                atol=atol,
                rtol=rtol,
                msg=lambda m, step=step, name=name: f"step {step} {name}: {m}",
            )
