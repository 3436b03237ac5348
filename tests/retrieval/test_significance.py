"""The paired bootstrap of per-user NDCG differences and the per-user NDCG it reads."""

from __future__ import annotations

import numpy as np
import pytest


def test_ndcg_per_user_averages_to_ranking_metrics():
    from widedeep.retrieval.interactions import CSR
    from widedeep.retrieval.topk import ndcg_per_user, ranking_metrics

    rel = CSR.from_pairs(np.array([0, 0, 1, 2]), np.array([3, 5, 1, 9]), 3, 10)
    top = np.array([[5, 0, 3, 2], [7, 8, 9, 1], [9, 1, 2, 3]])
    per = ndcg_per_user(top, rel, 4)
    # user 0: hits at ranks 1 and 3 of 2 relevant; user 1: rank 4 of 1; user 2: rank 1
    want0 = (1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3))
    np.testing.assert_allclose(per, [want0, 1 / np.log2(5), 1.0])
    assert ranking_metrics(top, rel, (4,), ("ndcg",))["ndcg@4"] == pytest.approx(per.mean())


def test_paired_bootstrap_separates_a_real_gap_from_noise():
    from widedeep.evaluation.significance import paired_bootstrap, seed_summary

    rng = np.random.default_rng(0)
    base = rng.random(800)  # users differ a lot; the methods differ by a small, consistent amount
    better = base + 0.02 + rng.normal(0, 0.01, 800)
    r = paired_bootstrap(better, base)
    assert r["ci_low"] > 0 and r["mean_diff"] == pytest.approx(0.02, abs=0.002) and r["users"] == 800
    assert r["ci_low"] < r["mean_diff"] < r["ci_high"] and r["share_resamples_above_0"] == 1.0
    same = paired_bootstrap(base + rng.normal(0, 0.05, 800), base)
    assert same["ci_low"] < 0 < same["ci_high"]
    assert paired_bootstrap(better, base) == r  # seeded: a report is reproducible
    with pytest.raises(ValueError, match="aligned"):
        paired_bootstrap(base, base[:5])
    s = seed_summary([0.1, 0.2, 0.3])
    assert s["mean"] == pytest.approx(0.2) and s["std"] == pytest.approx(0.1)
