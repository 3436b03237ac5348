"""``widedeep bench index``: recall against exact and interleaved timings on a real bundle's catalog."""

from __future__ import annotations

import importlib.util

import numpy as np

from widedeep.benchmarks.index import CONTENDERS, IndexBenchConfig, recall, run_index_bench, summary


def test_recall_counts_the_exact_rows_found():
    exact = np.array([[0, 1, 2, 3], [4, 5, -1, -1]])
    found = {0: np.array([3, 1, 9, 8]), 1: np.array([5, 4, 7, 6])}
    queries = np.array([[0.0], [1.0]])
    # 2 of 4 in the first row, both valid rows of the second (the -1 pads are not counted)
    assert recall(lambda q: found[int(q[0])], queries, exact) == 4 / 6


def test_bench_index_measures_every_installed_contender(bundles):
    cfg = IndexBenchConfig(
        bundle=str(bundles[0]), k=50, m=8, ef_construction=40, ef_search=64, queries=40, rounds=2, per_round=5
    )
    out = run_index_bench(cfg)
    assert out["items"] == 300
    assert len(out["exact"]["rounds_ms"]) == 2 and out["exact"]["per_search_ms"] > 0
    assert out["voyager"]["per_search_vs_voyager"] == 1.0
    # 300 items, ef 64 >= k: the graph finds (nearly) the whole exact top-50, through the index's
    # search as through the library's call on the same graph
    for name in ("index", "voyager"):
        assert out[name]["recall@50_item_queries"] > 0.97 and out[name]["recall@50_user_queries"] > 0.97
    assert out["index"]["recall@50_user_queries"] == out["voyager"]["recall@50_user_queries"]
    for name, (module, _) in CONTENDERS.items():
        if importlib.util.find_spec(module) is None:
            assert out[name] == {"skipped": f"{module} is not installed"}
        else:
            assert 0.0 < out[name]["recall@50_item_queries"] <= 1.0 and len(out[name]["rounds_ms"]) == 2
    text = summary(out)
    assert all(name in text for name in ("exact", "index", "voyager", *CONTENDERS))
