"""Item index (exact vs brute force, approximate vs exact) and the candidate policy."""

from __future__ import annotations

import json

import numpy as np
import pytest

from widedeep.errors import CheckpointError
from widedeep.retrieval.candidates import CandidateGenerator
from widedeep.retrieval.index import ExactIndex, HnswIndex, build_index, load_index, recall_vs_exact, save_index
from widedeep.retrieval.interactions import CSR


def _vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_exact_index_matches_brute_force_with_exclusions():
    items, q = _vectors(300, 8), _vectors(20, 8, seed=1)
    ex = CSR.from_pairs(np.zeros(5, dtype=np.int64), np.arange(5), 20, 300)
    rows, scores = ExactIndex(items).search(q, 10, ex)
    full = q @ items.T
    full[0, :5] = -np.inf
    want = np.argsort(-full, axis=1)[:, :10]
    np.testing.assert_array_equal(rows, want)
    np.testing.assert_allclose(scores, np.take_along_axis(full, want, 1), rtol=1e-5)
    assert not np.isin(rows[0], np.arange(5)).any()


def test_hnsw_agrees_with_exact(tmp_path):
    items, q = _vectors(3000, 16), _vectors(200, 16, seed=2)
    index, info = build_index(items, "hnsw", recall_k=50, recall_queries=q, threads=1, ef_search=64)
    assert info["recall@50_vs_exact"] >= 0.95
    assert recall_vs_exact(index, ExactIndex(items), q, 50) == pytest.approx(info["recall@50_vs_exact"])
    ex = CSR.from_pairs(np.arange(200), np.argmax(q @ items.T, axis=1), 200, 3000)  # ban each query's best item
    rows, _ = index.search(q, 20, ex)
    assert not (rows == ex.indices[:, None]).any()
    keys = np.array([f"i{i}" for i in range(3000)])
    save_index(tmp_path / "idx", keys, items, index, info)
    k2, _v2, idx2, info2 = load_index(tmp_path / "idx")
    assert isinstance(idx2, HnswIndex) and info2["kind"] == "hnsw"
    np.testing.assert_array_equal(k2, keys)
    np.testing.assert_array_equal(idx2.search(q, 10)[0], index.search(q, 10)[0])
    assert (idx2.n_items, idx2.dim) == (3000, 16)
    assert idx2.ef_search == index.ef_search == info2["ef_search"]  # searches as the measured index did


@pytest.mark.parametrize("unit", [True, False], ids=["unit-norm-items", "any-norm-items"])
def test_hnsw_scores_are_inner_products_best_first(unit):
    items, q = _vectors(2000, 8), 3.0 * _vectors(30, 8, seed=3)
    if not unit:
        items = items * np.random.default_rng(4).uniform(0.5, 2.0, size=(2000, 1)).astype(np.float32)
    index, _ = build_index(items, "hnsw", recall_queries=q, threads=1)
    rows, scores = index.search(q, 25)
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", q, items[rows]), atol=1e-4)
    exact_rows, _ = ExactIndex(items).search(q, 25)
    assert np.mean([len(set(a) & set(b)) / 25 for a, b in zip(rows, exact_rows, strict=True)]) >= 0.95
    assert (np.diff(scores, axis=1) <= 1e-6).all()
    one_rows, one_scores = index.search(q[3:4], 25)  # a single query takes its own path: same answer
    np.testing.assert_array_equal(one_rows, rows[3:4])
    np.testing.assert_allclose(one_scores, scores[3:4])


