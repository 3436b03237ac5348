"""The vectorized PyTorch path (the CPU default) against the reference: forward output, updated
weights and optimizer state, over many steps and the shapes that break embedding kernels."""

from __future__ import annotations

import pytest
import torch

from tests.kernels.batches import random_batch, train_side_by_side
from widedeep.kernels import OptimizerConfig, TableBatchedEmbeddingBag, TableConfig

OPTIMIZERS = {
    "sgd": OptimizerConfig("sgd", lr=0.3),
    "rowwise_adagrad": OptimizerConfig("rowwise_adagrad", lr=0.2, initial_accumulator=0.1),
    "ftrl": OptimizerConfig("ftrl", lr=0.5, l1=0.02, l2=0.1, initial_accumulator=0.05),
}

# Mixed dims (several runs), dims that are not powers of two, a wide (D=1) run, mean pooling.
MIXED = [
    TableConfig("a", 17, 5),
    TableConfig("b", 3, 5, pooling="mean"),
    TableConfig("c", 40, 1),
    TableConfig("d", 1, 1, pooling="mean"),
    TableConfig("e", 23, 12, init="uniform", init_scale=0.1),
    TableConfig("f", 9, 12, init="zeros"),
]
DEEP = [TableConfig(f"t{i}", 50 + 7 * i, 7, pooling="mean" if i % 2 else "sum") for i in range(4)]


@pytest.mark.parametrize("opt", list(OPTIMIZERS), ids=str)
@pytest.mark.parametrize(
    ("tables", "B", "weighted", "max_len"),
    [
        (MIXED, 1, False, 4),
        (MIXED, 13, True, 5),
        (DEEP, 32, False, 3),
        (DEEP, 5, True, 1),
        ([TableConfig("only", 4, 3)], 6, True, 8),  # heavy duplication in one tiny table
    ],
    ids=["mixed-B1", "mixed-weighted", "deep", "deep-weighted-onehot", "tiny-table"],
)
def test_matches_reference_over_steps(opt, tables, B, weighted, max_len):
    train_side_by_side(
        tables, OPTIMIZERS[opt], "vectorized", B=B, steps=6, seed=B + len(tables), weighted=weighted, max_len=max_len
    )


@pytest.mark.parametrize("opt", list(OPTIMIZERS), ids=str)
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weighted"])
def test_one_id_per_bag_fast_path(opt, weighted):
    """Single-valued features (every bag exactly one id) take a gather-only path."""
    train_side_by_side(
        MIXED, OPTIMIZERS[opt], "vectorized", B=9, steps=3, seed=11, weighted=weighted, max_len=1, min_len=1
    )
    train_side_by_side(
        DEEP, OPTIMIZERS[opt], "vectorized", B=7, steps=2, seed=12, weighted=weighted, max_len=1, min_len=1
    )


def test_all_bags_empty_give_zeros_and_no_update():
    tbe = TableBatchedEmbeddingBag(MIXED, OPTIMIZERS["ftrl"])
    before = tbe.weight.detach().clone()
    B = 3
    out = tbe(torch.empty(0, dtype=torch.int64), torch.zeros(len(MIXED) * B + 1, dtype=torch.int64))
    assert out.shape == (B, tbe.total_dim)
    assert torch.count_nonzero(out) == 0
    out.sum().backward()
    assert torch.equal(tbe.weight, before)


def test_zero_batch():
    tbe = TableBatchedEmbeddingBag(DEEP, OPTIMIZERS["sgd"])
    out = tbe(torch.empty(0, dtype=torch.int64), torch.zeros(1, dtype=torch.int64))
    assert out.shape == (0, tbe.total_dim)


def test_output_column_layout_and_table_weight_view():
    tables = [TableConfig("x", 5, 2), TableConfig("y", 4, 3)]
    tbe = TableBatchedEmbeddingBag(tables, OPTIMIZERS["sgd"], seed=3)
    # bag 0: x[1] + x[4] | y[3];  bag 1: (empty) | y[0]*2 via duplicates
    indices = torch.tensor([1, 4, 3, 0, 0])
    offsets = torch.tensor([0, 2, 2, 3, 5])
    out = tbe(indices, offsets)
    wx, wy = tbe.table_weight("x"), tbe.table_weight(1)
    expected = torch.stack([torch.cat([wx[1] + wx[4], wy[3]]), torch.cat([torch.zeros(2), 2 * wy[0]])])
    torch.testing.assert_close(out, expected)
    assert wx.data_ptr() == tbe.weight.data_ptr()  # a view, not a copy
    wy[2].fill_(7.0)
    assert torch.all(tbe.weight[10 + 6 : 10 + 9] == 7.0)


