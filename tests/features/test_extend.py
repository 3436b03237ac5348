"""Extending a serving FeatureSpace with a new window, moving prepared ids between spaces, and the
distribution profiles / drift figures built on prepared columns (no Ray)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from widedeep.errors import FeatureSpecError
from widedeep.features.drift import ProfileBuilder, categorical_drift, compare, numeric_bins, psi
from widedeep.features.extend import extend_space, remap_ids
from widedeep.features.fit import fit_tables
from widedeep.features.spec import parse_spec

SPEC = parse_spec(
    {
        "label": {"column": "y", "values": [0, 1]},
        "features": [
            {"name": "c", "side": "user", "min_count": 2},
            {"name": "tags", "kind": "multivalent", "side": "user"},
            {"name": "item", "side": "item", "max_size": 5},
            {"name": "x", "kind": "numeric", "n_quantiles": 4},
            {"name": "z", "kind": "numeric", "normalize": "standard"},
            {"name": "c_x_item", "kind": "crossed", "inputs": ["c", "item"], "hash_buckets": 97},
        ],
    }
)


def _table(c, tags, item, x, z=None, y=None):
    n = len(c)
    return pa.table(
        {
            "c": c,
            "tags": tags,
            "item": item,
            "x": pa.array(x, pa.float64()),
            "z": pa.array(z if z is not None else [0.0] * n, pa.float64()),
            "y": y if y is not None else [i % 2 for i in range(n)],
        }
    )


DAY1 = _table(
    ["a", "a", "b", "b", "b", "rare"],
    [["t1"], ["t1", "t2"], [], ["t2"], ["t1"], ["t3"]],
    ["i1", "i2", "i1", "i3", "i2", "i1"],
    [1, 2, 3, 4, 5, 6],
    [0, 1, 2, 3, 4, 5],
)
DAY2 = _table(
    ["b", "new", "new", "a", "new2", "new2"],
    [["t9"], ["t9", "t1"], ["t2"], [], ["t9"], ["t1"]],
    ["i4", "i5", "i6", "i1", "i7", "i4"],
    [2, 3, 4, 50, 60, 70],
    [1, 1, 1, 1, 1, 1],
)


def test_extension_keeps_every_id_and_appends_new_values_per_the_spec():
    base = fit_tables(SPEC, [DAY1])
    fresh = fit_tables(SPEC, [DAY2])
    ext = extend_space(base, fresh)
    for name in ("c", "tags", "item"):
        old = base.vocabulary(name)
        assert ext.vocabulary(name)[: len(old)] == old  # existing ids kept
        assert ext.oov_id(name) == len(ext.vocabulary(name))  # OOV stays the last id
    # min_count 2 in the window: "new" and "new2" qualify (2 each), nothing else
    assert ext.vocabulary("c") == ["b", "a", "new", "new2"]
    # the window's counts are added to known values that reach min_count in it ("b", "a" do not)
    assert ext.states["c"]["counts"] == [3, 2, 2, 2]
    assert ext.states["tags"]["counts"][:2] == [3 + 2, 2 + 1]
    assert ext.vocabulary("tags")[-1] == "t9"
    # max_size 5: 3 known items + 2 of the window's 4 new ones (most frequent first, then by value)
    assert ext.vocabulary("item") == ["i1", "i2", "i3", "i4", "i5"]
    # numerics keep the serving normalisation; crosses their buckets
    assert ext.states["x"] == base.states["x"] and ext.states["c_x_item"] == base.states["c_x_item"]
    assert ext.fit_info["extended_from"] == base.content_hash
    assert ext.fit_info["window"]["new_values"] == {"c": 2, "item": 2, "tags": 1}
    # the same raw row gets the same id in both spaces when its value is known
    tb, te = base.transform(DAY1), ext.transform(DAY1)
    for name in ("c", "item", "x"):  # (a cross of an OOV component moves with the OOV id: see the remap test)
        known = np.asarray(tb.column(name).to_pylist()) != base.oov_id(name) if name in ("c", "item") else slice(None)
        got, want = np.asarray(te.column(name).to_pylist()), np.asarray(tb.column(name).to_pylist())
        assert np.array_equal(got[known], want[known])


def test_extension_refuses_another_spec():
    base = fit_tables(SPEC, [DAY1])
    other = parse_spec({**SPEC.to_dict(), "features": [f for f in SPEC.to_dict()["features"] if f["name"] != "z"]})
    with pytest.raises(FeatureSpecError, match="spec"):
        extend_space(base, fit_tables(other, [DAY2]))


@pytest.mark.parametrize(("raw", "directions"), [(DAY1, ("down", "up")), (DAY2, ("down",))])
def test_remap_equals_preparing_with_the_other_space(raw, directions):
    """Extended -> serving space is exact for any rows; serving -> extended for rows whose values the
    serving space knew (a value it had as OOV cannot be told apart any more: it stays OOV)."""
    base = fit_tables(SPEC, [DAY1])
    ext = extend_space(base, fit_tables(SPEC, [DAY2]))
    pairs = {"down": (ext, base), "up": (base, ext)}
    for src, dst in (pairs[d] for d in directions):
        got = remap_ids(src.transform(raw), src, dst)
        want = dst.transform(raw)
        for name in want.column_names:
            assert got.column(name).to_pylist() == want.column(name).to_pylist(), name


def test_profiles_and_drift():
    base = fit_tables(SPEC, [DAY1])
    ref = ProfileBuilder(base)
    ref.add(base.transform(DAY1))
    same = ProfileBuilder(base)
    same.add(base.transform(DAY1))
    shifted = ProfileBuilder(base)
    shifted.add(base.transform(DAY2))
    p_ref, p_same, p_shift = ref.finish(), same.finish(), shifted.finish()
    assert p_ref["rows"] == 6 and sum(p_ref["features"]["x"]["counts"]) == 6
    assert p_ref["features"]["c"]["categories"] == ["b", "a", "(other)", "(oov)"]
    assert p_ref["features"]["c"]["counts"] == [3, 2, 0, 1]  # "rare" (count 1 < min_count 2) is OOV
    d0 = compare(p_ref, p_same)
    assert d0["x"]["psi"] == pytest.approx(0.0) and d0["c"]["top_shift"] == pytest.approx(0.0)
    d = compare(p_ref, p_shift)
    assert d["x"]["psi"] > 0.25  # 50, 60, 70 sit above every boundary
    assert d["c"]["oov_rate"] == pytest.approx(4 / 6) and d["c"]["oov_rate_ref"] == pytest.approx(1 / 6)
    assert 0 < d["c"]["top_shift"] <= 1
    # standard normalisation: the bin is recovered from the standardised value
    z = base.transform(DAY2).column("z").to_numpy()
    want = np.searchsorted(base.states["z"]["boundaries"], [1.0] * 6, "right")
    assert np.array_equal(numeric_bins(base, "z", z), want)


def test_psi_and_categorical_drift_reference_values():
    assert psi([10, 10], [10, 10]) == 0.0
    want = (0.2 - 0.5) * np.log(0.2 / 0.5) + (0.8 - 0.5) * np.log(0.8 / 0.5)
    assert psi([50, 50], [20, 80]) == pytest.approx(want)
    d = categorical_drift(np.array([6, 2, 0, 2]), np.array([2, 6, 0, 2]))
    assert d["oov_rate"] == d["oov_rate_ref"] == pytest.approx(0.2)
    assert d["top_shift"] == pytest.approx(0.5)