def test_hnsw_exclusions_drop_exactly_the_listed_rows_and_keep_the_order():
    items, q = _vectors(60, 8), _vectors(4, 8, seed=5)
    index, _ = build_index(items, "hnsw", recall_queries=q, threads=1, ef_search=64)
    plain_rows, plain_scores = index.search(q, 60)  # the whole catalog, best first
    # query 0 bans 3 of its results, query 1 none, query 2 its best 20, query 3 rows it ranks last
    banned = {0: plain_rows[0, [1, 4, 9]], 2: plain_rows[2, :20], 3: plain_rows[3, -2:]}
    rows_of = np.concatenate([np.full(len(v), i) for i, v in banned.items()])
    ex = CSR.from_pairs(rows_of, np.concatenate(list(banned.values())), 4, 60)
    rows, scores = index.search(q, 50, ex)
    for i in range(4):
        keep = ~np.isin(plain_rows[i], banned.get(i, []))
        want_rows, want_scores = plain_rows[i][keep][:50], plain_scores[i][keep][:50]
        np.testing.assert_array_equal(rows[i, : len(want_rows)], want_rows)
        np.testing.assert_allclose(scores[i, : len(want_rows)], want_scores)
        assert (rows[i, len(want_rows) :] == -1).all() and np.isneginf(scores[i, len(want_rows) :]).all()
    assert (rows[2] == -1).sum() == 10  # 60 items - 20 banned = 40 results for k = 50
    one_rows, _ = index.search(q[2:3], 50, CSR.from_pairs(np.zeros(20, np.int64), banned[2], 1, 60))
    np.testing.assert_array_equal(one_rows[0], rows[2])


def test_index_of_another_format_or_kind_is_refused(tmp_path):
    items = _vectors(400, 8)
    index, info = build_index(items, "hnsw", recall_queries=items[:20], threads=1)
    save_index(tmp_path / "idx", np.arange(400), items, index, info)
    meta_p = tmp_path / "idx" / "index.json"
    meta = json.loads(meta_p.read_text())
    for change, msg in (
        ({"format": 1}, r"built with hnswlib .* re-export"),
        ({"format": 99}, r"index format 99, this version reads \[1, 2\]"),
        ({"kind": "ivf"}, r"index kind 'ivf'"),
    ):
        meta_p.write_text(json.dumps({**meta, **change}))
        with pytest.raises(CheckpointError, match=msg):
            load_index(tmp_path / "idx")


def test_auto_index_is_exact_for_small_catalogs():
    idx, info = build_index(_vectors(50, 4), "auto")
    assert isinstance(idx, ExactIndex) and info["kind"] == "exact"


def _generator() -> CandidateGenerator:
    items = np.eye(6, dtype=np.float32)  # item r scores user_vec[r]
    pop = np.array([5, 1, 9, 3, 7, 0], dtype=np.float32)  # popularity order: 2, 4, 0, 3, 1, 5
    keys = np.array([f"i{r}" for r in range(6)])
    return CandidateGenerator(ExactIndex(items), pop, keys, seen={"alice": np.array([0, 2])})


def test_seen_items_are_filtered():
    gen = _generator()
    vec = np.array([6, 5, 4, 3, 2, 1], dtype=np.float32)
    rows, scores = gen.candidates(vec, user_key="alice", n=3)
    assert rows.tolist() == [1, 3, 4]
    assert scores.tolist() == [5, 3, 2]
    rows, _ = gen.candidates(vec, user_key="alice", n=3, filter_seen=False)
    assert rows.tolist() == [0, 1, 2]
    rows, _ = gen.candidates(vec, user_key="bob", n=3)  # unknown user: nothing seen
    assert rows.tolist() == [0, 1, 2]


def test_caller_exclusions_and_n():
    gen = _generator()
    vec = np.array([6, 5, 4, 3, 2, 1], dtype=np.float32)
    rows, _ = gen.candidates(vec, user_key="alice", n=10, exclude_keys=["i1", "not-an-item"], exclude_rows=[5])
    assert rows.tolist() == [3, 4]


def test_cold_start_falls_back_to_popularity_minus_seen():
    gen = _generator()
    rows, scores = gen.candidates(None, user_key="alice", n=3)
    assert rows.tolist() == [4, 3, 1]
    assert scores.tolist() == [7, 3, 1]
    rows, _ = gen.candidates(None, user_key=None, n=2)
    assert rows.tolist() == [2, 4]


def test_batch_path_mixes_cold_and_warm_users():
    gen = _generator()
    vecs = np.array([[0.5, 0, 0.1, 0.2, 0, 1], [np.nan] * 6], dtype=np.float32)
    rows, _ = gen.candidates_batch(vecs, 2, gen.seen_rows(["bob", "alice"]))
    assert rows.tolist() == [[5, 0], [4, 3]]  # user 2 has no usable vector -> popularity, minus seen
