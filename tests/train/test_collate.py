import numpy as np
import pyarrow as pa
import pytest

from widedeep.data.collate import Collator
from widedeep.errors import DataError
from widedeep.features import parse_spec
from widedeep.features.fit import fit_tables

SPEC = {
    "version": 1,
    "name": "t",
    "label": {"column": "y", "values": [0, 1]},
    "features": [
        {"name": "a", "kind": "categorical", "dim": 4},
        {"name": "tags", "kind": "multivalent", "dim": 3, "deep": False},
        {"name": "x", "kind": "numeric", "normalize": "cdf"},
    ],
}


@pytest.fixture(scope="module")
def fs():
    raw = pa.table(
        {
            "a": ["u", "v", "u", "w"],
            "tags": [["p"], ["p", "q"], [], ["q", "q", "r"]],
            "x": [1.0, 2.0, 3.0, 4.0],
            "y": [0, 1, 0, 1],
        }
    )
    space = fit_tables(parse_spec(SPEC), [raw])
    return space, space.transform(raw)


def test_collate_builds_table_major_jagged_layout(fs):
    space, prepared = fs
    batch = Collator(space)(prepared)
    a = prepared.column("a").to_numpy()
    tags = prepared.column("tags").to_pylist()
    # wide tables in FeatureSpace order: a (single), tags (multivalent)
    wide_names = [t.column for t in space.wide_tables]
    assert wide_names == ["a", "tags"]
    exp_vals = list(a) + [i for row in tags for i in row]
    lens = [1] * 4 + [len(r) for r in tags]
    assert batch.wide.values.tolist() == exp_vals
    assert batch.wide.offsets.tolist() == list(np.concatenate([[0], np.cumsum(lens)]))
    # deep side: only "a"
    assert batch.deep.values.tolist() == list(a)
    assert batch.deep.offsets.tolist() == [0, 1, 2, 3, 4]
    assert batch.dense.shape == (4, 1) and batch.dense.dtype.is_floating_point
    assert batch.labels.tolist() == [0.0, 1.0, 0.0, 1.0]
    # a sliced Arrow table (non-zero list offsets) collates the same rows
    sub = Collator(space)(prepared.slice(1, 2))
    assert sub.wide.values.tolist() == list(a[1:3]) + tags[1] + tags[2]


def test_collate_numpy_dict_matches_arrow(fs):
    space, prepared = fs
    d = {c: prepared.column(c).to_numpy(zero_copy_only=False) for c in prepared.column_names}
    b1, b2 = Collator(space)(prepared), Collator(space)(d)
    assert b1.wide.values.tolist() == b2.wide.values.tolist()
    assert b1.wide.offsets.tolist() == b2.wide.offsets.tolist()


def test_collate_rejects_nulls_and_missing_columns(fs):
    space, prepared = fs
    bad = prepared.set_column(prepared.schema.get_field_index("a"), "a", pa.array([0, None, 1, 2], pa.int64()))
    with pytest.raises(DataError, match=r"'a'.*null"):
        Collator(space)(bad)
    with pytest.raises(DataError, match="'x' missing"):
        Collator(space)(prepared.drop_columns(["x"]))


def _same_batch(a, b) -> bool:
    import torch

    return all(
        torch.equal(x, y)
        for x, y in (
            (a.dense, b.dense),
            (a.labels, b.labels),
            (a.wide.values, b.wide.values),
            (a.wide.offsets, b.wide.offsets),
            (a.deep.values, b.deep.values),
            (a.deep.offsets, b.deep.offsets),
        )
    )


@pytest.mark.parametrize("rows", [[2, 0], [3, 1, 1, 0], [], [1]], ids=["two", "repeat", "none", "one"])
def test_row_taker_equals_collating_the_taken_rows(fs, rows):
    """A cached split collated once, then rows selected (varying-length multivalent bags, empty
    bags, one id per bag, int32 storage): the batch the collator builds from those rows."""
    import torch

    from widedeep.data.batch import RowTaker

    space, prepared = fs
    taker = RowTaker(Collator(space)(prepared))
    got = taker.take(torch.tensor(rows, dtype=torch.int64))
    want = Collator(space)(prepared.take(pa.array(rows, pa.int64())))
    assert got.wide.values.dtype == torch.int64 and _same_batch(got, want)
