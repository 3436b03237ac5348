"""End to end on generated app-store data: prepare (per-user time split) -> train ranker and
retriever with ``widedeep train``'s driver -> ``widedeep index`` -> full-catalog top-K evaluation.

The synthetic check of the issue: the retriever's Recall@100 is far above most-popular, and
re-ranking its candidates with the Wide & Deep ranker beats retrieval alone on NDCG@10.
"""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.conftest import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.ray]


def _train(overrides: dict, tmp_path, name: str, config: str | None = None):
    from widedeep.config import apply_overrides
    from widedeep.train.config import config_from_dict, load_train_config
    from widedeep.train.driver import run_training

    base = load_train_config(config).to_dict() if config else {}
    sets = [f"{k}={json.dumps(v)}" for k, v in overrides.items()]
    cfg = config_from_dict(apply_overrides(base, sets))
    return run_training(cfg)


@pytest.fixture(scope="module")
def pipeline(tmp_path_factory, ray_session):
    from widedeep.data.generate import generate_appstore
    from widedeep.data.prepare import PrepareOptions, prepare
    from widedeep.features.spec import load_spec

    tmp = tmp_path_factory.mktemp("retrieval-e2e")
    generate_appstore(tmp / "raw", rows=24_000, users=600, items=800, seed=0)
    prepare(
        load_spec(ROOT / "platform/specs/appstore.yaml"),
        PrepareOptions(
            inputs=[str(tmp / "raw")], out=str(tmp / "data"), split="user-time:user_id:timestamp:0.8,0.1,0.1"
        ),
    )
    common = {"data": str(tmp / "data"), "storage_path": str(tmp / "runs"), "num_workers": 0, "log_every_steps": 1000}
    ranker = _train(
        {
            **common,
            "run_name": "ranker",
            "epochs": 3,
            "batch_size": 512,
            "model": {"hidden": [64, 32]},
            "early_stopping": {"metric": "auc", "mode": "max", "patience": 1},
        },
        tmp,
        "ranker",
    )
    retriever = _train(
        {**common, "run_name": "retriever", "epochs": 3, "batch_size": 512},
        tmp,
        "retriever",
        config=str(ROOT / "platform/jobs/appstore-retriever.yaml"),
    )
    return tmp, ranker["checkpoint"], retriever["checkpoint"]


def test_topk_synthetic_check(pipeline):
    from widedeep.evaluation.topk import run_topk

    tmp, ranker, retriever = pipeline
    out = tmp / "topk.json"
    assert run_topk(retriever, ranker, str(tmp / "data" / "test"), str(out)) == 0
    m = json.loads(out.read_text())
    assert set(m) >= {"retrieval", "final", "baselines"}
    assert set(m["baselines"]) == {"most_popular", "item_knn", "ease"}
    for k in ("recall@10", "recall@50", "recall@100", "recall@500"):
        assert 0.0 <= m["retrieval"][k] <= 1.0
    for k in ("hr@10", "ndcg@10", "recall@10", "recall@50"):
        assert k in m["final"] and k in m["baselines"]["item_knn"]
    print(json.dumps({k: m[k] for k in ("retrieval", "final", "baselines")}, indent=1))
    # the synthetic check: retrieval far above most-popular; ranking improves the top of the list
    assert m["retrieval"]["recall@100"] > 1.2 * m["baselines"]["most_popular"]["recall@100"]
    assert m["final"]["ndcg@10"] > m["retrieval"]["ndcg@10"]
    sig = m["significance"]
    assert sig["baseline"] in ("item_knn", "ease") and sig["ci_low"] <= sig["mean_diff"] <= sig["ci_high"]
    best = m["baselines"][sig["baseline"]]["ndcg@10"]
    assert sig["mean_diff"] == pytest.approx(m["final"]["ndcg@10"] - best, abs=1e-9)


def test_topk_over_seeds_reports_mean_and_std(pipeline):
    """Several (retriever, ranker) pairs: the report adds each figure's mean and std over them
    (the same pair twice: std 0 and mean = the single run's)."""
    from widedeep.evaluation.topk import run_topk

    tmp, ranker, retriever = pipeline
    out = tmp / "topk-seeds.json"
    assert run_topk([retriever, retriever], [ranker, ranker], str(tmp / "data" / "test"), str(out)) == 0
    m = json.loads(out.read_text())
    s = m["seeds"]
    assert len(s["checkpoints"]) == 2 and len(s["significance"]) == 2
    for part in ("final", "retrieval", "merged"):
        assert s[part]["ndcg@10"]["std"] == 0.0
    assert s["final"]["ndcg@10"]["mean"] == pytest.approx(m["final"]["ndcg@10"])


def test_index_command_embeds_the_catalog(pipeline, tmp_path):
    from widedeep.cli import main
    from widedeep.retrieval.index import ExactIndex, load_index

    tmp, _, retriever = pipeline
    assert (
        main(["index", "--checkpoint", retriever, "--items", str(tmp / "data"), "--out", str(tmp_path / "exact")]) == 0
    )
    keys, vecs, _idx, info = load_index(tmp_path / "exact")
    assert info["kind"] == "exact" and len(keys) == len(set(keys.tolist())) == vecs.shape[0] > 100
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-4)
    assert (
        main(
            [
                "index",
                "--checkpoint",
                retriever,
                "--items",
                str(tmp / "data"),
                "--out",
                str(tmp_path / "hnsw"),
                "--kind",
                "hnsw",
                "--recall-k",
                "20",
            ]
        )
        == 0
    )
    _, _, hidx, hinfo = load_index(tmp_path / "hnsw")
    assert hinfo["recall@20_vs_exact"] >= 0.9
    q = vecs[:50]
    exact_rows, _ = ExactIndex(vecs).search(q, 10)
    approx_rows, _ = hidx.search(q, 10)
    assert np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact_rows, approx_rows, strict=True)]) >= 0.9
