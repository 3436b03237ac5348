"""Bad input to the kernel gets a KernelInputError naming the value; bad configs a ConfigError."""

from __future__ import annotations

import pytest
import torch

from widedeep.errors import ConfigError, KernelInputError
from widedeep.kernels import OptimizerConfig, TableBatchedEmbeddingBag, TableConfig

TABLES = [TableConfig("user", 10, 4), TableConfig("item", 5, 4)]
SGD = OptimizerConfig("sgd", lr=0.1)


@pytest.fixture
def tbe():
    return TableBatchedEmbeddingBag(TABLES, SGD)


def _ok():  # B=2
    return torch.tensor([1, 9, 0, 4, 2]), torch.tensor([0, 2, 3, 4, 5])


def test_valid_input_passes(tbe):
    assert tbe(*_ok()).shape == (2, 8)


@pytest.mark.parametrize(
    ("indices", "offsets", "match"),
    [
        ([1, 10, 0, 4, 2], [0, 2, 3, 4, 5], r"indices\[1\]=10 out of range for table 'user'.*0 <= id < 10"),
        ([1, 9, 0, 5, 2], [0, 2, 3, 4, 5], r"indices\[3\]=5 out of range for table 'item'.*< 5"),
        ([1, 9, -1, 4, 2], [0, 2, 3, 4, 5], r"indices\[2\]=-1 is negative \(table 'user'\)"),
        ([1, 9, 0, 4, 2], [0, 3, 2, 4, 5], r"not monotone at position 2"),
        ([1, 9, 0, 4, 2], [1, 2, 3, 4, 5], r"offsets\[0\]: expected 0, got 1"),
        ([1, 9, 0, 4, 2], [0, 2, 3, 4, 4], r"offsets\[-1\]: expected 5"),
        ([1, 9, 0, 4, 2], [0, 2, 3, 5], r"length T\*B\+1 with T=2 tables, got length 4"),
    ],
)
def test_bad_values(tbe, indices, offsets, match):
    with pytest.raises(KernelInputError, match=match):
        tbe(torch.tensor(indices), torch.tensor(offsets))


@pytest.mark.parametrize(
    ("indices", "match"),
    [
        ([1, 9, 0, 10, 4, 2, 3, 1], r"indices\[3\]=10 out of range for table 'user'.*0 <= id < 10"),
        ([1, 9, 0, 3, 4, 5, 3, 1], r"indices\[5\]=5 out of range for table 'item'.*< 5"),
        ([1, 9, 0, 3, -4, 2, 3, 1], r"indices\[4\]=-4 is negative \(table 'item'\)"),
    ],
)
def test_bad_ids_in_equal_length_bags(tbe, indices, match):
    """Bags all of one length take a one-call range check; a bad id is still named exactly."""
    offsets = torch.tensor([0, 2, 4, 6, 8])  # B=2, two ids per bag
    assert tbe(torch.tensor([1, 9, 0, 3, 4, 2, 3, 1]), offsets).shape == (2, 8)
    with pytest.raises(KernelInputError, match=match):
        tbe(torch.tensor(indices), offsets)


def test_dtype_and_shape_errors(tbe):
    idx, off = _ok()
    with pytest.raises(KernelInputError, match=r"indices: expected dtype torch\.int64, got torch\.int32"):
        tbe(idx.int(), off)
    with pytest.raises(KernelInputError, match=r"offsets: expected dtype torch\.int64, got torch\.float32"):
        tbe(idx, off.float())
    with pytest.raises(KernelInputError, match=r"indices: expected a 1-D tensor, got shape \(5, 1\)"):
        tbe(idx[:, None], off)
    with pytest.raises(
        KernelInputError, match=r"per_sample_weights: expected dtype torch\.float32, got torch\.float64"
    ):
        tbe(idx, off, torch.ones(5, dtype=torch.float64))
    with pytest.raises(KernelInputError, match=r"per_sample_weights: expected shape \(5,\)"):
        tbe(idx, off, torch.ones(4))


def test_validation_can_be_turned_off():
    tbe = TableBatchedEmbeddingBag(TABLES, SGD, validate=False)
    idx, off = _ok()
    assert tbe(idx, off).shape == (2, 8)
    # Metadata checks stay on even without value checks.
    with pytest.raises(KernelInputError, match="dtype"):
        tbe(idx.int(), off)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: TableConfig("x", 0, 4), r"TableConfig\('x'\).num_rows: expected an int >= 1, got 0"),
        (lambda: TableConfig("x", 3, 4, pooling="max"), r"pooling: expected one of \('sum', 'mean'\), got 'max'"),
        (lambda: OptimizerConfig("adam", lr=0.1), r"OptimizerConfig.kind: expected one of"),
        (lambda: OptimizerConfig("sgd", lr=0.0), r"OptimizerConfig.lr: expected > 0, got 0.0"),
        (lambda: OptimizerConfig("ftrl", lr=0.1, l1=-1.0), r"OptimizerConfig.l1: expected a finite number >= 0"),
        (lambda: TableBatchedEmbeddingBag(TABLES, SGD, backend="cuda"), r"backend: expected one of"),
        (lambda: TableBatchedEmbeddingBag(TABLES, SGD, dtype=torch.bfloat16), r"vectorized path is fp32 only"),
    ],
)
def test_bad_config(make, match):
    with pytest.raises(ConfigError, match=match):
        make()


