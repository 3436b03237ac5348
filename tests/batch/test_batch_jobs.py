"""``widedeep predict`` and ``widedeep recommend`` on Ray Data, against in-process references.

One briefly trained Wide & Deep ranker is saved both as a checkpoint and inside a serving bundle:
``predict`` with either must give the scores of ``model(batch)`` on the same rows (the bundle's
ranker is a separate implementation, ``CandidateScorer.score_table``), bad rows must fail or be
skipped and counted exactly as ``prepare`` does, and ``recommend`` must list for every user what the
serving pipeline answers (``tests/loop`` checks the same against ``/v1/recommend`` over HTTP).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

pytestmark = [pytest.mark.loop, pytest.mark.ray]

ITEMS, USERS, ROWS = 150, 40, 1200
KEYS = ("user_id", "item_id")


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict:
    """The same trained ranker as a checkpoint and in a bundle, the raw rows, and its reference scores."""
    import torch

    from widedeep.data.collate import Collator
    from widedeep.export.bundle_writer import write_bundle
    from widedeep.export.from_checkpoints import bundle_contents
    from widedeep.export.synthetic import SPEC, _train_ranker, raw_tables
    from widedeep.features import parse_spec
    from widedeep.features.fit import fit_tables
    from widedeep.kernels import OptimizerConfig
    from widedeep.model.checkpoint import save_checkpoint
    from widedeep.model.two_tower import TwoTower, TwoTowerConfig
    from widedeep.model.wide_deep import ModelConfig, WideAndDeep

    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("batch")
    raw = raw_tables(ITEMS, USERS, ROWS, seed=0)
    fs = fit_tables(parse_spec(SPEC), [raw])
    prepared = fs.transform(raw)
    ranker = WideAndDeep(fs, ModelConfig(hidden=[16, 8]), seed=0)
    _train_ranker(ranker, fs, prepared, 20, 256, 0)
    ck = save_checkpoint(
        root / "ck",
        model=ranker,
        optimizer=None,
        feature_space=fs,
        config={"task": "ranking", "model": {"hidden": [16, 8]}},
        metrics={},
        task="ranking",
        state={"epoch": 1},
    )
    retriever = TwoTower(
        fs, TwoTowerConfig(embedding_dim=8, hidden=[16], output_dim=8), OptimizerConfig("rowwise_adagrad", lr=0.05)
    )
    retriever.eval()
    bundle = write_bundle(root / "bundle", bundle_contents(fs, ranker, retriever, prepared), index_kind="exact")
    with torch.no_grad():
        batch = Collator(fs, require_label=False)(fs.transform(raw, require_label=False))
        want = ranker.predict(ranker(batch)).numpy()
    # two Parquet files of several row groups: several read units, several actors
    (root / "raw").mkdir()
    pq.write_table(raw.slice(0, 700), root / "raw" / "a.parquet", row_group_size=200)
    pq.write_table(raw.slice(700), root / "raw" / "b.parquet", row_group_size=200)
    return {"root": root, "ck": str(ck), "bundle": str(bundle), "raw": raw, "want": want}


def _opts(**kw):
    from widedeep.batch.predict import PredictOptions

    return PredictOptions(**{"keys": KEYS, "unit_rows": 400, "batch_size": 128, "workers": 2, **kw})


def _read(out: Path) -> tuple[pa.Table, dict]:
    files = sorted(out.glob("part-*.parquet"))
    return pa.concat_tables(pq.read_table(f) for f in files), json.loads((out / "_predict.json").read_text())


def test_predict_with_checkpoint_and_bundle_equals_in_process_scoring(ray_session, models, tmp_path):
    from widedeep.batch.predict import predict

    raw, want = models["raw"], models["want"]
    for name in ("ck", "bundle"):
        out = tmp_path / name
        m = predict(_opts(inputs=[str(models["root"] / "raw")], model=models[name], out=str(out)))
        got, manifest = _read(out)
        assert m == manifest and manifest["rows_read"] == manifest["rows_written"] == ROWS
        assert manifest["skipped_rows"]["total"] == 0 and len(manifest["files"]) >= 3
        assert got.column_names == [*KEYS, "score"]
        # units in input order, rows in order within a unit: row i of the output is row i of the input
        for k in KEYS:
            assert got.column(k).to_pylist() == raw.column(k).to_pylist()
        np.testing.assert_allclose(got.column("score").to_numpy(), want, rtol=1e-5, atol=1e-6)
        assert float(np.std(want)) > 1e-3  # the reference is not a constant


def test_bad_rows_fail_naming_the_value_or_are_skipped_and_counted(ray_session, models, tmp_path):
    from widedeep.batch.predict import predict
    from widedeep.errors import DataError

    raw, want = models["raw"], models["want"]
    bad_rows = [5, 900]
    age = [str(a) for a in raw.column("age").to_pylist()]
    for r in bad_rows:
        age[r] = "forty"
    bad = raw.set_column(raw.column_names.index("age"), "age", pa.array(age))
    path = tmp_path / "bad.parquet"
    pq.write_table(bad, path, row_group_size=300)
    with pytest.raises(DataError) as e:
        predict(_opts(inputs=[str(path)], model=models["ck"], out=str(tmp_path / "err")))
    assert str(path) in str(e.value) and "'age'" in str(e.value) and "forty" in str(e.value)
    assert "--on-bad-rows skip" in str(e.value)  # the same advice prepare gives

    m = predict(_opts(inputs=[str(path)], model=models["ck"], out=str(tmp_path / "skip"), on_bad_rows="skip"))
    got, _ = _read(tmp_path / "skip")
    keep = np.ones(ROWS, bool)
    keep[bad_rows] = False
    assert m["rows_read"] == ROWS and m["rows_written"] == ROWS - 2 and m["skipped_rows"]["total"] == 2
    assert got.column("user_id").to_pylist() == raw.column("user_id").filter(pa.array(keep)).to_pylist()
    np.testing.assert_allclose(got.column("score").to_numpy(), want[keep], rtol=1e-5, atol=1e-6)


def test_predict_input_errors_name_what_is_wrong(models, tmp_path):
    """Checked before or without Ray (the same per-unit code the actors run)."""
    from widedeep.batch.predict import predict_in_process
    from widedeep.errors import CheckpointError, DataError

    raw_dir = str(models["root"] / "raw")
    with pytest.raises(DataError, match=r"key column\(s\) \['order_id'\] not in the input"):
        predict_in_process(_opts(inputs=[raw_dir], model=models["ck"], out=str(tmp_path / "o"), keys=("order_id",)))
    with pytest.raises(CheckpointError, match="neither a checkpoint"):
        predict_in_process(_opts(inputs=[raw_dir], model=str(tmp_path), out=str(tmp_path / "o")))
    with pytest.raises(CheckpointError, match="pass the ranking checkpoint to use a GPU"):
        predict_in_process(_opts(inputs=[raw_dir], model=models["bundle"], out=str(tmp_path / "o"), gpus_per_worker=1))
    m = predict_in_process(_opts(inputs=[raw_dir], model=models["ck"], out=str(tmp_path / "o")))
    got, _ = _read(tmp_path / "o")
    assert m["rows_written"] == ROWS
    np.testing.assert_allclose(got.column("score").to_numpy(), models["want"], rtol=1e-5, atol=1e-6)


def test_recommend_equals_the_serving_pipeline_for_every_user(ray_session, models, tmp_path):
    from widedeep.batch.recommend import RecommendOptions, recommend
    from widedeep.serve.bundle import load_bundle
    from widedeep.serve.pipeline import RecommendPipeline

    k, n = 5, 30
    s = recommend(RecommendOptions(bundle=models["bundle"], out=str(tmp_path / "all"), k=k, candidates=n, batch_size=8))
    got = pq.read_table(tmp_path / "all")
    assert s["users"] == USERS and s["rows"] == got.num_rows == USERS * k
    assert got.column_names == ["user", "rank", "item", "score"]
    pipe = RecommendPipeline(load_bundle(models["bundle"]))
    for user in sorted(set(got.column("user").to_pylist())):
        mine = got.filter(pc.equal(got.column("user"), user)).sort_by("rank")
        want = pipe.recommend({"user_id": user}, {}, k=k, n=n)
        assert mine.column("rank").to_pylist() == list(range(1, k + 1))
        assert mine.column("item").to_pylist() == [w[0] for w in want], user
        np.testing.assert_allclose(mine.column("score").to_numpy(), [w[1] for w in want], rtol=1e-5)
    # a list of users with a context; a user the bundle does not know gets serving's cold-start answer
    ctx = {"device": "ios"}
    s = recommend(
        RecommendOptions(
            bundle=models["bundle"], out=str(tmp_path / "some"), users=("u3", "nobody"), k=k, candidates=n, context=ctx
        )
    )
    got = pq.read_table(tmp_path / "some")
    assert s["users"] == 2 and set(got.column("user").to_pylist()) == {"u3", "nobody"}
    for user in ("u3", "nobody"):
        mine = got.filter(pc.equal(got.column("user"), user)).sort_by("rank")
        assert mine.column("item").to_pylist() == [w[0] for w in pipe.recommend({"user_id": user}, ctx, k=k, n=n)]


def test_csv_rows_that_do_not_parse_fail_or_are_skipped_and_counted(ray_session, adult_path, tmp_path):
    """A CSV row with a field too many: the reader's error (named file, row) or, with skip, a row
    counted as ``unparseable row``, as ``prepare`` counts it; the other rows scored as in process."""
    import pyarrow.csv as pacsv
    import torch

    from tests.conftest import ROOT
    from widedeep.batch.predict import predict
    from widedeep.data.collate import Collator
    from widedeep.errors import DataError
    from widedeep.features import load_spec
    from widedeep.features.fit import fit_tables
    from widedeep.model.checkpoint import save_checkpoint
    from widedeep.model.wide_deep import ModelConfig, WideAndDeep

    raw = pq.read_table(adult_path).slice(0, 600)
    fs = fit_tables(load_spec(ROOT / "platform" / "specs" / "adult.yaml"), [raw])
    torch.manual_seed(0)
    model = WideAndDeep(fs, ModelConfig(hidden=[8]), seed=0).eval()
    for tbe in model.embedding_bags():
        tbe.weight.data.normal_(0, 0.5)
    ck = save_checkpoint(
        tmp_path / "ck", model=model, optimizer=None, feature_space=fs,
        config={"task": "ranking", "model": {"hidden": [8]}}, metrics={}, task="ranking", state={},
    )  # fmt: skip
    path = tmp_path / "adult.csv"
    pacsv.write_csv(raw, path)
    lines = path.read_text().splitlines()
    lines.insert(101, lines[100] + ",EXTRA")  # data row 100 again, with one field too many
    path.write_text("\n".join(lines) + "\n")
    opts = {"model": str(ck), "inputs": [str(path)], "keys": ("age", "occupation"), "workers": 1, "format": "csv"}
    with pytest.raises(DataError, match=r"adult.csv: CSV parse error: .*Expected 15 columns, got 16"):
        predict(_opts(**opts, out=str(tmp_path / "err")))
    m = predict(_opts(**opts, out=str(tmp_path / "skip"), on_bad_rows="skip"))
    assert m["rows_read"] == 601 and m["rows_written"] == 600
    assert m["skipped_rows"] == {"total": 1, "by_reason": {"unparseable row": 1}}
    got, _ = _read(tmp_path / "skip")
    with torch.no_grad():
        want = model.predict(model(Collator(fs, require_label=False)(fs.transform(raw, require_label=False))))
    assert got.column("occupation").to_pylist() == raw.column("occupation").to_pylist()
    np.testing.assert_allclose(got.column("score").to_numpy(), want.numpy(), rtol=1e-5, atol=1e-6)
