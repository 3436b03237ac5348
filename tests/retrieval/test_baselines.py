"""EASE and the shrunk item-kNN against plain dense references, and their tuning on the valid split."""

from __future__ import annotations

import numpy as np
import pytest

from widedeep.evaluation.baselines import EASE, EaseRefused, ItemKNN
from widedeep.evaluation.tuning import EASE_LAMBDAS, KNN_NEIGHBORS, KNN_SHRINK, SELECT_BY, tune_ease, tune_item_knn
from widedeep.retrieval.interactions import CSR


def _random_train(n_users: int = 40, n_items: int = 25, seed: int = 0) -> tuple[np.ndarray, CSR]:
    rng = np.random.default_rng(seed)
    x = (rng.random((n_users, n_items)) < 0.2).astype(np.float64)
    x[:, 7] = 0  # an item nobody has
    r, c = np.nonzero(x)
    return x, CSR.from_pairs(r, c, n_users, n_items)


def _ease_reference(x: np.ndarray, lam: float) -> np.ndarray:
    """Steck 2019, eq. 8: P = (X^T X + lambda I)^-1, B = I - P diagMat(1 / diag(P))."""
    p = np.linalg.inv(x.T @ x + lam * np.eye(x.shape[1]))
    b = np.eye(x.shape[1]) - p / np.diag(p)[None, :]
    return x @ b


@pytest.mark.parametrize("lam", [1.0, 50.0])
def test_ease_matches_closed_form(lam):
    x, train = _random_train()
    np.testing.assert_allclose(EASE(train, lam).score(train, 0, 40).numpy(), _ease_reference(x, lam), atol=1e-5)
    (from_grid,) = EASE.grid(train, [lam])  # the eigendecomposition path gives the same weights
    np.testing.assert_allclose(from_grid.score(train, 0, 40).numpy(), _ease_reference(x, lam), atol=1e-5)
    assert float(np.abs(np.diag(EASE(train, lam).b.numpy())).max()) == 0.0  # an item does not explain itself


def test_ease_refuses_catalogs_above_the_limit(monkeypatch):
    import widedeep.retrieval.neighbors as b

    _, train = _random_train()
    monkeypatch.setattr(b, "EASE_MAX_ITEMS", 10)
    with pytest.raises(EaseRefused, match="25 items, above EASE_MAX_ITEMS=10"):
        EASE(train, 10.0)


def test_item_knn_shrinkage_matches_dense_reference():
    x, train = _random_train(seed=1)
    shrink = 5.0
    co = x.T @ x
    norm = np.sqrt(np.diag(co))
    sim = co / (np.outer(norm, norm) + shrink)
    np.fill_diagonal(sim, 0.0)
    got = ItemKNN(train, neighbors=0, shrink=shrink, chunk=8).score(train, 0, 40).numpy()
    np.testing.assert_allclose(got, x @ sim, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="shrink must be >= 0, got -1"):
        ItemKNN(train, shrink=-1.0)


def test_baselines_are_tuned_on_valid(tmp_path):
    """The chosen settings are the grid's best on the valid split, and they are what test evaluates."""
    from tests.retrieval.synth import prepare as prepare_synth
    from widedeep.evaluation.topk import EvalData, baselines, valid_data
    from widedeep.features import FeatureSpace

    d = prepare_synth(tmp_path / "p", n_users=200, n_items=150, rows_per_user=25)
    fs = FeatureSpace.load(d / "feature_space.json")
    test = EvalData(fs, d / "test")
    valid = valid_data(fs, test)
    assert valid is not None and str(valid.split_dir).endswith("valid") and valid.users is not test.users
    knn = tune_item_knn(valid)
    assert len(knn.grid) == len(KNN_NEIGHBORS) * len(KNN_SHRINK)
    assert knn.valid[SELECT_BY] == max(g[SELECT_BY] for g in knn.grid)
    ease = tune_ease(valid)
    assert [g["lambda"] for g in ease.grid] == list(EASE_LAMBDAS)
    assert ease.valid[SELECT_BY] == max(g[SELECT_BY] for g in ease.grid)
    b = baselines(test, 50, valid)
    assert set(b) == {"most_popular", "item_knn", "ease"}
    assert b["item_knn"]["params"] == knn.params and b["ease"]["params"] == ease.params
    assert b["ease"]["selected_on"] == "valid" and 0 < b["ease"]["ndcg@10"] <= 1
    assert ease.valid[SELECT_BY] > min(g[SELECT_BY] for g in ease.grid)  # lambda matters: a real choice
