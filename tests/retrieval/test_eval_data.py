"""Evaluation inputs from prepared data: who is evaluated, what is excluded, baselines."""

from __future__ import annotations

import numpy as np
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.conftest import ROOT
from tests.retrieval.synth import prepare as prepare_synth
from widedeep.evaluation.topk import EvalData, baselines
from widedeep.features import FeatureSpace


def _pairs(t, pos_only: bool) -> set:
    if pos_only:
        t = t.filter(pc.equal(t.column("label"), 1.0))
    return set(zip(t.column("user_key").to_pylist(), t.column("item_key").to_pylist(), strict=True))


def _csr_items(csr):
    return zip(csr.row_ids(), csr.indices, strict=True)


def _csr_pairs(data, csr) -> set:
    return {(data.users[r], data.catalog.keys[i]) for r, i in _csr_items(csr)}


def test_eval_data_definitions(tmp_path):
    d = prepare_synth(tmp_path / "p", n_users=250, n_items=200, rows_per_user=30)
    fs = FeatureSpace.load(d / "feature_space.json")
    train, valid, test = (pq.read_table(d / s) for s in ("train", "valid", "test"))
    for split, past in (("valid", [train]), ("test", [train, valid])):  # the known past: every split before
        data = EvalData(fs, d / split)
        assert data.known == ("train",) if split == "valid" else ("train", "valid")
        seen = set().union(*(_pairs(t, False) for t in past))
        liked = set().union(*(_pairs(t, True) for t in past))
        evaluated = valid if split == "valid" else test
        want = {(u, i) for u, i in _pairs(evaluated, True) if (u, i) not in seen}
        assert _csr_pairs(data, data.relevant) == want  # relevant = the split's positives not seen before
        assert set(data.users) == {u for u, _ in want}
        users = set(data.users)
        assert _csr_pairs(data, data.exclude) == {(u, i) for u, i in seen if u in users}
        assert _csr_pairs(data, data.history) == {(u, i) for u, i in liked if u in users}
        # what the models fitted stays the train split's
        assert {(data.train_users[r], data.catalog.keys[i]) for r, i in _csr_items(data.train_pos)} == _pairs(
            train, True
        )
    assert valid.num_rows and not _pairs(valid, False) <= _pairs(train, False)  # valid adds to the past
    assert data.user_table.num_rows == len(data.users)
    assert data.user_table.column("user_id").to_pylist() == [
        train.filter(pc.equal(train.column("user_key"), u)).column("user_id")[0].as_py() for u in data.users
    ]
    b = baselines(data, 50)
    assert set(b) == {"most_popular", "item_knn", "ease"}
    assert b["item_knn"]["ndcg@10"] > b["most_popular"]["ndcg@10"]  # the planted segments are learnable


@pytest.mark.slow
@pytest.mark.ray
def test_movielens_layout_prepares_and_evaluates(tmp_path, ray_session):
    from tests.retrieval.movielens_like import write_ml100k
    from widedeep.data.prepare import PrepareOptions, prepare
    from widedeep.features.spec import load_spec

    ml = write_ml100k(tmp_path / "ml-100k", n_users=120, n_items=150, per_user=(20, 40))
    prepare(
        load_spec(ROOT / "platform/specs/movielens.yaml"),
        PrepareOptions(inputs=[str(ml)], out=str(tmp_path / "ml"), split="user-time:user_id:timestamp:0.8,0.1,0.1"),
    )
    fs = FeatureSpace.load(tmp_path / "ml" / "feature_space.json")
    data = EvalData(fs, tmp_path / "ml" / "test")
    assert 0 < len(data.users) <= 120 and data.catalog.n_items <= 150
    assert {"movie_id", "genres", "year_bucket"} <= set(data.catalog.table.column_names)
    b = baselines(data, 50)
    assert 0 < b["item_knn"]["recall@50"] <= 1 and np.isfinite(b["most_popular"]["ndcg@10"])


def test_prepared_data_at_a_uri_reads_like_a_local_path(tmp_path):
    """Retrieval reads prepared data at URIs (shared storage on clusters): a ``file://`` URI gives
    the same catalog, rows, histories and evaluation users as the local path; a bad URI is named."""
    import pytest

    from tests.retrieval import synth
    from widedeep.errors import DataError
    from widedeep.evaluation.topk import EvalData
    from widedeep.features import FeatureSpace
    from widedeep.retrieval.data import (
        build_catalog,
        data_root,
        read_split,
        split_columns,
    )
    from widedeep.train.config import config_from_dict
    from widedeep.train.retrieval_task import RetrievalTask

    root = synth.prepare(tmp_path / "d", n_users=30, n_items=40, rows_per_user=10)
    uri = "file://" + str(root)
    fs = FeatureSpace.load(uri)
    assert str(data_root(uri + "/test")) == uri
    assert split_columns(uri + "/train") == split_columns(root / "train")
    assert read_split(uri + "/train", ["user_key", "label"]).equals(read_split(root / "train", ["user_key", "label"]))
    a, b = build_catalog(fs, uri), build_catalog(fs, root)
    assert list(a.keys) == list(b.keys) and a.table.equals(b.table)

    def cfg(data):
        return config_from_dict({"data": data, "task": "retrieval", "task_config": {"history": 5}})

    task = RetrievalTask()
    ha, hb = task.training_data(fs, cfg(uri)).histories, task.training_data(fs, cfg(str(root))).histories
    assert list(ha.keys) == list(hb.keys) and (ha.ids == hb.ids).all()
    ea, eb = EvalData(fs, uri + "/test"), EvalData(fs, str(root / "test"))
    assert list(ea.users) == list(eb.users) and (ea.relevant.indices == eb.relevant.indices).all()
    with pytest.raises(DataError, match="nosuchscheme://x"):
        read_split("nosuchscheme://x/train", ["label"])
    with pytest.raises(DataError, match="no Parquet shards"):
        read_split(uri + "/missing", ["label"])
