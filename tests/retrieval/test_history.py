"""User histories as a user-tower input: ordering, cap, leave-one-out, causal cut, and the tower/collate wiring."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.retrieval import synth
from widedeep.errors import ConfigError
from widedeep.model.two_tower import HISTORY_COLUMN, history_source
from widedeep.retrieval.history import Histories, with_history


def _log() -> pa.Table:
    # user 1: items 11 (t=1), 10 (t=5), 13 (t=9) positive, 12 negative; user 2: 20, 21 at t=2
    return pa.table(
        {
            "user_key": [1, 1, 1, 2, 2, 1],
            "movie_id": [10, 11, 12, 20, 21, 13],
            "label": [1.0, 1.0, 0.0, 1.0, 1.0, 1.0],
            "timestamp": [5, 1, 3, 2, 2, 9],
        }
    )


def test_histories_are_positives_in_time_order_latest_cap():
    h = Histories.from_rows(_log(), "user_key", "movie_id")
    assert h.lists(np.array([1, 2, 3]), 10).to_pylist() == [[11, 10, 13], [20, 21], []]
    assert h.lists(np.array([1, 2, 3]), 2).to_pylist() == [[10, 13], [20, 21], []]  # the 2 latest
    assert h.lists(np.array([2, 1]), 1).to_pylist() == [[21], [13]]


def test_file_order_without_timestamps():
    h = Histories.from_rows(_log().drop_columns(["timestamp"]), "user_key", "movie_id")
    assert h.times is None
    assert h.lists(np.array([1]), 10).to_pylist() == [[10, 11, 13]]


def test_training_rows_leave_out_their_item_and_see_only_the_past():
    h = Histories.from_rows(_log(), "user_key", "movie_id")
    got = h.lists(np.array([1, 1, 1, 2]), 10, leave_out=np.array([10, 13, 99, 20]), before=np.array([9, 10, 5, 3]))
    # (u1, t<9, not 10) -> [11]; (u1, t<10, not 13) -> [11, 10]; (u1, t<5) -> [11]; (u2, t<3, not 20) -> [21]
    assert got.to_pylist() == [[11], [11, 10], [11], [21]]
    # without times the whole history minus the row's item
    h2 = Histories.from_rows(_log().drop_columns(["timestamp"]), "user_key", "movie_id")
    assert h2.lists(np.array([1]), 10, leave_out=np.array([11]), before=np.array([0])).to_pylist() == [[10, 13]]


def test_with_history_replaces_the_column():
    h = Histories.from_rows(_log(), "user_key", "movie_id")
    t = pa.table({"x": [1, 2]})
    t = with_history(with_history(t, h, np.array([2, 1]), 5), h, np.array([1, 2]), 1)
    assert t.column_names == ["x", HISTORY_COLUMN]
    assert t.column(HISTORY_COLUMN).to_pylist() == [[13], [21]]


def test_history_needs_the_item_key_as_a_categorical_feature(tmp_path):
    from widedeep.features import FeatureSpace

    root = synth.prepare(tmp_path / "d", n_users=30, n_items=20, rows_per_user=10)
    fs = FeatureSpace.load(root)
    col, n = history_source(fs)
    assert col == "app_id" and n == fs.num_rows("app_id")
    bad = SimpleNamespace(spec=SimpleNamespace(item_key="app"), features=[], deep_tables=[], wide_tables=[])
    with pytest.raises(ConfigError, match="item key 'app'"):
        history_source(bad)


def test_retrieval_batches_carry_each_rows_history(tmp_path):
    """collate with ``history``: the user tower gets the user's other training positives, and the
    model's user tower has the pooled history table."""
    from widedeep.features import FeatureSpace
    from widedeep.train.config import config_from_dict
    from widedeep.train.retrieval_task import RetrievalTask

    task = RetrievalTask()

    root = synth.prepare(tmp_path / "d", n_users=40, n_items=30, rows_per_user=12)
    fs = FeatureSpace.load(root)
    cfg = config_from_dict({"data": str(root), "task": "retrieval", "task_config": {"history": 4, "hidden": []}})
    cols = task.required_columns(fs, cfg)
    assert "user_key" in cols and "app_id" in cols and HISTORY_COLUMN not in cols
    rows = pq.read_table(root / "train" / "part-00000.parquet", columns=cols)
    batch = task.collate(rows.slice(0, 64), fs, cfg)
    model = task.build_model(fs, cfg)
    assert HISTORY_COLUMN in model.user_features.columns
    u, _v = model(batch.user, batch.item)
    assert u.shape[0] == batch.batch_size and torch.isfinite(u).all()
    # the history bag of row 0 = the user's other positives (latest 4): rebuild it by hand
    pos = rows.filter(pa.compute.equal(rows.column("label"), 1.0))
    u0, i0 = pos.column("user_key")[0].as_py(), pos.column("app_id")[0].as_py()
    mine = [r["app_id"] for r in pos.to_pylist() if r["user_key"] == u0]
    mine.remove(i0)
    n_tables = len(model.user_features.tables)
    h = n_tables - 1  # the history table is the tower's last one
    b = batch.batch_size
    offs = batch.user.ids.offsets
    got = batch.user.ids.values[offs[h * b] : offs[h * b + 1]].tolist()
    assert got == mine[-4:]