def test_eval_and_no_grad_never_update():
    tbe = TableBatchedEmbeddingBag(DEEP, OPTIMIZERS["rowwise_adagrad"])
    indices, offsets, _ = random_batch(DEEP, 8, seed=1)
    before = {k: v.clone() for k, v in tbe.state_dict().items()}
    with torch.no_grad():
        tbe(indices, offsets)
    tbe.eval()
    out = tbe(indices, offsets)
    assert not out.requires_grad
    after = tbe.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    tbe.train()
    tbe(indices, offsets).sum().backward()
    assert not torch.equal(before["weight"], tbe.state_dict()["weight"])


@pytest.mark.parametrize("opt", list(OPTIMIZERS), ids=str)
def test_state_dict_resume_is_exact(opt):
    """Train 3 steps, checkpoint, train 3 more; a fresh module loaded from the checkpoint
    and trained on the same 3 batches ends bit-identical."""
    cfg = OPTIMIZERS[opt]
    a = TableBatchedEmbeddingBag(MIXED, cfg, seed=5)
    batches = [random_batch(MIXED, 6, seed=s, weighted=True) for s in range(6)]
    for i, o, w in batches[:3]:
        a(i, o, w).square().sum().backward()
    ckpt = {k: v.clone() for k, v in a.state_dict().items()}
    expected_keys = {
        "sgd": {"weight"},
        "rowwise_adagrad": {"weight", "adagrad_sum"},
        "ftrl": {"weight", "ftrl_z", "ftrl_n"},
    }
    assert set(ckpt) == expected_keys[opt]
    b = TableBatchedEmbeddingBag(MIXED, cfg, seed=99)
    b.load_state_dict(ckpt)
    for i, o, w in batches[3:]:
        a(i, o, w).square().sum().backward()
        b(i, o, w).square().sum().backward()
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k]), k


def test_training_reduces_a_loss():
    """End to end: a sparse linear model (the wide part) fits a planted signal."""
    tables = [TableConfig(f"w{i}", 30, 1, init="zeros") for i in range(3)]
    tbe = TableBatchedEmbeddingBag(tables, OptimizerConfig("ftrl", lr=0.5, l2=0.01))
    truth = torch.randn(90, generator=torch.Generator().manual_seed(0))
    losses = []
    for step in range(60):
        idx, off, _ = random_batch(tables, 32, seed=step, max_len=2)
        y = torch.zeros(32)
        for t in range(3):
            y += torch.nn.functional.embedding_bag(
                idx[off[t * 32] : off[(t + 1) * 32]] + 30 * t,
                truth[:, None],
                off[t * 32 : (t + 1) * 32 + 1] - off[t * 32],
                mode="sum",
                include_last_offset=True,
            )[:, 0]
        pred = tbe(idx, off).sum(1)
        loss = (pred - y).square().mean()
        loss.backward()
        losses.append(loss.item() if not loss.requires_grad else float(loss.detach()))
    assert sum(losses[-10:]) < 0.2 * sum(losses[:10])


def test_blocked_sort_equals_one_sort():
    """Per-table sorting (used on large CPU batches) gives exactly the single sort's result."""
    from widedeep.kernels.vectorized import sort_segments

    g = torch.Generator().manual_seed(0)
    sizes = [20_000, 0, 22_000, 25_000]
    keys = torch.cat([torch.randint(0, 500, (n,), generator=g) + 500 * t for t, n in enumerate(sizes)])
    assert keys.numel() >= 16384 * len(sizes)  # large enough to take the blocked path
    blocked = sort_segments(keys, 2000, sizes)
    single = sort_segments(keys, 2000)
    for a, b in zip(blocked, single, strict=True):
        assert torch.equal(a, b)
    rows, seg, perm = blocked
    assert torch.equal(keys[perm], torch.repeat_interleave(rows, seg[1:] - seg[:-1]))


@pytest.mark.parametrize("opt", list(OPTIMIZERS), ids=str)
@pytest.mark.parametrize("weighted", [False, True], ids=["plain", "weighted"])
@pytest.mark.parametrize("bag_len", [2, 5])
def test_fixed_bag_length_reorders_ids(opt, weighted, bag_len):
    """Every bag of a run holding L ids: the ids are reordered to output order before pooling
    (sum and mean tables, several runs, a one-table run, duplicates within and across bags)."""
    one_table = [TableConfig("solo", 6, 4, pooling="mean")]
    for tables, seed in ((MIXED, 21), (DEEP, 22), (one_table, 23)):
        train_side_by_side(
            tables,
            OPTIMIZERS[opt],
            "vectorized",
            B=7,
            steps=3,
            seed=seed + bag_len,
            weighted=weighted,
            max_len=bag_len,
            min_len=bag_len,
        )


