"""Readers and splits without Ray: every input format, paths / globs, bad rows, split logic."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.data.ml_files import RATINGS, write_ml1m, write_ml100k, write_mllatest
from widedeep.data.sources import MOVIELENS_SCHEMA, expand_paths, plan_units, read_unit
from widedeep.data.split import Splitter, parse_split, user_cutoffs
from widedeep.errors import ConfigError, DataError


def read_all(inputs, fmt="auto", on_bad="error", columns=None):
    fmt, units = plan_units([str(p) for p in inputs], fmt, unit_rows=2)
    chunks, bad = [], 0
    for u in units:
        for t, b in read_unit(u, columns, 4, on_bad):
            chunks.append(t)
            bad += b
    return fmt, units, (pa.concat_tables(chunks) if chunks else None), bad


def test_parquet_units_by_row_group_dirs_and_globs(tmp_path):
    d = tmp_path / "in"
    d.mkdir()
    t = pa.table({"a": list(range(10)), "b": [str(i) for i in range(10)]})
    pq.write_table(t, d / "p1.parquet", row_group_size=3)
    pq.write_table(t.slice(0, 2), d / "p2.parquet")
    (d / "_SUCCESS").write_text("")
    fmt, units, got, _ = read_all([d])
    assert fmt == "parquet" and got.num_rows == 12
    assert [(u.path.rsplit("/", 1)[-1], u.row_offset, u.row_groups) for u in units] == [
        ("p1.parquet", 0, (0,)),
        ("p1.parquet", 3, (1,)),
        ("p1.parquet", 6, (2,)),
        ("p1.parquet", 9, (3,)),
        ("p2.parquet", 0, (0,)),
    ]
    assert expand_paths([str(d / "p*.parquet")]) == [str(d / "p1.parquet"), str(d / "p2.parquet")]
    assert expand_paths([f"file://{d}/p1.parquet"]) == [f"file://{d}/p1.parquet"]
    _, _, got, _ = read_all([f"file://{d}/p2.parquet"], columns=["b"])
    assert got.column_names == ["b"] and got.num_rows == 2
    with pytest.raises(DataError, match="no such file or directory"):
        expand_paths([str(tmp_path / "nope")])
    with pytest.raises(DataError, match="no files match"):
        expand_paths([str(d / "*.csv")])


def test_csv_reads_strings_and_reports_or_skips_unparseable_rows(tmp_path):
    p = tmp_path / "x.csv"
    p.write_text("a,b\n1,x\n2,y,EXTRA\n3,z\n")
    with pytest.raises(DataError, match=r"x.csv: .*Expected 2 columns, got 3.*--on-bad-rows skip"):
        read_all([p])
    fmt, _, got, bad = read_all([p], on_bad="skip")
    assert fmt == "csv" and got.column("a").to_pylist() == ["1", "3"] and bad == 1
    e = tmp_path / "empty.csv"
    e.write_text("")
    assert read_all([e])[2] is None


def test_criteo_tsv(tmp_path):
    p = tmp_path / "day_0"
    row1 = ["1", "5", "", "-1"] + ["2"] * 10 + ["68fd1e64", "", "80e26c9b"] + ["0a519c5c"] * 23
    row2 = ["0"] + [""] * 13 + ["05db9164"] * 26
    p.write_text("\t".join(row1) + "\n" + "\t".join(row2) + "\n")
    _fmt, _, got, _ = read_all([p], fmt="criteo")
    assert got.num_rows == 2 and got.column_names[:3] == ["label", "I1", "I2"] and len(got.column_names) == 40
    assert got.column("I2").to_pylist() == [None, None] and got.column("I3").to_pylist() == [-1, None]
    assert got.column("C2").to_pylist() == [None, "05db9164"] and got.schema.field("C1").type == pa.string()
    p.write_text("\t".join([*row1[:-1], "x", "y"]) + "\n")
    with pytest.raises(DataError, match="day_0"):
        read_all([p], fmt="criteo")


@pytest.mark.parametrize("writer", [write_ml100k, write_ml1m, write_mllatest], ids=["ml-100k", "ml-1m", "ml-latest"])
def test_movielens_layouts_read_into_one_schema(tmp_path, writer):
    d = writer(tmp_path / "ml")
    fmt, units, got, _ = read_all([d])
    assert fmt == "movielens" and len(units) == 1
    assert got.schema == MOVIELENS_SCHEMA
    assert got.num_rows == len(RATINGS)
    cols = [got.column(c).to_pylist() for c in ("user_id", "movie_id", "timestamp")]
    assert list(zip(*cols, strict=True)) == [(u, m, t) for u, m, _, t in RATINGS]
    rows = {r["movie_id"]: r for r in got.to_pylist()}
    assert sorted(rows[10]["genres"]) == ["Animation", "Comedy"] and rows[10]["year"] == 1995
    assert rows[30]["title"] == "Amélie (2001)"
    if writer is write_mllatest:
        assert got.column("gender").null_count == got.num_rows
    else:
        assert {r["user_id"]: r["gender"] for r in got.to_pylist()} == {1: "M", 2: "F", 3: "M"}


def test_split_parsing():
    assert parse_split("random:0.8,0.1,0.1").fractions == (0.8, 0.1, 0.1)
    s = parse_split("user-time:uid:ts:0.7,0.2,0.1")
    assert (s.user_column, s.time_column) == ("uid", "ts")
    for bad in ["random:0.8,0.1", "time:0.8,0.1,0.1", "shuffle:1,0,0", "random:0.5,0.1,0.1", "random:a,b,c"]:
        with pytest.raises(ConfigError, match="--split"):
            parse_split(bad)


def test_random_split_is_seeded_and_positional():
    t = pa.table({"a": np.arange(20000)})
    s = Splitter(parse_split("random:0.8,0.1,0.1"), seed=3)
    a = s.assign(t, 0, 0, "f")
    assert abs((a == 0).mean() - 0.8) < 0.02 and abs((a == 2).mean() - 0.1) < 0.02
    # the same rows read in two pieces get the same assignment
    assert np.array_equal(
        np.concatenate([s.assign(t.slice(0, 777), 0, 0, "f"), s.assign(t.slice(777), 0, 777, "f")]), a
    )
    assert not np.array_equal(Splitter(s.spec, seed=4).assign(t, 0, 0, "f"), a)


def test_user_time_cutoffs_leave_latest_out():
    users = pa.array(["a"] * 10 + ["b"] * 3 + ["c"])
    times = np.array([*list(range(10)), 5, 1, 3, 7], dtype=np.float64)
    cut = user_cutoffs(users, times, (0.8, 0.1, 0.1))
    s = Splitter(parse_split("user-time:u:t:0.8,0.1,0.1"), users=cut)
    a = s.assign(pa.table({"u": users, "t": times}), 0, 0, "f")
    assert a[:10].tolist() == [0] * 8 + [1, 2]  # user a: latest -> test, the one before -> valid
    assert a[10:13].tolist() == [2, 0, 0] or a[10:13].tolist() == [0, 0, 2] or sorted(a[10:13].tolist()) == [0, 0, 0]
    assert a[13] == 0  # a single interaction stays in train
