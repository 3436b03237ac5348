"""The verification gate's decision from measured figures (no training: the figures are given)."""

from __future__ import annotations

from typing import Any

from widedeep.retrain.config import GateConfig
from widedeep.retrain.verify import gate


def _figures(auc: float, logloss: float = 0.45, calibration: float = 1.0, std: float = 0.2) -> dict[str, Any]:
    return {
        "auc": auc,
        "logloss": logloss,
        "calibration": calibration,
        "prediction_std": std,
        "constant_share": 0.01,
        "finite": True,
    }


def _profile(label_mean: float, numeric_counts: list[int], cat_counts: list[int]) -> dict[str, Any]:
    return {
        "label_mean": label_mean,
        "features": {
            "age": {"kind": "numeric", "counts": numeric_counts},
            "city": {"kind": "categorical", "counts": cat_counts},
        },
    }


REF = _profile(0.25, [100, 100, 100, 100], [10, 300, 60, 30])


def _decide(cand: dict[str, Any], prev_cand: dict[str, Any], window_profile: dict[str, Any], **topk: Any):
    serving = _figures(0.80)
    checks, drift = gate(
        GateConfig(),
        window={"candidate": cand, "serving": serving},
        previous={"candidate": prev_cand, "serving": _figures(0.78)},
        topk_scores=topk.get("scores"),
        reference_profile=REF,
        window_profile=window_profile,
        candidate_weights_finite=True,
    )
    return {c.name: c.passed for c in checks}, drift


def test_a_candidate_like_the_serving_model_passes_every_check() -> None:
    scores = {"candidate": {"recall@50": 0.30, "users": 100}, "serving": {"recall@50": 0.31, "users": 100}}
    passed, drift = _decide(
        _figures(0.805), _figures(0.779), _profile(0.26, [98, 104, 99, 99], [12, 290, 62, 36]), scores=scores
    )
    assert set(passed) >= {"finite", "auc_vs_serving", "logloss_vs_serving", "calibration", "prediction_spread"}
    assert set(passed) >= {"auc_on_serving_holdout", "topk_recall@50", "label_rate", "feature_drift_psi"}
    assert all(passed.values()), passed
    assert drift["age"]["psi"] < 0.01


def test_flipped_labels_and_a_scaled_column_are_refused_check_by_check() -> None:
    # labels flipped: the candidate learns the inverse, its AUC on the serving hold-out collapses and
    # the window's label rate triples; the numeric column scaled by 1000 lands in one bucket
    passed, drift = _decide(
        _figures(0.81, logloss=0.40),
        _figures(0.30),
        _profile(0.75, [0, 0, 0, 400], [10, 300, 60, 30]),
    )
    failed = {name for name, ok in passed.items() if not ok}
    assert failed == {"auc_on_serving_holdout", "label_rate", "feature_drift_psi"}, passed
    assert drift["age"]["psi"] > 1.0


def test_a_collapsed_or_non_finite_candidate_is_refused() -> None:
    collapsed = _figures(0.80, std=0.0)
    collapsed["finite"] = False
    passed, _ = _decide(collapsed, _figures(0.78), REF)
    assert not passed["prediction_spread"] and not passed["finite"]
    assert passed["auc_vs_serving"] and passed["label_rate"]
