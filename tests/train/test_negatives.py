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
    # a cached split is collated once only when a batch is its logged rows: negatives of either
    # kind are drawn per batch (retrieval negatives alone were once collated away)
    assert task.collate_split(rows, fs, _cfg(root)) is not None
    for tc in ({"sampled_negatives": 2}, {"retrieval_negatives": 1}):
        assert task.collate_split(rows, fs, _cfg(root, **tc)) is None


def test_listwise_term_ranks_each_positive_among_its_own_negatives(prepared):
    """``negative_groups`` reads the layout ``RankingTask.rows`` writes (every group is one user's
    positive and its negatives), and the loss adds the softmax cross-entropy computed per group
    by a plain loop."""
    import torch

    from widedeep.train.negatives import ranking_config
    from widedeep.train.ranking_task import RankingTask, negative_groups

    root, fs = prepared
    cfg = _cfg(root, sampled_negatives=2, retrieval_negatives=3, retrieval_pool=5, listwise_weight=0.5)
    rc = ranking_config(cfg)
    task = RankingTask()
    logged = pq.read_table(root / "train" / "part-00000.parquet", columns=task.required_columns(fs, cfg)).slice(0, 40)
    rows = task.rows(logged, fs, cfg)
    labels = torch.tensor(rows.column("label").to_numpy(), dtype=torch.float32)
    pos, neg = negative_groups(labels, rc)
    is_pos = np.asarray(logged.column("label").to_numpy()) > 0.5
    assert is_pos.any() and not is_pos.all()
    assert pos.tolist() == np.flatnonzero(is_pos).tolist() and neg.shape == (int(is_pos.sum()), 5)
    users = np.asarray(rows.column("user_key").to_numpy())
    assert (users[neg.numpy()] == users[pos.numpy()][:, None]).all()
    assert float(labels[neg].sum()) == 0.0 and len(set(neg.flatten().tolist())) == neg.numel()
    # the loss: log loss + weight x mean over positives of -log softmax(positive | its negatives)
    batch = task.collate(logged, fs, cfg)
    assert torch.equal(batch.labels, labels)
    model = task.build_model(fs, cfg)
    logits = model(batch).detach()
    b, k, kr = logged.num_rows, 2, 3
    terms, p = [], 0
    for i in range(b):
        if is_pos[i]:
            idx = [i, *(b + i * k + j for j in range(k)), *(b * (1 + k) + p * kr + j for j in range(kr))]
            terms.append(-torch.log_softmax(logits[idx], 0)[0])
            p += 1
    want = torch.nn.functional.binary_cross_entropy_with_logits(logits, labels) + 0.5 * torch.stack(terms).mean()
    torch.testing.assert_close(task.loss(model, batch, cfg).detach(), want)
    # a layout it does not know is refused, not misread
    with pytest.raises(RuntimeError, match="negatives per logged row"):
        negative_groups(labels[:-1], rc)


def test_without_logged_negatives_each_positive_learns_against_its_drawn_negatives(prepared):
    """``logged_negatives: false``: a batch's logged label-0 rows are not trained on; every
    logged positive keeps its row and its own drawn negatives (the layout ``negative_groups``
    reads), and a batch without any positive is a step that changes nothing."""
    import torch

    from widedeep.train.negatives import ranking_config
    from widedeep.train.ranking_task import RankingTask, negative_groups

    root, fs = prepared
    cfg = _cfg(root, sampled_negatives=2, retrieval_negatives=1, retrieval_pool=5, logged_negatives=False)
    task = RankingTask()
    logged = pq.read_table(root / "train" / "part-00000.parquet", columns=task.required_columns(fs, cfg)).slice(0, 40)
    is_pos = np.asarray(logged.column("label").to_numpy()) > 0.5
    assert is_pos.any() and not is_pos.all()
    p = int(is_pos.sum())
    rows = task.rows(logged, fs, cfg)
    kept = _cfg(root, sampled_negatives=2, retrieval_negatives=1, retrieval_pool=5)
    assert task.rows(logged, fs, kept).num_rows == 40 * 3 + p  # the default keeps every logged row
    assert rows.num_rows == p * (1 + 2 + 1)
    labels = np.asarray(rows.column("label").to_numpy())
    assert (labels[:p] > 0.5).all() and (labels[p:] == 0).all()
    positives = logged.filter(pa.array(is_pos))
    for c in ("user_key", fs.item_key):
        assert rows.column(c).slice(0, p).to_pylist() == positives.column(c).to_pylist()
    pos, neg = negative_groups(torch.tensor(labels, dtype=torch.float32), ranking_config(cfg))
    assert pos.tolist() == list(range(p)) and neg.shape == (p, 3)
    users = np.asarray(rows.column("user_key").to_numpy())
    assert (users[neg.numpy()] == users[:p, None]).all()
    # a batch of logged label-0 rows only: no row to learn from, a zero loss and no update
    model = task.build_model(fs, cfg)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    empty = task.collate(logged.filter(pa.array(~is_pos)), fs, cfg)
    assert empty.batch_size == 0
    loss = task.loss(model, empty, cfg)
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert all(p.grad is None or not p.grad.any() for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_objectives_over_positives_refuse_a_regression_label(tmp_path):
    """The listwise term and ``logged_negatives: false`` read the label as positive or not:
    a regression FeatureSpace is refused when the model is built, naming the setting."""
    from widedeep.features import FeatureSpace
    from widedeep.train.ranking_task import RankingTask

    spec = dict(synth.SPEC, label={"column": "installed", "task": "regression"})
    root = synth.prepare(tmp_path / "reg", spec=spec, n_users=20, n_items=10, rows_per_user=10)
    fs = FeatureSpace.load(root)
    assert fs.task == "regression"
    for tc, name in (({"listwise_weight": 1.0}, "listwise_weight"), ({"logged_negatives": False}, "logged_negatives")):
        with pytest.raises(ConfigError, match=f"task_config.{name}.*needs a binary label"):
            RankingTask().build_model(fs, _cfg(root, sampled_negatives=1, **tc))


def test_bad_task_config_is_named():
    from widedeep.train.negatives import ranking_config

    with pytest.raises(ConfigError, match="sampled_negatives"):
        ranking_config({"task_config": {"sampled_negatives": -1}})
    with pytest.raises(ConfigError, match="sampling_power"):
        ranking_config({"task_config": {"sampling_power": 2.0}})
    with pytest.raises(ConfigError, match="negatives_per_row"):
        ranking_config({"task_config": {"negatives_per_row": 2}})
    with pytest.raises(ConfigError, match="listwise_weight"):
        ranking_config({"task_config": {"listwise_weight": -1.0, "sampled_negatives": 1}})
    with pytest.raises(ConfigError, match="listwise_weight: needs sampled_negatives"):
        ranking_config({"task_config": {"listwise_weight": 1.0}})
    with pytest.raises(ConfigError, match="logged_negatives: false needs sampled_negatives"):
        ranking_config({"task_config": {"logged_negatives": False}})
