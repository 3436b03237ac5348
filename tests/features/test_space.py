"""FeatureSpace: each feature kind fitted and transformed on small real tables, JSON round
trips, determinism, crosses from ids, the one transform for records, and label handling."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from widedeep.errors import DataError, FeatureSpecError
from widedeep.features import FeatureSpace, hashing, parse_spec
from widedeep.features.fit import fit_tables
from widedeep.features.sketch import decode, quantiles, sketch_keys


def spec(features, label=None, **kw):
    return parse_spec({"label": label or {"column": "y", "values": [0, 1]}, "features": features, **kw})


def test_categorical_vocab_min_count_max_size_order_and_oov():
    t = pa.table({"c": ["b", "a", "b", "c", "a", "b", "d", None], "y": [0, 1, 0, 1, 0, 1, 0, 1]})
    fs = fit_tables(spec([{"name": "c", "min_count": 2}]), [t])
    assert fs.vocabulary("c") == ["b", "a"]  # count desc; "c", "d" seen once; nulls never in vocab
    assert fs.oov_id("c") == 2 and fs.num_rows("c") == 3
    assert fs.states["c"]["counts"] == [3, 2]
    out = fs.transform(pa.table({"c": ["a", "b", "zzz", None], "y": [0, 0, 0, 0]}))
    assert out.column("c").to_pylist() == [1, 0, 2, 2]
    assert out.schema.field("c").type == pa.int64()
    fs2 = fit_tables(spec([{"name": "c", "max_size": 1}]), [t])
    assert fs2.vocabulary("c") == ["b"]
    # ties broken by value, so the order never depends on input order
    t2 = pa.table({"c": ["z", "y", "x", "x", "y", "z"], "y": [0] * 6})
    assert fit_tables(spec([{"name": "c"}]), [t2]).vocabulary("c") == ["x", "y", "z"]


def test_integer_categories_are_strings_consistently():
    t = pa.table({"c": pa.array([7, 8, 7], pa.int64()), "y": [0, 1, 0]})
    fs = fit_tables(spec([{"name": "c"}]), [t])
    assert fs.vocabulary("c") == ["7", "8"]
    assert fs.transform_records([{"c": 8}, {"c": "7"}]).column("c").to_pylist() == [1, 0]


def test_hash_buckets_large_ids_survive_parquet(tmp_path):
    buckets = 2**40
    t = pa.table({"u": [f"user{i}" for i in range(200)] + [None], "y": [0] * 201})
    fs = fit_tables(spec([{"name": "u", "hash_buckets": buckets}]), [t])
    out = fs.transform(t)
    ids = np.asarray(out.column("u").to_numpy())
    expect = hashing.bucket(hashing.hash_strings([f"user{i}" for i in range(200)]), buckets)
    assert ids[:200].tolist() == expect.tolist()
    assert ids[200] == buckets == fs.states["u"]["missing_id"]  # missing has its own id
    assert (ids[:200] > 2**24).sum() > 190  # beyond float32's exact integers
    pq.write_table(out, tmp_path / "x.parquet")
    back = pq.read_table(tmp_path / "x.parquet").column("u")
    assert back.type == pa.int64() and back.to_pylist() == ids.tolist()
    assert fs.num_rows("u") == buckets + 1 and fs.oov_id("u") is None


def test_multivalent_list_and_separator():
    t = pa.table({"apps": [["a", "b"], [], None, ["b", "c", "b"]], "g": ["x|y", "y", None, "z|x"], "y": [0, 1, 0, 1]})
    fs = fit_tables(
        spec(
            [
                {"name": "apps", "kind": "multivalent", "combiner": "sum"},
                {"name": "g", "kind": "multivalent", "separator": "|"},
            ]
        ),
        [t],
    )
    assert fs.vocabulary("apps") == ["b", "a", "c"]
    out = fs.transform(pa.table({"apps": [["c", "zz"], None], "g": ["y|x", ""], "y": [0, 0]}))
    assert out.schema.field("apps").type == pa.list_(pa.int64())
    assert out.column("apps").to_pylist() == [[2, 3], []]
    assert out.column("g").to_pylist()[0] == [fs.vocabulary("g").index("y"), fs.vocabulary("g").index("x")]
    tables = {ti.column: ti for ti in fs.deep_tables}
    assert tables["apps"].multivalent and tables["apps"].pooling == "sum"
    assert tables["g"].pooling == "mean"


def test_numeric_cdf_standard_log1p_missing_and_infinity():
    x = np.arange(1, 101, dtype=np.float64)
    t = pa.table({"x": x, "s": x, "l": x, "y": np.zeros(100, np.int64)})
    fs = fit_tables(
        spec(
            [
                {"name": "x", "kind": "numeric", "n_quantiles": 4},
                {"name": "s", "kind": "numeric", "normalize": "standard", "missing": "mean"},
                {
                    "name": "l",
                    "kind": "numeric",
                    "normalize": "none",
                    "log1p": True,
                    "missing": "zero",
                    "clip": [0, 50],
                },
            ]
        ),
        [t],
    )
    assert fs.states["x"]["boundaries"] == [25.0, 50.0, 75.0]
    assert fs.dense_columns == ["x", "s", "l"]
    q = pa.table(
        {
            "x": [0.0, 25.0, 60.0, 1e9, None, np.inf],
            "s": [50.5, 1.0, None, np.nan, -np.inf, 0.0],
            "l": [0.0, 100.0, None, 3.0, np.inf, 1.0],
            "y": [0] * 6,
        }
    )
    out = fs.transform(q)
    assert out.schema.field("x").type == pa.float32()
    xs = out.column("x").to_pylist()
    assert xs[:4] == pytest.approx([0.0, 1 / 3, 2 / 3, 1.0])
    assert xs[4] == pytest.approx(2 / 3)  # missing -> median (50.0 is the 2nd boundary... counted right)
    assert xs[5] == 1.0  # +inf clipped to the training max
    s = out.column("s").to_pylist()
    assert s[0] == pytest.approx(0.0, abs=1e-6) and s[2] == pytest.approx(0.0, abs=1e-6)  # mean fill
    assert s[4] == pytest.approx((1.0 - 50.5) / fs.states["s"]["std"], rel=1e-5)  # -inf -> training min
    lv = out.column("l").to_pylist()
    assert lv[0] == 0.0 and lv[1] == pytest.approx(np.log1p(50))
    assert lv[2] == 0.0 and lv[3] == pytest.approx(np.log1p(3))
    assert lv[4] == pytest.approx(np.log1p(50))


def test_numeric_missing_error_and_bad_strings_are_reported():
    fs = fit_tables(
        spec([{"name": "x", "kind": "numeric", "missing": "error", "infinity": "error"}]),
        [pa.table({"x": [1.0, 2.0], "y": [0, 1]})],
    )
    with pytest.raises(DataError, match=r"column 'x': missing value"):
        fs.transform(pa.table({"x": [1.0, None], "y": [0, 0]}))
    with pytest.raises(DataError, match=r"column 'x': infinite value"):
        fs.transform(pa.table({"x": [np.inf], "y": [0]}))
    with pytest.raises(DataError, match=r"column 'x': not a number \(e.g. 'abc'"):
        fs.transform(pa.table({"x": ["1.5", "abc"], "y": [0, 0]}))
    out, info = fs.transform_checked(pa.table({"x": ["1.5", "abc", None], "y": [0, 1, 0]}), on_bad_rows="skip")
    assert out.num_rows == 1 and info.rows_in == 3 and sum(info.skipped.values()) == 2


def test_bucketized_explicit_and_fitted():
    t = pa.table({"a": [10.0, 20.0, 30.0, 40.0, 50.0, 60.0, 70.0, 80.0], "y": [0] * 8})
    fs = fit_tables(
        spec(
            [
                {"name": "ab", "kind": "bucketized", "column": "a", "boundaries": [18, 30, 65]},
                {"name": "aq", "kind": "bucketized", "column": "a", "num_buckets": 4},
            ]
        ),
        [t],
    )
    out = fs.transform(pa.table({"a": [5.0, 18.0, 29.9, 30.0, 99.0, None], "y": [0] * 6}))
    assert out.column("ab").to_pylist() == [0, 1, 1, 2, 3, 4]
    assert fs.num_rows("ab") == 5
    assert fs.states["aq"]["boundaries"] == [20.0, 40.0, 60.0]


def test_crosses_come_from_component_ids_and_multivalent_cross_is_cartesian():
    t = pa.table({"u": ["u1", "u2", "u1"], "i": ["i1", "i1", "i2"], "apps": [["a", "b"], ["c"], []], "y": [0, 1, 0]})
    s = spec(
        [
            {"name": "u", "side": "user"},
            {"name": "apps", "kind": "multivalent", "side": "user"},
            {"name": "i", "side": "item"},
            {"name": "uxi", "kind": "crossed", "inputs": ["u", "i"], "hash_buckets": 1000},
            {"name": "appsxi", "kind": "crossed", "inputs": ["apps", "i"], "hash_buckets": 1000},
        ]
    )
    fs = fit_tables(s, [t])
    out = fs.transform(t)
    u, i = np.asarray(out.column("u")), np.asarray(out.column("i"))
    assert out.column("uxi").to_pylist() == hashing.bucket(hashing.combine_ids([u, i]), 1000).tolist()
    apps = out.column("apps").to_pylist()
    expect = [
        [int(hashing.bucket(hashing.combine_ids([np.array([a]), np.array([i[r]])]), 1000)[0]) for a in apps[r]]
        for r in range(3)
    ]
    assert out.column("appsxi").to_pylist() == expect
    assert [len(x) for x in expect] == [2, 1, 0]
    # serving: user-side ids from one request, item ids from a catalog -> the same crosses
    user = fs.transform_records([{"u": "u1", "apps": ["a", "b"]}], sides=("user", "context"))
    assert user.column_names == ["u", "apps"]
    ids = pa.table(
        {
            "u": pa.array([user.column("u")[0].as_py()] * 2),
            "apps": pa.array([user.column("apps")[0].as_py()] * 2, pa.list_(pa.int64())),
            "i": out.column("i").take([0, 2]),
        }
    )
    crossed = fs.add_crosses(ids)
    assert crossed.column("uxi").to_pylist() == out.column("uxi").take([0, 2]).to_pylist()
    assert crossed.column("appsxi").to_pylist()[0] == out.column("appsxi")[0].as_py()
    assert fs.feature_side("uxi") == "pair" and fs.feature_side("u") == "user"
    assert fs.raw_input_columns("user") == ["u", "apps"] and fs.raw_input_columns("item") == ["i"]
    assert [ti.name for ti in fs.wide_tables][-2:] == ["wide/uxi", "wide/appsxi"]


def test_labels_conditions_declared_values_and_regression():
    s = spec([{"name": "c"}], label={"condition": 'income == ">50K"', "values": ["<=50K", ">50K"]})
    t = pa.table({"c": ["a", "b", "a"], "income": ["<=50K", ">50K", ">50K"]})
    fs = fit_tables(s, [t])
    assert fs.transform(t).column("label").to_pylist() == [0.0, 1.0, 1.0]
    assert fs.transform(t).schema.field("label").type == pa.float32()
    with pytest.raises(DataError, match=r"label column 'income': value outside the declared set .* \(e.g. '>50K.'"):
        fs.transform(pa.table({"c": ["a"], "income": [">50K."]}))
    with pytest.raises(DataError, match=r"missing label column 'income'"):
        fs.transform(pa.table({"c": ["a"]}))
    assert "label" not in fs.transform(pa.table({"c": ["a"]}), require_label=False).column_names
    r = fit_tables(
        spec([{"name": "c"}], label={"condition": "rating >= 4"}), [pa.table({"c": ["a"] * 3, "rating": [5, 3.5, 4]})]
    )
    assert r.transform(pa.table({"c": ["a"] * 3, "rating": [5, 3.5, 4]})).column("label").to_pylist() == [1.0, 0.0, 1.0]
    g = fit_tables(
        spec([{"name": "c"}], label={"column": "rating", "task": "regression"}),
        [pa.table({"c": ["a"], "rating": [3.5]})],
    )
    assert g.task == "regression"
    assert g.transform(pa.table({"c": ["a"], "rating": [3.5]})).column("label").to_pylist() == [3.5]
    b = fit_tables(spec([{"name": "c"}], label={"column": "y"}), [pa.table({"c": ["a"], "y": [1]})])
    with pytest.raises(DataError, match=r"binary label outside \{0, 1\}"):
        b.transform(pa.table({"c": ["a"], "y": [2]}))


def test_json_roundtrip_hash_and_tamper_detection(tmp_path):
    t = pa.table({"c": ["a", "b", "a"], "x": [1.0, 2.0, 3.0], "y": [0, 1, 0]})
    fs = fit_tables(spec([{"name": "c"}, {"name": "x", "kind": "numeric"}], user_key="c"), [t])
    text = fs.to_json()
    back = FeatureSpace.from_json(text)
    assert back.to_json() == text and back.content_hash == fs.content_hash
    assert back.transform(t).equals(fs.transform(t))
    assert back.user_key == "user_key" and back.item_key is None
    (tmp_path / "feature_space.json").write_text(text)
    assert FeatureSpace.load(tmp_path).content_hash == fs.content_hash
    doc = json.loads(text)
    doc["features"]["c"]["vocab"] = ["b", "a"]
    with pytest.raises(FeatureSpecError, match="content_hash"):
        FeatureSpace.from_json(json.dumps(doc))
    assert "import" not in text and "pickle" not in text  # plain data


def test_fit_is_independent_of_blocking():
    rng = np.random.default_rng(0)
    n = 5000
    t = pa.table(
        {"c": [f"v{int(k)}" for k in rng.zipf(1.5, n) % 300], "x": rng.normal(size=n) * 1e3, "y": rng.integers(0, 2, n)}
    )
    s = spec([{"name": "c", "min_count": 3}, {"name": "x", "kind": "numeric", "normalize": "standard"}])
    one = fit_tables(s, [t]).to_json()
    many = fit_tables(s, [t.slice(i, 700) for i in range(0, n, 700)][::-1]).to_json()
    assert one == many


def test_sketch_error_bound():
    rng = np.random.default_rng(1)
    v = np.exp(rng.normal(0, 3, 100_000))
    k, c = sketch_keys(v)
    qs = np.array([0.01, 0.1, 0.5, 0.9, 0.99])
    approx = quantiles(k, c, qs)
    exact = np.quantile(v, qs, method="inverted_cdf")
    assert np.all(np.abs(approx - exact) <= 2.0**-10 * np.abs(exact) + 1e-12)
    assert decode(sketch_keys(np.array([37.0, 1024.0]))[0]).tolist() == [37.0, 1024.0]  # small integers exact


def test_all_null_column_is_an_error_unless_optional():
    t = pa.table({"c": pa.nulls(3, pa.string()), "y": [0, 1, 0]})
    with pytest.raises(DataError, match=r"column 'c' \(feature 'c'\) is entirely null"):
        fit_tables(spec([{"name": "c"}]), [t])
    fs = fit_tables(spec([{"name": "c", "optional": True}]), [t])
    assert fs.num_rows("c") == 1
    assert fs.transform(pa.table({"y": [0]})).column("c").to_pylist() == [0]  # absent optional column -> OOV


def test_missing_column_names_it():
    fs = fit_tables(spec([{"name": "c"}]), [pa.table({"c": ["a"], "y": [0]})])
    with pytest.raises(DataError, match=r"missing column 'c' \(needed by feature 'c'\)"):
        fs.transform(pa.table({"d": ["a"], "y": [0]}))


def test_vocabulary_lookup_matches_a_dict_on_shuffled_values_unknowns_and_nulls():
    """The look-up searches the batch's hashes in sorted order and scatters the positions back:
    every value gets its own id, in the batch's order (plain and dictionary-encoded batches)."""
    from widedeep.features.space import _VocabIndex

    rng = np.random.default_rng(3)
    vocab = [f"v{i:05d}-{rng.integers(1 << 30)}" for i in range(5000)]
    index = _VocabIndex(vocab)
    ids = {v: i for i, v in enumerate(vocab)}
    values = [vocab[i] for i in rng.integers(0, len(vocab), 20000)] + ["unknown-a", "unknown-b", None] * 50
    values = [values[i] for i in rng.permutation(len(values))]
    want = np.array([ids.get(v, len(vocab)) if v is not None else len(vocab) for v in values])
    arr = pa.array(values, pa.string())
    assert np.array_equal(index.lookup(arr), want)
    assert np.array_equal(index.lookup(arr.dictionary_encode()), want)