@pytest.mark.parametrize("opt", list(OPTIMIZERS), ids=str)
@pytest.mark.parametrize(
    ("weighted", "min_len", "max_len"),
    [(False, 0, 4), (True, 0, 3), (False, 3, 3), (True, 1, 1)],
    ids=["varying", "varying-weighted", "fixed", "one-per-bag-weighted"],
)
def test_per_table_path_matches_reference(monkeypatch, opt, weighted, min_len, max_len):
    """Large CPU batches pool and sort table by table; force that path on small batches
    (empty bags, tables without ids at B=2, mean pooling, duplicates)."""
    from widedeep.kernels import vectorized

    monkeypatch.setattr(vectorized, "_PER_TABLE_MIN_IDS", 0)
    for tables, B, seed in ((MIXED, 13, 31), (DEEP, 2, 32), (DEEP, 24, 33)):
        train_side_by_side(
            tables,
            OPTIMIZERS[opt],
            "vectorized",
            B=B,
            steps=3,
            seed=seed,
            weighted=weighted,
            min_len=min_len,
            max_len=max_len,
        )


def test_per_table_path_with_empty_tables(monkeypatch):
    """A table without a single id in the batch (its bags all empty) next to full ones."""
    from widedeep.kernels import vectorized

    monkeypatch.setattr(vectorized, "_PER_TABLE_MIN_IDS", 0)
    ref = TableBatchedEmbeddingBag(DEEP, OPTIMIZERS["rowwise_adagrad"], backend="reference", seed=4)
    fast = TableBatchedEmbeddingBag(DEEP, OPTIMIZERS["rowwise_adagrad"], seed=4)
    B = 3
    # tables 0 and 2 empty; table 1: bags [5, 5], [], [7]; table 3: [0], [1, 1], [2]
    indices = torch.tensor([5, 5, 7, 0, 1, 1, 2])
    offsets = torch.tensor([0, 0, 0, 0, 2, 2, 3, 3, 3, 3, 4, 6, 7])
    target = torch.randn(B, sum(t.dim for t in DEEP), generator=torch.Generator().manual_seed(0))
    out_ref, out_fast = ref(indices, offsets), fast(indices, offsets)
    torch.testing.assert_close(out_fast, out_ref)
    assert torch.count_nonzero(out_fast[:, :7]) == 0
    (out_ref * target).sum().backward()
    (out_fast * target).sum().backward()
    torch.testing.assert_close(fast.weight, ref.weight)
    torch.testing.assert_close(fast.adagrad_sum, ref.adagrad_sum)


def test_group_paths_agree():
    """The three ways backward groups ids by row (bag-major sort, per-table sort, input-order
    sort with bag lookup) give the same rows, segments and summed gradients."""
    from widedeep.kernels import vectorized
    from widedeep.kernels.layout import TableLayout

    layout = TableLayout(DEEP)
    B, L = 16, 3
    indices, offsets, psw = random_batch(DEEP, B, seed=5, min_len=L, max_len=L, weighted=True)
    grad = torch.randn(B, layout.total_dim, generator=torch.Generator().manual_seed(1))
    results = []
    for per_table, force_varying in ((False, False), (True, False), (False, True), (True, True)):
        runs = vectorized.split_runs(layout, indices, offsets, psw, B)
        ri = runs[0]
        if per_table:
            ri.per_table = True
        if force_varying:  # pretend the lengths vary: look bags up from the offsets
            ri.bag_len, ri.lookup, ri.lookup_weights = -1, None, None
            if not per_table:
                shift = torch.tensor(layout.row_offsets[:-1]).repeat_interleave(torch.tensor(ri.table_counts))
                ri.keys = ri.ids + shift
        ((rows, grads),) = vectorized.coalesce(layout, runs, grad, B)
        results.append((rows, grads))
    for rows, grads in results[1:]:
        assert torch.equal(rows, results[0][0])
        torch.testing.assert_close(grads, results[0][1])


@pytest.mark.parametrize("path", ["sorted", "dense"])
@pytest.mark.parametrize("opt", list(OPTIMIZERS), ids=str)
@pytest.mark.parametrize(("min_len", "max_len", "weighted"), [(1, 1, False), (2, 2, True), (0, 4, True)])
def test_sorted_and_dense_coalescing_match_reference(monkeypatch, path, opt, min_len, max_len, weighted):
    """Both ways of summing duplicate rows' gradients (a stable sort, or a dense buffer for small
    runs) give the reference's updates, for one id per bag, a fixed length and varying lengths."""
    from widedeep.kernels import vectorized

    monkeypatch.setattr(vectorized, "_DENSE_MAX_ROWS_PER_ID", 0 if path == "sorted" else 10**9)
    train_side_by_side(
        MIXED, OPTIMIZERS[opt], "vectorized", B=11, steps=3, seed=5, weighted=weighted, max_len=max_len, min_len=min_len
    )
