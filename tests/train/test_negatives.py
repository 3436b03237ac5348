"""Sampled negatives for rankers trained on logs without impressions (``task_config.sampled_negatives``)."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.retrieval import synth
from widedeep.errors import ConfigError


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from widedeep.features import FeatureSpace

    root = synth.prepare(tmp_path_factory.mktemp("neg") / "d", n_users=60, n_items=40, rows_per_user=15)
    return root, FeatureSpace.load(root)


def _cfg(root, **task_config):
    from widedeep.train.config import config_from_dict

    return config_from_dict({"data": str(root), "task": "ranking", "task_config": task_config})


def test_negative_rows_pair_the_rows_user_with_catalog_items(prepared):
    from widedeep.train.negatives import NegativeSampler
    from widedeep.train.ranking_task import RankingTask

    root, fs = prepared
    cfg = _cfg(root, sampled_negatives=3)
    cols = RankingTask().required_columns(fs, cfg)
    rows = pq.read_table(root / "train" / "part-00000.parquet", columns=cols).slice(0, 50)
    s = NegativeSampler(fs, root, power=0.75)
    out = s.add(rows, 3, seed=0)
    assert out.num_rows == 4 * rows.num_rows and out.schema == rows.schema
    assert out.slice(0, rows.num_rows).equals(rows)  # the logged rows come first, unchanged
    neg = out.slice(rows.num_rows)
    assert set(neg.column("label").to_pylist()) == {0.0}
    src = np.repeat(np.arange(rows.num_rows), 3)
    # user side copied from the row; item side one of the catalog's items (as a whole row)
    for c in ("user_id", "country"):
        assert neg.column(c).to_pylist() == rows.column(c).take(pa.array(src)).to_pylist()
    catalog = {tuple(r.values()) for r in s.catalog.table.select(["app_id", "category"]).to_pylist()}
    assert {tuple(r.values()) for r in neg.select(["app_id", "category"]).to_pylist()} <= catalog
    # the user x item cross is recomputed from the new pair, exactly as serving builds candidate rows
    expect = fs.add_crosses(neg.drop_columns(["country_x_category"]), only=["country_x_category"])
    assert neg.column("country_x_category").to_pylist() == expect.column("country_x_category").to_pylist()
    # same batch -> same negatives (validation and evaluate are reproducible); another seed differs
    assert s.add(rows, 3, seed=0).equals(out)
    assert not s.add(rows, 3, seed=1).equals(out)


def test_sampling_power_moves_between_uniform_and_popularity(prepared):
    from widedeep.train.negatives import NegativeSampler

    root, fs = prepared
    uni, pop = NegativeSampler(fs, root, power=0.0), NegativeSampler(fs, root, power=1.0)
    rng = np.random.default_rng(0)
    n = uni.catalog.n_items
    f_uni = np.bincount(uni.sample(200_000, rng), minlength=n) / 200_000
    f_pop = np.bincount(pop.sample(200_000, rng), minlength=n) / 200_000
    np.testing.assert_allclose(f_uni, 1.0 / n, atol=0.004)
    want = np.diff(np.concatenate([[0.0], pop.cdf]))  # (count + 1) / sum
    np.testing.assert_allclose(f_pop, want, atol=0.004)
    assert want.max() > 2.0 / n  # the log is skewed: the test can tell them apart


def test_ranking_batches_with_negatives_train(prepared):
    """The task wires it: required columns, collate adds k rows per row with label 0, the loss is finite."""
    import torch

    from widedeep.train.ranking_task import RankingTask

    root, fs = prepared
    cfg = _cfg(root, sampled_negatives=2)
    task = RankingTask()
    rows = pq.read_table(root / "train" / "part-00000.parquet", columns=task.required_columns(fs, cfg)).slice(0, 32)
    batch = task.collate(rows, fs, cfg)
    assert batch.batch_size == 96
    assert float(batch.labels[32:].sum()) == 0.0
    assert torch.equal(batch.labels[:32], torch.tensor(rows.column("label").to_numpy()))
    model = task.build_model(fs, cfg)
    assert torch.isfinite(task.loss(model, batch, cfg))
    plain = task.collate(rows, fs, _cfg(root))
    assert plain.batch_size == 32


def test_bad_task_config_is_named():
    from widedeep.train.negatives import ranking_config

    with pytest.raises(ConfigError, match="sampled_negatives"):
        ranking_config({"task_config": {"sampled_negatives": -1}})
    with pytest.raises(ConfigError, match="sampling_power"):
        ranking_config({"task_config": {"sampling_power": 2.0}})
    with pytest.raises(ConfigError, match="negatives_per_row"):
        ranking_config({"task_config": {"negatives_per_row": 2}})
