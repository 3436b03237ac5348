"""Several candidate sources merged before ranking: the item-to-item neighbourhood, the merge by
share with de-duplication, and per-candidate scores from both measures."""

from __future__ import annotations

import json

import numpy as np
import pytest

from widedeep.errors import ConfigError
from widedeep.retrieval.candidates import (
    SOURCE_INDEX,
    SOURCE_ITEM_TO_ITEM,
    SOURCE_POPULARITY,
    CandidateGenerator,
    SourceMix,
    merge_first,
)
from widedeep.retrieval.index import ExactIndex
from widedeep.retrieval.interactions import CSR
from widedeep.retrieval.neighbors import ItemNeighbors, NeighborSettings


def _csr(lists: list[list[int]], n_cols: int) -> CSR:
    rows = np.repeat(np.arange(len(lists)), [len(x) for x in lists])
    return CSR.from_pairs(rows, np.concatenate([np.asarray(x, np.int64) for x in lists]), len(lists), n_cols)


def test_merge_first_keeps_order_and_drops_duplicates():
    first = np.array([[4, 1, -1], [2, 2, 3]])
    second = np.array([[1, 5, 6, 7], [3, 8, 2, 9]])
    rows, from_first = merge_first(first, second, 4)
    assert rows.tolist() == [[4, 1, 5, 6], [2, 3, 8, 9]]
    assert from_first.tolist() == [[True, True, False, False], [True, True, False, False]]
    rows, _ = merge_first(np.array([[-1, -1]]), np.array([[3, -1]]), 3)
    assert rows.tolist() == [[3, -1, -1]]  # padding stays padding


def _setup():
    rng = np.random.default_rng(0)
    n_users, n_items = 30, 40
    x = rng.random((n_users, n_items)) < 0.15
    r, c = np.nonzero(x)
    train = CSR.from_pairs(r, c, n_users, n_items)
    nb = ItemNeighbors.fit(train, NeighborSettings(5, 1.0))
    vecs = rng.normal(size=(n_items, 6)).astype(np.float32)
    users = rng.normal(size=(4, 6)).astype(np.float32)
    return train, nb, vecs, users


def test_neighbors_round_trip_through_arrays():
    train, nb, _, _ = _setup()
    back = ItemNeighbors.from_arrays(*nb.arrays(), nb.n_items, nb.settings)
    np.testing.assert_array_equal(back.score(train, 0, 30).numpy(), nb.score(train, 0, 30).numpy())
    per_target = np.bincount(nb.arrays()[0], minlength=nb.n_items)
    assert per_target.max() <= 5  # each target keeps at most `neighbors` history items


def test_sourced_candidates_merge_by_share_and_score_by_both_measures():
    train, nb, vecs, users = _setup()
    pop = np.arange(40, dtype=np.float32)
    recent = train.take_rows(np.array([0, 1, 2, 3]))
    seen = recent  # liked items are excluded from the candidates
    gen = CandidateGenerator(
        ExactIndex(vecs), pop, np.arange(40), neighbors=nb, item_vectors=vecs, mix=SourceMix(0.5, 0.7)
    )
    c = gen.sourced(users, 10, seen, recent=recent)
    item_scores = nb.score(recent, 0, 4).numpy()
    for u in range(4):
        rows = c.rows[u][c.rows[u] >= 0]
        assert len(set(rows.tolist())) == len(rows) and not set(rows) & set(recent.row(u).tolist())
        # the item-to-item share: the source's best 5 unseen items with a positive score
        s = np.where(np.isin(np.arange(40), recent.row(u)), -np.inf, item_scores[u])
        best = np.sort(s)[::-1][:5]
        best = best[best > 0]
        mine = rows[c.sources[u][: len(rows)] == SOURCE_ITEM_TO_ITEM]
        np.testing.assert_allclose(np.sort(s[mine])[::-1], best, rtol=1e-6)  # (ties may pick other items)
        # every candidate is scored by index score + 0.7 x item-to-item score, best first
        want = users[u] @ vecs[rows].T + 0.7 * item_scores[u, rows]
        np.testing.assert_allclose(c.scores[u][: len(rows)], want, rtol=1e-5, atol=1e-5)
        assert (np.diff(c.scores[u][: len(rows)]) <= 1e-6).all()
    # without the source (share 0, weight 0) the list is the index's alone
    plain = CandidateGenerator(ExactIndex(vecs), pop, np.arange(40)).sourced(users, 10, seen)
    assert (plain.sources[plain.rows >= 0] == SOURCE_INDEX).all()
    assert not np.array_equal(plain.rows, c.rows)
    # a user without history gets index candidates only; a cold user popularity
    empty = CSR.empty(1, 40)
    c1 = gen.sourced(users[:1], 10, CSR.empty(1, 40), recent=empty)
    assert (c1.sources == SOURCE_INDEX).all()
    c2 = gen.sourced(None, 3, None, cold=np.array([True]), recent=empty)
    assert c2.rows[0].tolist() == [39, 38, 37] and (c2.sources == SOURCE_POPULARITY).all()


def test_source_settings_are_checked():
    _, nb, vecs, _ = _setup()
    with pytest.raises(ConfigError, match="item_share: must be in"):
        SourceMix(1.5, 0.0)
    with pytest.raises(ConfigError, match="needs the index's vectors"):
        CandidateGenerator(ExactIndex(vecs), np.ones(40, np.float32), np.arange(40), neighbors=nb)
    with pytest.raises(ValueError, match="neighbors must be >= 0"):
        NeighborSettings(-1, 0.0)


