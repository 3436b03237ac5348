import numpy as np
import pytest

from widedeep.train.pointwise_metrics import binary_metrics, roc_auc


def _pairwise_auc(y, s):
    pos, neg = s[y > 0.5], s[y <= 0.5]
    diff = pos[:, None] - neg[None, :]
    return ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_auc_matches_pairwise_definition_with_ties(seed):
    rng = np.random.default_rng(seed)
    y = (rng.random(400) < 0.3).astype(np.float32)
    s = np.round(rng.random(400) + 0.3 * y, 1)  # coarse rounding -> many ties
    assert roc_auc(y, s) == pytest.approx(_pairwise_auc(y, s), abs=1e-12)


def test_auc_single_class_is_nan():
    assert np.isnan(roc_auc(np.ones(5), np.arange(5.0)))


def test_binary_metrics_values():
    y = np.array([0, 0, 1, 1], dtype=np.float32)
    logits = np.array([-2.0, 0.5, 1.0, -0.1])
    m = binary_metrics(y, logits)
    p = 1 / (1 + np.exp(-logits))
    assert m["auc"] == pytest.approx(0.75)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["logloss"] == pytest.approx(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    assert m["calibration"] == pytest.approx(p.mean() / 0.5)