def test_duplicate_table_names_and_lookup():
    with pytest.raises(ConfigError, match=r"tables: names must be unique; repeated: \['a'\]"):
        TableBatchedEmbeddingBag([TableConfig("a", 2, 2), TableConfig("a", 3, 2)], SGD)
    tbe = TableBatchedEmbeddingBag(TABLES, SGD)
    with pytest.raises(KernelInputError, match=r"no table named 'nope'; tables: \['user', 'item'\]"):
        tbe.table_weight("nope")


# Three runs: two tables of dim 4 (the per-table path when forced), one of dim 2 (a one-table
# run), two of dim 4 again.
RUNS = [
    TableConfig("a", 10, 4),
    TableConfig("b", 5, 4),
    TableConfig("c", 7, 2),
    TableConfig("d", 6, 4),
    TableConfig("e", 3, 4),
]


@pytest.mark.parametrize("per_table", [False, True], ids=["bag-major", "per-table"])
@pytest.mark.parametrize("fixed", [False, True], ids=["varying", "fixed"])
@pytest.mark.parametrize(
    ("pos", "value", "match"),
    [
        (3, 5, r"indices\[3\]=5 out of range for table 'b'.*0 <= id < 5"),
        (4, 7, r"indices\[4\]=7 out of range for table 'c'.*0 <= id < 7"),
        (5, -1, r"indices\[5\]=-1 is negative \(table 'c'\)"),
        (-1, 3, r"indices\[(7|9)\]=3 out of range for table 'e'.*0 <= id < 3"),
        (0, 2**32 + 1, r"indices\[0\]=4294967297 out of range for table 'a'"),
        (2, -(2**32) + 1, r"indices\[2\]=-4294967295 is negative \(table 'b'\)"),
    ],
)
def test_bad_ids_named_on_every_cpu_path(monkeypatch, per_table, fixed, pos, value, match):
    """The vectorized CPU path leaves the range check to the gather where it reads one table
    (per-table pooling, one-table runs) and checks the other runs itself: a bad id is named
    the same way on every path, including ids that would wrap into range at int32."""
    from widedeep.kernels import vectorized

    if per_table:
        monkeypatch.setattr(vectorized, "_PER_TABLE_MIN_IDS", 0)
    tbe = TableBatchedEmbeddingBag(RUNS, SGD)
    ref = TableBatchedEmbeddingBag(RUNS, SGD, backend="reference")
    # B=1: tables a..e hold ids [0:2], [2:4], [4:6], [6:7], [7:8] (varying) or two each (fixed).
    if fixed:
        indices = torch.tensor([1, 9, 0, 4, 6, 2, 5, 0, 2, 1])
        offsets = torch.tensor([0, 2, 4, 6, 8, 10])
    else:
        indices = torch.tensor([1, 9, 0, 4, 6, 2, 5, 2])
        offsets = torch.tensor([0, 2, 4, 6, 7, 8])
    torch.testing.assert_close(tbe(indices, offsets), ref(indices, offsets))
    bad = indices.clone()
    bad[pos] = value
    for module in (tbe, ref, tbe.eval()):
        with pytest.raises(KernelInputError, match=match):
            module(bad, offsets)


def test_bad_id_named_at_the_real_per_table_size():
    """Large enough for the per-table path without forcing it (16384 ids per table): the
    gather's own check finds the id and it is named like on every other path."""
    from widedeep.kernels import vectorized

    tables = [TableConfig("x", 100, 4), TableConfig("y", 50, 4)]
    tbe = TableBatchedEmbeddingBag(tables, OptimizerConfig("rowwise_adagrad", lr=0.1))
    B, L = 4096, vectorized._PER_TABLE_MIN_IDS // 4096
    g = torch.Generator().manual_seed(0)
    indices = torch.cat([torch.randint(0, 100, (B * L,), generator=g), torch.randint(0, 50, (B * L,), generator=g)])
    offsets = torch.arange(0, 2 * B * L + 1, L)
    runs = vectorized.split_runs(tbe.layout, indices, offsets, None, B)
    assert runs[0].per_table and vectorized.gather_checks_ids(tbe.layout.runs[0], runs[0])
    before = tbe.weight.detach().clone()
    bad = indices.clone()
    bad[B * L + 123] = 50
    with pytest.raises(KernelInputError, match=rf"indices\[{B * L + 123}\]=50 out of range for table 'y'"):
        tbe(bad, offsets).sum().backward()
    assert torch.equal(tbe.weight, before)  # nothing updated
    tbe(indices, offsets).sum().backward()  # the module still works after the error
    assert not torch.equal(tbe.weight, before)
