"""``widedeep prepare`` end to end on the session's Ray: Adult layout, determinism, the record
transform matching the written rows, time splits on MovieLens, the generator, bad input."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT
from tests.data.ml_files import write_ml1m, write_mllatest
from widedeep.cli import main
from widedeep.data.generate import generate_appstore
from widedeep.data.prepare import PrepareOptions, prepare
from widedeep.data.split import Splitter, parse_split
from widedeep.errors import DataError
from widedeep.features import FeatureSpace, load_spec, parse_spec

pytestmark = pytest.mark.ray
SPECS = ROOT / "platform" / "specs"


def test_adult_layout_determinism_and_single_record_transform(ray_session, adult_path, tmp_path, capsys):
    outs = []
    for name in ("a", "b"):
        out = tmp_path / name
        rc = main(
            [
                "prepare",
                "--spec",
                str(SPECS / "adult.yaml"),
                "--input",
                str(adult_path),
                "--out",
                str(out),
                "--split",
                "random:0.8,0.1,0.1",
                "--row-group-rows",
                "5000",
            ]
        )
        assert rc == 0
        outs.append(out)
    a, b = outs
    assert (a / "feature_space.json").read_bytes() == (b / "feature_space.json").read_bytes()
    m = json.loads((a / "manifest.json").read_text())
    assert m["rows_read"] == m["rows_written"] == 48842
    assert sum(m["splits"][s]["rows"] for s in ("train", "valid", "test")) == 48842
    assert abs(m["splits"]["train"]["rows"] / 48842 - 0.8) < 0.01
    assert 0.2 < m["splits"]["train"]["label_rate"] < 0.3 and m["skipped_rows"]["total"] == 0
    assert set(m["oov_rate"]) >= {"education", "occupation"} and m["spec_hash"] == load_spec(SPECS / "adult.yaml").hash
    fs = FeatureSpace.load(a)
    assert m["feature_space_hash"] == fs.content_hash
    for s in ("train", "valid", "test"):
        files = sorted((a / s).glob("part-*.parquet"))
        assert files and len(files) == m["splits"][s]["shards"]
        assert pq.ParquetFile(files[0]).metadata.num_row_groups >= (2 if s == "train" else 1)
    train = pq.read_table(a / "train")
    assert train.schema.field("education").type == pa.int64()
    assert train.schema.field("age").type == pa.float32() and train.schema.field("label").type == pa.float32()
    for t in fs.wide_tables + fs.deep_tables:
        ids = np.asarray(train.column(t.column))
        assert ids.min() >= 0 and ids.max() < t.num_rows, t
    # one raw record, as a dict, through the same transform -> exactly that row's ids
    raw = pq.read_table(adult_path)
    assign = Splitter(parse_split("random:0.8,0.1,0.1"), 0).assign(raw, 0, 0, "adult")
    raw_train = raw.filter(pa.array(assign == 0))
    assert raw_train.num_rows == train.num_rows
    for k in (0, 1234, train.num_rows - 1):
        record = raw_train.slice(k, 1).to_pylist()[0]
        got = fs.transform_records([record]).to_pylist()[0]
        want = train.slice(k, 1).drop_columns(["label"]).to_pylist()[0]
        assert got == want
        assert train.column("label")[k].as_py() == float(record["income"] == ">50K")


def test_movielens_user_time_split_and_time_split(ray_session, tmp_path):
    spec = load_spec(SPECS / "movielens.yaml")
    d = write_ml1m(tmp_path / "ml-1m")
    m = prepare(spec, PrepareOptions([str(d)], str(tmp_path / "ut"), split="user-time:user_id:timestamp:0.6,0.2,0.2"))
    assert m["format"] == "movielens" and m["rows_written"] == 15
    parts = {s: pq.read_table(tmp_path / "ut" / s) for s in ("train", "valid", "test")}
    assert [parts[s].num_rows for s in ("train", "valid", "test")] == [9, 3, 3]
    for s in parts:
        assert {"user_key", "item_key", "timestamp", "genres", "gender_x_genres"} <= set(parts[s].column_names)
    for user in (1, 2, 3):
        times = {
            s: [
                t
                for u, t in zip(
                    parts[s].column("user_key").to_pylist(), parts[s].column("timestamp").to_pylist(), strict=True
                )
                if u == user
            ]
            for s in parts
        }
        assert len(times["test"]) == 1 and len(times["valid"]) == 1
        assert times["test"][0] > times["valid"][0] > max(times["train"])  # latest interactions held out
    fs = FeatureSpace.load(tmp_path / "ut")
    assert fs.feature_side("gender_x_genres") == "pair" and fs.user_key == "user_key"
    assert parts["train"].schema.field("genres").type == pa.list_(pa.int64())
    # ml-latest: no demographics (optional features stay all-OOV), global time split
    d2 = write_mllatest(tmp_path / "ml-latest")
    m2 = prepare(spec, PrepareOptions([str(d2)], str(tmp_path / "t"), split="time:timestamp:0.6,0.2,0.2"))
    tr, te = pq.read_table(tmp_path / "t" / "train"), pq.read_table(tmp_path / "t" / "test")
    assert max(tr.column("timestamp").to_pylist()) < min(te.column("timestamp").to_pylist())
    assert m2["splits"]["train"]["rows"] + m2["splits"]["valid"]["rows"] + m2["splits"]["test"]["rows"] == 15
    assert set(tr.column("gender").to_pylist()) == {0}  # all missing -> the OOV id


def test_movielens_ratings_csv_with_trailing_unnamed_columns(ray_session, tmp_path):
    """A ratings.csv saved by a spreadsheet (``userId,movieId,rating,timestamp,,,,``): the unnamed
    columns empty in every row are ignored and listed in the manifest; anything else is an error
    naming the file and the column."""
    spec = load_spec(SPECS / "movielens.yaml")
    split = "time:timestamp:0.6,0.2,0.2"
    clean = prepare(spec, PrepareOptions([str(write_mllatest(tmp_path / "clean"))], str(tmp_path / "c"), split=split))
    assert clean["ignored_columns"] == []
    d = write_mllatest(tmp_path / "wide", header="userId,movieId,rating,timestamp,,,,")
    m = prepare(spec, PrepareOptions([str(d)], str(tmp_path / "w"), split=split))
    assert m["rows_written"] == 15 and m["feature_space_hash"] == clean["feature_space_hash"]
    assert m["ignored_columns"] == [
        {"file": str(d / "ratings.csv"), "columns": [5, 6, 7, 8], "reason": "unnamed and empty in every row"}
    ]
    for s in ("train", "valid", "test"):
        assert pq.read_table(tmp_path / "w" / s).equals(pq.read_table(tmp_path / "c" / s))
    filled = write_mllatest(tmp_path / "filled", header="userId,movieId,rating,timestamp,,,,", cells={(7, 6): "oops"})
    with pytest.raises(DataError, match=r"filled/ratings.csv: column 6 has no name but holds 'oops' \(data row 8\)"):
        prepare(spec, PrepareOptions([str(filled)], str(tmp_path / "f"), split=split))
    named = write_mllatest(tmp_path / "named", header="userId,movieId,rating,timestamp,tag,")
    with pytest.raises(DataError, match=r"named/ratings.csv: unexpected column\(s\) 'tag' \(column 5\) after"):
        prepare(spec, PrepareOptions([str(named)], str(tmp_path / "n"), split=split))


def test_generate_appstore_and_prepare(ray_session, tmp_path):
    assert (
        main(
            [
                "generate",
                "--out",
                str(tmp_path / "raw"),
                "--rows",
                "3000",
                "--users",
                "300",
                "--items",
                "100",
                "--seed",
                "7",
                "--shard-rows",
                "1000",
            ]
        )
        == 0
    )
    meta = json.loads((tmp_path / "raw" / "_generator.json").read_text())
    assert meta["shards"] == 3 and len(list((tmp_path / "raw").glob("part-*.parquet"))) == 3
    oa = meta["oracle_auc"]
    assert oa["full_logit"] > oa["without_planted_cross"] > oa["without_latent_taste"] > 0.5
    (tmp_path / "raw2").mkdir()
    (tmp_path / "raw2" / "part-00009.parquet").write_bytes(b"stale")  # an older run's shard: replaced
    again = generate_appstore(  # the same through a URI (a job on a cluster writes to s3://...)
        (tmp_path / "raw2").as_uri(), rows=3000, users=300, items=100, seed=7, shard_rows=1000, chunk_rows=50_000
    )
    assert sorted(p.name for p in (tmp_path / "raw2").iterdir())[-1] == "part-00002.parquet"
    assert pq.read_table(tmp_path / "raw").equals(pq.read_table(tmp_path / "raw2"))
    assert again["install_rate"] == meta["install_rate"]
    m = prepare(load_spec(SPECS / "appstore.yaml"), PrepareOptions([str(tmp_path / "raw")], str(tmp_path / "p")))
    assert m["rows_written"] == 3000
    t = pq.read_table(tmp_path / "p" / "train")
    assert t.schema.field("installed_x_app").type == pa.list_(pa.int64())
    installed = t.column("installed_apps").to_pylist()
    assert [len(x) for x in t.column("installed_x_app").to_pylist()] == [len(x) for x in installed]
    fs = FeatureSpace.load(tmp_path / "p")
    assert fs.feature_side("installed_x_app") == "pair" and fs.item_key == "item_key"
    assert {ti.side for ti in fs.deep_tables} == {"user", "item", "context"}


SPEC = {
    "label": {"condition": "y == 1", "values": [0, 1]},
    "features": [{"name": "b"}, {"name": "x", "kind": "numeric"}],
}


def _parquet(path, **cols):
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(cols), path)
    return path


def _csv(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


GOOD = "b,x,y\n" + "".join(f"v{i % 3},{i},{i % 2}\n" for i in range(40))


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: _parquet(d / "f.parquet", x=[1.0, 2.0], y=[0, 1]), r"f.parquet: missing column 'b'"),
        (
            lambda d: _parquet(d / "f.parquet", b=["a", "b"], x=["1.5", "abc"], y=[0, 1]),
            r"f.parquet: column 'x': not a number \(e.g. 'abc'",
        ),
        (
            lambda d: _parquet(d / "f.parquet", b=[["a"], ["b"]], x=[1.0, 2.0], y=[0, 1]),
            r"f.parquet.*column 'b': expected a categorical",
        ),
        (
            lambda d: _parquet(
                d / "f.parquet", b=pa.array([], pa.string()), x=pa.array([], pa.float64()), y=pa.array([], pa.int64())
            ),
            r"input is empty",
        ),
        (
            lambda d: _parquet(d / "f.parquet", b=pa.nulls(50, pa.string()), x=[1.0] * 50, y=[0] * 50),
            r"column 'b' \(feature 'b'\) is entirely null",
        ),
        (
            lambda d: _csv(d / "f.csv", GOOD + "v1,3,1,EXTRA\n"),
            r"f.csv: CSV parse error: Row #42: Expected 3 columns, got 4: v1,3,1,EXTRA",
        ),
        (
            lambda d: _csv(d / "f.csv", GOOD + "v1,3,7\n"),
            r"f.csv: label column 'y': value outside the declared set \[0, 1\] \(e.g. '7'",
        ),
    ],
    ids=[
        "missing-column",
        "wrong-type",
        "list-for-categorical",
        "empty",
        "all-null",
        "unparseable-csv-row",
        "label-outside-set",
    ],
)
def test_bad_input_is_a_clear_error(ray_session, tmp_path, make, message):
    src = make(tmp_path / "in")
    with pytest.raises(DataError, match=message):
        prepare(parse_spec(SPEC), PrepareOptions([str(src)], str(tmp_path / "out")))


def test_bad_rows_skipped_and_counted(ray_session, tmp_path):
    _csv(tmp_path / "in" / "a.csv", GOOD + "v1,3,1,EXTRA\n")
    _csv(tmp_path / "in" / "b.csv", GOOD + "v2,4,7\nv2,zz,1\n")
    # inputs and output as pyarrow filesystem URIs (file:// here; s3:// and gs:// take the same path)
    m = prepare(
        parse_spec(SPEC), PrepareOptions([f"file://{tmp_path}/in/*.csv"], f"file://{tmp_path}/out", on_bad_rows="skip")
    )
    assert FeatureSpace.load(f"file://{tmp_path}/out").content_hash == m["feature_space_hash"]
    assert m["rows_read"] == 82 and m["rows_written"] == 80
    assert m["skipped_rows"]["total"] == 3
    assert m["skipped_rows"]["by_reason"] == {
        "unparseable row": 1,
        "label column 'y': value outside the declared set [0, 1]": 1,
        "column 'x': not a number": 1,
    }


def test_criteo_tsv_prepare(ray_session, tmp_path):
    rng = np.random.default_rng(0)
    lines = []
    for i in range(60):
        ints = [str(int(v)) if rng.random() > 0.1 else "" for v in rng.integers(-2, 1000, 13)]
        cats = [f"{int(v):08x}" if rng.random() > 0.1 else "" for v in rng.integers(0, 6, 26)]
        lines.append("\t".join([str(i % 2), *ints, *cats]))
    (tmp_path / "day_0").write_text("\n".join(lines) + "\n")
    m = prepare(load_spec(SPECS / "criteo.yaml"), PrepareOptions([str(tmp_path / "day_0")], str(tmp_path / "out")))
    assert m["format"] == "criteo" and m["rows_written"] == 60
    t = pq.read_table(tmp_path / "out" / "train")
    assert len(t.column_names) == 13 + 26 + 1 + 1
    assert all(t.schema.field(f"I{i}").type == pa.float32() for i in range(1, 14))
    ints = np.stack([np.asarray(t.column(f"I{i}")) for i in range(1, 14)])
    assert np.isfinite(ints).all() and ints.min() >= 0 and ints.max() <= 1


@pytest.mark.slow
def test_bench_prepare_smoke(ray_session, tmp_path):
    """The benchmark command runs end to end and writes the keys the acceptance check reads
    (figures are printed, never asserted)."""
    out = tmp_path / "bench.json"
    assert (
        main(["bench", "prepare", "--rows", "3000", "--cardinality", "500", "--shard-rows", "1500", "--json", str(out)])
        == 0
    )
    res = json.loads(out.read_text())
    assert res["prepare_rows_per_s"] > 0 and res["pandas_rows_per_s"] > 0 and res["generate_rows_per_s"] > 0
    assert res["peak_rss_driver_mb"] > 0
