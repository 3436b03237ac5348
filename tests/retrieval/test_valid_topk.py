"""Model selection of the retriever: the valid split's full-catalog hit@50 / NDCG@10, checked
against a brute-force ranking, and the configurable selection metric."""

from __future__ import annotations

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from tests.retrieval import synth


def test_valid_hits_match_a_brute_force_full_catalog_ranking(tmp_path):
    from widedeep.features import FeatureSpace
    from widedeep.model.two_tower import search_vectors
    from widedeep.retrieval.data import embed
    from widedeep.train.config import config_from_dict
    from widedeep.train.retrieval_task import RetrievalTask

    task = RetrievalTask()

    torch.manual_seed(0)
    root = synth.prepare(tmp_path / "d", n_users=80, n_items=200, rows_per_user=20)
    fs = FeatureSpace.load(root)
    cfg = config_from_dict(
        {
            "data": str(root),
            "task": "retrieval",
            "task_config": {
                "hidden": [],
                "embedding_dim": 8,
                "output_dim": 8,
                "init_scale": 0.5,
                "popularity_prior": 0.5,
            },
        }
    )
    model = task.build_model(fs, cfg).eval()
    rows = pq.read_table(root / "valid" / "part-00000.parquet", columns=task.required_columns(fs, cfg))
    batch = task.collate(rows, fs, cfg)
    with torch.no_grad():
        out = task.eval_outputs(model, batch, cfg)
    metrics = task.eval_metrics(out, fs, cfg)
    assert metrics["topk_rows"] == batch.batch_size > 20

    # brute force: every catalog item scored, the user's train-split items removed, rank of the positive
    st = task.training_data(fs, cfg)
    vecs = search_vectors(model.cfg, "item", embed(model, "item", st.catalog.table), st.counts.numpy() - 1)
    with torch.no_grad():
        users = search_vectors(model.cfg, "user", model.user_embedding(batch.user).numpy())
    train = pq.read_table(root / "train" / "part-00000.parquet", columns=["user_key", "item_key"]).to_pylist()
    seen: dict = {}
    for r in train:
        seen.setdefault(r["user_key"], set()).add(r["item_key"])
    keys = list(st.catalog.keys)
    hits, ndcgs = [], []
    for i in range(batch.batch_size):
        s = users[i] @ vecs.T
        pos = int(batch.item_ids[i])
        better = sum(
            1
            for j in range(len(keys))
            if j != pos and keys[j] not in seen.get(batch.user_keys[i], set()) and s[j] > s[pos]
        )
        hits.append(better < 50)
        ndcgs.append(1 / np.log2(better + 2) if better < 10 else 0.0)
    assert metrics["hit@50"] == pytest.approx(np.mean(hits))
    assert metrics["ndcg@10"] == pytest.approx(np.mean(ndcgs), rel=1e-5)
    assert 0 < metrics["hit@50"] < 1  # a non-trivial case: some in, some out


def test_selection_metric_comes_from_the_config_or_the_task():
    from types import SimpleNamespace

    from widedeep.train.config import config_from_dict
    from widedeep.train.loop import selection_metric
    from widedeep.train.tasks import get_task

    fs = SimpleNamespace(task="binary")

    def pick(task, es):
        return selection_metric(
            get_task(task), fs, config_from_dict({"data": "/d", "task": task, "early_stopping": es})
        )

    assert pick("retrieval", {}) == ("hit@50", "max")
    assert pick("retrieval", {"metric": "loss"}) == ("loss", "min")
    assert pick("retrieval", {"metric": "ndcg@10"}) == ("ndcg@10", "max")
    assert pick("ranking", {}) == ("auc", "max")
    assert pick("ranking", {"metric": "logloss", "mode": "min"}) == ("logloss", "min")
