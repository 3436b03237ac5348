"""History features (``kind: history``): the user's latest liked values as a deep input, read from
the history crosses' liked column (``widedeep.retrieval.liked``): the same values at training
(causal), evaluation and serving (``tests/serve/test_history_crosses_serving.py``)."""

from __future__ import annotations

import copy

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import torch

from tests.retrieval import synth
from tests.retrieval.test_liked import HIST_SPEC
from tests.support import with_changed_vocabulary
from widedeep.errors import FeatureSpecError

DEEP_SPEC = copy.deepcopy(HIST_SPEC)
DEEP_SPEC["features"] += [
    {"name": "liked_apps", "kind": "history", "history": "app_id", "history_cap": 20, "dim": 8},
    {"name": "liked_cats", "kind": "history", "history": "category", "dim": 4, "combiner": "sum"},
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from widedeep.features import FeatureSpace

    root = synth.prepare(
        tmp_path_factory.mktemp("deephist") / "d",
        spec=DEEP_SPEC,
        keep_time=True,
        n_users=50,
        n_items=40,
        rows_per_user=20,
    )
    return root, FeatureSpace.load(root)


def _spec_with(feature: dict) -> dict:
    bad = copy.deepcopy(DEEP_SPEC)
    bad["features"][-1] = feature
    return bad


def test_spec_validates_history_features():
    from widedeep.features import parse_spec

    ok = {"name": "h", "kind": "history", "history": "app_id"}
    with pytest.raises(FeatureSpecError, match=r"features\[\d+\]\.history: no history cross over 'country'"):
        parse_spec(_spec_with(ok | {"history": "country"}))
    with pytest.raises(FeatureSpecError, match=r"features\[\d+\]\.history: no history cross over 'nope'"):
        parse_spec(_spec_with(ok | {"history": "nope"}))
    with pytest.raises(FeatureSpecError, match=r"features\[\d+\]\.history_cap: 10 differs .* \(20\)"):
        parse_spec(_spec_with(ok | {"history_cap": 10}))
    with pytest.raises(FeatureSpecError, match="history_cap: must be >= 1"):
        parse_spec(_spec_with(ok | {"history_cap": 0}))
    with pytest.raises(FeatureSpecError, match="dim: must be > 0"):
        parse_spec(_spec_with(ok | {"dim": 0}))
    with pytest.raises(FeatureSpecError, match="wide"):  # deep only: no such key
        parse_spec(_spec_with(ok | {"wide": True}))
    with pytest.raises(FeatureSpecError, match="combiner"):
        parse_spec(_spec_with(ok | {"combiner": "max"}))
    parse_spec(_spec_with(ok))  # the cap defaults to the crosses'


def test_history_feature_is_a_deep_user_table_over_the_liked_column(prepared):
    from widedeep.model.two_tower import USER_SIDES, tower_features
    from widedeep.retrieval.data import side_columns

    root, fs = prepared
    assert "liked_apps" not in pq.read_schema(root / "train" / "part-00000.parquet").names  # prepare leaves it out
    deep = {t.name: t for t in fs.deep_tables}
    t = deep["deep/liked_apps"]
    assert (t.column, t.num_rows, t.dim, t.pooling, t.multivalent, t.side) == (
        "__liked__.app_id",
        fs.num_rows("app_id"),
        8,
        "mean",
        True,
        "user",
    )
    c = deep["deep/liked_cats"]
    assert (c.column, c.num_rows, c.pooling) == ("__liked__.category", fs.num_rows("category"), "sum")
    assert not any(w.name.endswith("liked_apps") for w in fs.wide_tables)
    assert fs.liked_columns == ["__liked__.app_id", "__liked__.category"]
    # prepared columns only: the user table and the retriever's user tower never read it
    assert "liked_apps" not in side_columns(fs, ("user",))
    assert "__liked__.app_id" not in tower_features(fs, USER_SIDES, "user").columns


def _deep_bags(batch, fs, name: str) -> list[list[int]]:
    """The ids of deep table ``name`` per row of a collated batch (table-major jagged layout)."""
    j = [t.name for t in fs.deep_tables].index(name)
    b = batch.batch_size
    vals, offs = batch.deep.values.numpy(), batch.deep.offsets.numpy()
    return [vals[offs[j * b + r] : offs[j * b + r + 1]].tolist() for r in range(b)]


def test_training_rows_get_their_causal_history_as_the_deep_input(prepared):
    """Each training row's bag is the user's positives strictly before the row (most recent
    first, at most 20); each sampled negative keeps its row's history."""
    from widedeep.train.config import config_from_dict
    from widedeep.train.ranking_task import RankingTask

    root, fs = prepared
    cfg = config_from_dict({"data": str(root), "task": "ranking", "task_config": {"sampled_negatives": 1}})
    task = RankingTask()
    cols = task.required_columns(fs, cfg)
    assert not {"liked_apps", "__liked__.app_id"} & set(cols)
    rows = pq.read_table(root / "train" / "part-00000.parquet", columns=cols).slice(0, 200)
    batch = task.collate(rows, fs, cfg)
    bags = _deep_bags(batch, fs, "deep/liked_apps")
    assert len(bags) == 400
    train = pq.read_table(root / "train" / "part-00000.parquet")
    pos = train.filter(pc.greater(train.column("label"), 0.5))
    nonempty = 0
    for r in range(rows.num_rows):
        u, ts = rows.column("user_key")[r].as_py(), rows.column("timestamp")[r].as_py()
        mine = pos.filter(pc.and_(pc.equal(pos.column("user_key"), u), pc.less(pos.column("timestamp"), ts)))
        order = np.argsort(mine.column("timestamp").to_numpy(), kind="stable")
        want = mine.column("app_id").to_numpy()[order][::-1][:20].tolist()
        assert bags[r] == want, r
        assert bags[rows.num_rows + r] == want  # the row's negative: same user, same moment
        nonempty += bool(want)
    assert 50 < nonempty < rows.num_rows  # early rows have no history yet, later ones do


def test_model_trains_the_history_table(prepared):
    """Backward reaches the history table: the rows of ids in the batch's bags move, the others
    do not (the kernel's fused row-wise Adagrad updates in place)."""
    from widedeep.train.config import config_from_dict
    from widedeep.train.ranking_task import RankingTask

    root, fs = prepared
    cfg = config_from_dict(
        {"data": str(root), "task": "ranking", "model": {"hidden": [8]}, "task_config": {"sampled_negatives": 1}}
    )
    task = RankingTask()
    rows = pq.read_table(root / "train" / "part-00000.parquet", columns=task.required_columns(fs, cfg))
    torch.manual_seed(0)
    model = task.build_model(fs, cfg)
    w0 = model.deep_tbe.table_weight("deep/liked_apps").clone()
    batch = task.collate(rows.slice(0, 256), fs, cfg)
    task.loss(model, batch, cfg).backward()
    w1 = model.deep_tbe.table_weight("deep/liked_apps")
    used = sorted({i for bag in _deep_bags(batch, fs, "deep/liked_apps") for i in bag})
    moved = torch.nonzero((w1 != w0).any(1)).flatten().tolist()
    assert used and moved == used


def test_evaluation_scores_with_the_known_past_as_the_deep_input(prepared):
    """``ranker_logits`` on the valid split: the history is the user's train positives (most
    recent first), brute-forced here, and it moves the logits."""
    from widedeep.data.collate import Collator
    from widedeep.evaluation.topk import EvalData, ranker_logits
    from widedeep.model.wide_deep import WideAndDeep

    root, fs = prepared
    data = EvalData(fs, root / "valid")
    torch.manual_seed(0)
    ranker = WideAndDeep(fs).eval()
    with torch.no_grad():
        for p in ranker.parameters():
            p.normal_(0, 0.5)
    n_users = min(8, len(data.users))
    cand = np.tile(np.arange(6, dtype=np.int64), (n_users, 1))
    got = ranker_logits(ranker, fs, data, cand)

    train = pq.read_table(root / "train" / "part-00000.parquet")
    pos = train.filter(pc.greater(train.column("label"), 0.5))
    t = (
        data.user_table.slice(0, n_users)
        .select(["user_id", "country"])
        .take(pa.array(np.repeat(np.arange(n_users), 6)))
    )
    it = data.catalog.table.take(pa.array(cand.ravel()))
    for c in ("app_id", "category"):
        t = t.append_column(c, it.column(c))
    hist, cats = [], []
    cat_of = dict(zip(pos.column("app_id").to_pylist(), pos.column("category").to_pylist(), strict=True))
    for u in data.users[:n_users]:
        mine = pos.filter(pc.equal(pos.column("user_key"), u))
        order = np.argsort(mine.column("timestamp").to_numpy(), kind="stable")
        h = mine.column("app_id").to_numpy()[order][::-1][:20].tolist()
        hist += [h] * 6
        cats += [list(dict.fromkeys(cat_of[a] for a in h))] * 6
    assert any(hist)
    t = t.append_column("__liked__.app_id", pa.array(hist, pa.list_(pa.int64())))
    t = t.append_column("__liked__.category", pa.array(cats, pa.list_(pa.int64())))
    t = fs.add_crosses(t)
    collate = Collator(fs, require_label=False)
    with torch.no_grad():
        want = ranker(collate(t)).float().numpy().reshape(n_users, 6)
        empty = pa.array([[]] * t.num_rows, pa.list_(pa.int64()))
        no_hist = t.set_column(t.column_names.index("__liked__.app_id"), "__liked__.app_id", empty)
        without = ranker(collate(no_hist)).float().numpy().reshape(n_users, 6)  # crosses kept
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert not np.allclose(want, without, atol=1e-4)  # the deep history moves the scores


def test_warm_start_maps_the_history_table_by_its_history_features_vocabulary(prepared, tmp_path):
    """A retrain whose item vocabulary changed keeps each item's learnt history row (the table's
    rows are ids of ``app_id``, so they follow that vocabulary, not row for row)."""
    from widedeep.model.checkpoint import save_checkpoint
    from widedeep.train.config import config_from_dict
    from widedeep.train.ranking_task import RankingTask
    from widedeep.train.warm_start import warm_start

    root, fs = prepared
    cfg = config_from_dict({"data": str(root), "task": "ranking", "model": {"hidden": [8]}})
    task = RankingTask()
    torch.manual_seed(0)
    old = task.build_model(fs, cfg)
    ck = save_checkpoint(
        tmp_path / "old",
        model=old,
        optimizer=None,
        feature_space=fs,
        config=cfg.to_dict(),
        metrics={},
        task="ranking",
        state={},
    )
    vocab, new_vocab, fs_new = with_changed_vocabulary(fs, "app_id")
    torch.manual_seed(1)
    new = task.build_model(fs_new, cfg)
    warm_start(new, fs_new, str(ck))
    w_old = old.deep_tbe.table_weight("deep/liked_apps")
    w_new = new.deep_tbe.table_weight("deep/liked_apps")
    for i, v in enumerate(new_vocab[1:], start=1):
        assert torch.equal(w_new[i], w_old[vocab.index(v)]), v
    assert torch.equal(w_new[fs.oov_id("app_id")], w_old[fs.oov_id("app_id")])
