"""History crosses (``CrossedFeature.history``): the user's earlier positives x the row's item,
computed by one transform (``widedeep.retrieval.liked``) at training, evaluation and serving."""

from __future__ import annotations

import copy

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.retrieval import synth
from widedeep.errors import FeatureSpecError

HIST_SPEC = copy.deepcopy(synth.SPEC)
HIST_SPEC["features"] += [
    {"name": "liked_x_app", "kind": "crossed", "history": "app_id", "inputs": ["app_id"], "hash_buckets": 4096},
    {
        "name": "liked_cat_x_cat",
        "kind": "crossed",
        "history": "category",
        "inputs": ["category"],
        "hash_buckets": 256,
        "history_cap": 20,
        "max_pairs": 3,
    },
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from widedeep.features import FeatureSpace

    root = synth.prepare(
        tmp_path_factory.mktemp("liked") / "d", spec=HIST_SPEC, keep_time=True, n_users=50, n_items=40, rows_per_user=20
    )
    return root, FeatureSpace.load(root)


def test_spec_validates_history_crosses():
    from widedeep.features import parse_spec

    bad = copy.deepcopy(HIST_SPEC)
    bad["features"][-1]["history"] = "nope"
    with pytest.raises(FeatureSpecError, match=r"history: unknown feature 'nope'"):
        parse_spec(bad)
    bad["features"][-1]["history"] = "country"  # user side: not the items the user liked
    with pytest.raises(FeatureSpecError, match="must be an item-side"):
        parse_spec(bad)
    bad["features"][-1] = {"name": "x", "kind": "crossed", "inputs": ["app_id"], "hash_buckets": 8}
    with pytest.raises(FeatureSpecError, match="at least two features"):
        parse_spec(bad)


def test_prepare_leaves_history_crosses_out(prepared):
    root, fs = prepared
    cols = pq.read_schema(root / "train" / "part-00000.parquet").names
    assert "country_x_category" in cols and "liked_x_app" not in cols and "liked_cat_x_cat" not in cols
    assert [f.name for f in fs.history_crosses] == ["liked_x_app", "liked_cat_x_cat"]
    assert fs.feature_side("liked_x_app") == "pair" and fs.is_multivalent("liked_x_app")
    assert "liked_x_app" in {t.column for t in fs.wide_tables}


def _positives(root):
    t = pq.read_table(root / "train" / "part-00000.parquet")
    return t.filter(pa.compute.greater(t.column("label"), 0.5))


def test_liked_columns_are_the_earlier_positives_most_recent_first(prepared):
    from widedeep.retrieval.liked import liked_from

    root, fs = prepared
    lv = liked_from(fs, root)
    pos = _positives(root)
    rows = pq.read_table(root / "valid" / "part-00000.parquet").slice(0, 40)
    # a time in the middle of each user's train history: only what came before counts
    users = rows.column("user_key").to_pylist()
    before = []
    for u in users:
        ts = sorted(pos.filter(pa.compute.equal(pos.column("user_key"), u)).column("timestamp").to_pylist())
        before.append(ts[len(ts) // 2] if ts else 0)
    cols = lv.columns(rows.column("user_key"), before=np.asarray(before))
    cat_of = dict(zip(pos.column("app_id").to_pylist(), pos.column("category").to_pylist(), strict=True))
    checked = 0
    for r, u in enumerate(users):
        mine = pos.filter(pa.compute.equal(pos.column("user_key"), u))
        order = np.argsort(mine.column("timestamp").to_numpy(), kind="stable")
        apps = np.asarray(mine.column("app_id").to_pylist())[order]
        ts = mine.column("timestamp").to_numpy()[order]
        want = [int(a) for a in apps[ts < before[r]][::-1][:20]]
        assert cols["__liked__.app_id"][r].as_py() == want
        cats = list(dict.fromkeys(cat_of[a] for a in want))
        assert cols["__liked__.category"][r].as_py() == cats
        checked += bool(want)
    assert checked > 10
    # an unknown user has no history
    none = lv.columns(pa.array(["nobody"]))
    assert none["__liked__.app_id"][0].as_py() == []


def test_history_crosses_pair_every_liked_value_with_the_item_capped(prepared):
    from widedeep.features import hashing
    from widedeep.retrieval.liked import with_liked

    _, fs = prepared
    t = pa.table(
        {
            "app_id": pa.array([3, 4], pa.int64()),
            "category": pa.array([1, 2], pa.int64()),
            "__liked__.app_id": pa.array([[7, 9], []], pa.list_(pa.int64())),
            "__liked__.category": pa.array([[5, 6, 7, 8], [1]], pa.list_(pa.int64())),
        }
    )
    out = with_liked(fs, t, {})
    pair = [hashing.bucket(hashing.combine_ids([np.array([h]), np.array([3])]), 4096)[0] for h in (7, 9)]
    assert out.column("liked_x_app").to_pylist() == [pair, []]
    cats = out.column("liked_cat_x_cat").to_pylist()
    assert [len(c) for c in cats] == [3, 1]  # max_pairs keeps the 3 most recent values' pairs
    first = [hashing.bucket(hashing.combine_ids([np.array([h]), np.array([1])]), 256)[0] for h in (5, 6, 7)]
    assert cats[0] == first


def test_ranking_batches_carry_causal_history_crosses(prepared):
    """Training rows get the crosses of the positives strictly before them; negatives keep the
    row's history and recompute the crosses with their own item."""
    import torch

    from widedeep.train.config import config_from_dict
    from widedeep.train.ranking_task import RankingTask

    root, fs = prepared
    cfg = config_from_dict({"data": str(root), "task": "ranking", "task_config": {"sampled_negatives": 1}})
    task = RankingTask()
    cols = task.required_columns(fs, cfg)
    assert "liked_x_app" not in cols and {"user_key", "timestamp", "app_id"} <= set(cols)
    rows = pq.read_table(root / "train" / "part-00000.parquet", columns=cols).slice(0, 64)
    t = task.with_history(rows, fs, cfg)
    pos = _positives(root)
    r = 63
    u, ts = rows.column("user_key")[r].as_py(), rows.column("timestamp")[r].as_py()
    mine = pos.filter(pa.compute.equal(pos.column("user_key"), u))
    earlier = mine.filter(pa.compute.less(mine.column("timestamp"), ts))
    assert sorted(t.column("__liked__.app_id")[r].as_py()) == sorted(earlier.column("app_id").to_pylist()[-20:])
    batch = task.collate(rows, fs, cfg)
    assert batch.batch_size == 128
    model = task.build_model(fs, cfg)
    assert torch.isfinite(task.loss(model, batch, cfg))


def test_retrieval_negatives_are_unseen_items_the_item_source_ranks_high(prepared):
    from widedeep.train.config import config_from_dict
    from widedeep.train.negatives import NegativeSampler, RetrievalNegatives, ranking_config

    root, fs = prepared
    cfg = config_from_dict(
        {"data": str(root), "task": "ranking", "task_config": {"retrieval_negatives": 2, "retrieval_pool": 5}}
    )
    base = NegativeSampler(fs, root, 0.75)
    rn = RetrievalNegatives(base, root, ranking_config(cfg))
    from widedeep.train.ranking_task import RankingTask

    rows = RankingTask().with_history(pq.read_table(root / "valid" / "part-00000.parquet"), fs, cfg)
    neg = rn.negatives(rows, 2, seed=0)
    assert neg.num_rows == 2 * rows.num_rows and set(neg.column("label").to_pylist()) == {0.0}
    train = pq.read_table(root / "train" / "part-00000.parquet")
    keys = base.catalog.keys
    src = np.repeat(np.arange(rows.num_rows), 2)
    app_to_row = dict(zip(base.catalog.table.column("app_id").to_pylist(), range(len(keys)), strict=False))
    from_pool = 0
    for j in range(0, neg.num_rows, 7):
        r = src[j]
        u = rows.column("user_key")[r].as_py()
        seen = set(train.filter(pa.compute.equal(train.column("user_key"), u)).column("app_id").to_pylist())
        a = neg.column("app_id")[j].as_py()
        assert a not in seen and a != rows.column("app_id")[r].as_py()  # never an item the user touched
        # the item is among the item-to-item source's top 5 for the user's earlier positives
        pos_rows = train.filter(
            pa.compute.and_(
                pa.compute.equal(train.column("user_key"), u), pa.compute.greater(train.column("label"), 0.5)
            )
        )
        liked = [app_to_row[x] for x in pos_rows.column("app_id").to_pylist()][-50:]
        if not liked:
            continue
        sc = np.asarray(rn.neighbors.sim_t.to_dense()[:, liked].sum(1))
        sc[[app_to_row[x] for x in seen if x in app_to_row]] = -np.inf
        sc[app_to_row[rows.column("app_id")[r].as_py()]] = -np.inf
        top = set(np.argsort(-sc, kind="stable")[:5][np.sort(-sc)[:5] < 0].tolist())
        if top:
            assert app_to_row[a] in top or np.isclose(sc[app_to_row[a]], np.sort(sc)[-5])
            from_pool += 1
    assert from_pool > 5