def test_topk_evaluation_merges_sources_chosen_on_valid(tmp_path):
    """``evaluate --task topk`` with a valid split: the neighbourhood is item-kNN's valid choice, the
    merge and order are the valid grid's best, and per-source figures are reported."""
    from tests.retrieval.synth import prepare as prepare_synth
    from widedeep.evaluation.selection import SELECT_BY, choose_sources
    from widedeep.evaluation.topk import EvalData, evaluate_topk, valid_data
    from widedeep.features import FeatureSpace
    from widedeep.model.build import build_model_from_dict

    d = prepare_synth(tmp_path / "p", n_users=80, n_items=60, rows_per_user=20)
    fs = FeatureSpace.load(d / "feature_space.json")
    ret = build_model_from_dict("retrieval", fs, {"task_config": {"history": 5, "hidden": [], "output_dim": 8}})
    rk = build_model_from_dict("ranking", fs, {})
    data = EvalData(fs, d / "test")
    choice = choose_sources(ret, rk, fs, valid_data(fs, data), 50, 0.1)
    grid = choice.ordering.grid
    assert choice.ordering.valid[SELECT_BY] == max(g[SELECT_BY] for g in grid)
    assert {g["item_share"] for g in grid} >= {0.0, 0.5} and {g["rerank_blend"] for g in grid} >= {0.0}
    assert choice.settings.neighbors == int(choice.knn.params["neighbors"])

    r = evaluate_topk(ret, data, rk, fs, 50, 1.0, 0.1)
    assert r["ordering"]["selected_on"] == "valid" and r["final"]["blend"] == r["ordering"]["rerank_blend"]
    assert {"merged", "two_tower"} <= set(r["sources"]) and set(r["baselines"]) == {"most_popular", "item_knn", "ease"}
    shares = [v["final_top10_share"] for k, v in r["sources"].items() if k != "merged"]
    assert sum(shares) == pytest.approx(1.0)
    if r["ordering"]["item_share"] > 0:
        assert r["sources"]["item_to_item"]["candidates_share"] > 0


def test_ease_neighbourhood_is_the_pruned_closed_form():
    from widedeep.retrieval.neighbors import ease_weights

    rng = np.random.default_rng(3)
    x = (rng.random((50, 20)) < 0.25).astype(np.float64)
    r, c = np.nonzero(x)
    train = CSR.from_pairs(r, c, 50, 20)
    p = np.linalg.inv(x.T @ x + 10.0 * np.eye(20))
    b = np.eye(20) - p / np.diag(p)[None, :]
    np.testing.assert_allclose(ease_weights(train, 10.0).numpy(), b, atol=1e-8)
    nb = ItemNeighbors.fit(train, NeighborSettings(0, 0.0, "ease", 10.0))  # all weights kept, signs too
    np.testing.assert_allclose(nb.score(train, 0, 50).numpy(), x @ b, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="EASE needs lam > 0"):
        NeighborSettings(10, 0.0, "ease", 0.0)


def test_export_serves_the_sources_chosen_on_valid(tmp_path):
    """``widedeep export`` over prepared data with a valid split chooses the item-to-item source and
    the order there (as ``evaluate --task topk`` does) and the bundle serves them."""
    from tests.retrieval.synth import prepare as prepare_synth
    from widedeep.export.from_checkpoints import export_from_checkpoints
    from widedeep.features import FeatureSpace
    from widedeep.model.build import build_model_from_dict
    from widedeep.model.checkpoint import save_checkpoint
    from widedeep.serve.bundle import NEIGHBORS_FILE, load_bundle
    from widedeep.serve.pipeline import RecommendPipeline

    root = prepare_synth(tmp_path / "p", n_users=60, n_items=50, rows_per_user=20)
    fs = FeatureSpace.load(root / "feature_space.json")
    ckpts = {}
    for task, cfg in (
        ("ranking", {}),
        ("retrieval", {"task_config": {"hidden": [], "output_dim": 8, "candidates": 50}}),
    ):
        model = build_model_from_dict(task, fs, cfg)
        ckpts[task] = save_checkpoint(
            tmp_path / task,
            model=model,
            optimizer=None,
            feature_space=fs,
            config={"data": str(root), "task": task, **cfg},
            metrics={},
            task=task,
            state={},
        )
    out = export_from_checkpoints(str(ckpts["ranking"]), str(ckpts["retrieval"]), str(tmp_path / "bundle"))
    m = json.loads((out / "manifest.json").read_text())
    chosen = m["sources"]["candidate_sources"]
    assert chosen["selected_on"] == "valid" and chosen["item_source"]["kind"] in ("cosine", "ease")
    assert (
        m["ordering"]["item_share"] == chosen["item_share"] and m["ordering"]["rerank_blend"] == chosen["rerank_blend"]
    )
    assert (out / NEIGHBORS_FILE).exists()
    pipe = RecommendPipeline(load_bundle(out))
    assert pipe.bundle.generator.neighbors is not None and len(pipe.bundle.liked) == 60
    user = next(iter(pipe.bundle.liked))
    got = pipe.recommend({pipe.user_key_field: user}, {}, k=5, n=20)
    assert len(got) == 5 and not {k for k, _ in got} & {str(pipe.bundle.item_keys[r]) for r in pipe.bundle.seen[user]}
