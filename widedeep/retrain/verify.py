"""The verification gate: the candidate against the serving model, check by check.

Every check is computed and reported (``Check``: name, passed, value, threshold, detail), so a
refused window names all its problems at once, not only the first. The candidate and the serving
model score the SAME rows: the window's held-out slice as each model's FeatureSpace prepares it
(``widedeep.retrain.window``), and likewise the serving model's own held-out slice. Metrics come
from the one implementation training and ``widedeep evaluate`` use
(``widedeep.train.pointwise_metrics``, ``widedeep.retrieval.topk``).
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from widedeep.evaluation.topk import FINAL_KS, EvalData, rerank, retrieve
from widedeep.features.drift import compare, finite
from widedeep.model.checkpoint import load_checkpoint
from widedeep.model.two_tower import two_tower_config
from widedeep.retrain.config import GateConfig
from widedeep.retrieval.candidates import ranker_term_of
from widedeep.retrieval.topk import ranking_metrics
from widedeep.train.evaluate import predict_split
from widedeep.train.pointwise_metrics import binary_metrics, sigmoid

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Check:
    """One gate check: ``value`` against ``threshold`` (``detail`` says what was compared)."""

    name: str
    passed: bool
    value: Any
    threshold: Any
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pointwise(checkpoint: str, split: str) -> dict[str, Any]:
    """Binary metrics of a ranker checkpoint on a prepared split, plus the prediction spread."""
    out = predict_split(checkpoint, split)
    logits, labels = np.asarray(out["outputs"], dtype=np.float64), np.asarray(out["labels"], dtype=np.float64)
    m: dict[str, Any] = {k: v for k, v in binary_metrics(labels, logits).items()}
    p = sigmoid(logits)
    m["finite"] = bool(np.isfinite(logits).all())
    m["prediction_std"] = float(np.std(p)) if m["finite"] else float("nan")
    _, counts = np.unique(np.round(p, 4), return_counts=True)
    m["constant_share"] = float(counts.max() / len(p)) if len(p) else float("nan")
    return m


def weights_finite(checkpoint: str) -> bool:
    """Every tensor of the checkpoint's model (tables, optimizer-fused weights, MLP) is finite."""
    model = load_checkpoint(checkpoint).model
    return all(bool(torch.isfinite(t).all()) for t in model.state_dict().values() if t.is_floating_point())


def _first_users(data: EvalData, n: int) -> EvalData:
    """Restrict a top-K evaluation to its first ``n`` users (a bound on the gate's cost)."""
    if len(data.users) <= n:
        return data
    rows = np.arange(n)
    data.users = data.users[:n]
    data.relevant = data.relevant.take_rows(rows)
    data.exclude = data.exclude.take_rows(rows)
    data.history = data.history.take_rows(rows)
    data.user_table = data.user_table.slice(0, n)
    return data


def topk(retriever: str, ranker: str, split: str, max_users: int) -> dict[str, float]:
    """Retrieval + ranking over the full catalog, the way ``/v1/recommend`` orders its answer
    (``widedeep.evaluation.topk``: candidates, ranker, blend with the retrieval logit)."""
    ret, rk = load_checkpoint(retriever), load_checkpoint(ranker)
    data = _first_users(EvalData(ret.feature_space, split, fit_splits=ret.fit_splits, fitted_by=retriever), max_users)
    rc = two_tower_config(ret.config.get("task_config"))
    rows, scores, _ = retrieve(ret.model, data, max(rc.candidates, max(FINAL_KS)))
    n = max(rc.candidates, max(FINAL_KS))
    term = ranker_term_of(rk.config)
    final = rerank(rk.model, rk.feature_space, data, rows[:, :n], scores[:, :n] / rc.temperature, rc.rerank_blend, term)
    return {**ranking_metrics(final, data.relevant, FINAL_KS), "users": len(data.users)}


def _r(x: Any) -> Any:
    return round(x, 6) if isinstance(x, float) and math.isfinite(x) else finite(x) if isinstance(x, float) else x


def gate(
    g: GateConfig,
    *,
    window: dict[str, Any],
    previous: dict[str, Any],
    topk_scores: dict[str, Any] | None,
    reference_profile: dict[str, Any],
    window_profile: dict[str, Any],
    candidate_weights_finite: bool,
) -> tuple[list[Check], dict[str, Any]]:
    """All checks from the measured figures; returns ``(checks, drift per feature)``.

    ``window`` / ``previous``: ``{"candidate": pointwise(...), "serving": pointwise(...)}`` on the
    window's held-out slice and on the serving model's own; ``topk_scores``: the same pair of
    ``topk(...)`` results, or None when there is no top-K check.
    """
    checks = _window_checks(g, window, previous, candidate_weights_finite)
    checks.append(_serving_holdout_check(g, previous))
    if topk_scores is not None and g.topk_metric is not None:
        checks.append(_topk_check(g, topk_scores))
    drift = compare(reference_profile, window_profile)
    checks += _drift_checks(g, drift, reference_profile, window_profile)
    return checks, {f: {k: _r(v) for k, v in d.items()} for f, d in drift.items()}


def _window_checks(
    g: GateConfig, window: dict[str, Any], previous: dict[str, Any], candidate_weights_finite: bool
) -> list[Check]:
    """Candidate against serving on the window's held-out slice: finite, AUC, log loss, calibration, spread."""
    c, s = window["candidate"], window["serving"]
    checks = [
        Check(
            "finite",
            bool(c["finite"] and previous["candidate"]["finite"] and candidate_weights_finite),
            {"predictions": bool(c["finite"] and previous["candidate"]["finite"]), "weights": candidate_weights_finite},
            True,
            "every candidate prediction (both held-out slices) and weight is finite",
        ),
        Check(
            "auc_vs_serving",
            c["auc"] >= s["auc"] - g.auc_margin,
            _r(c["auc"]),
            _r(s["auc"] - g.auc_margin),
            f"candidate AUC on the window's held-out slice >= serving AUC {s['auc']:.4f} - {g.auc_margin}",
        ),
        Check(
            "logloss_vs_serving",
            c["logloss"] <= s["logloss"] + g.logloss_margin,
            _r(c["logloss"]),
            _r(s["logloss"] + g.logloss_margin),
            f"candidate log loss on the window's held-out slice <= serving {s['logloss']:.4f} + {g.logloss_margin}",
        ),
        Check(
            "calibration",
            g.calibration[0] <= c["calibration"] <= g.calibration[1],
            _r(c["calibration"]),
            list(g.calibration),
            "candidate mean prediction / mean label on the window's held-out slice",
        ),
        Check(
            "prediction_spread",
            c["prediction_std"] >= g.min_prediction_std and c["constant_share"] <= g.max_constant_share,
            {"std": _r(c["prediction_std"]), "constant_share": _r(c["constant_share"])},
            {"min_std": g.min_prediction_std, "max_constant_share": g.max_constant_share},
            "the candidate's predicted probabilities are spread out (not collapsed onto one value)",
        ),
    ]
    return checks


def _serving_holdout_check(g: GateConfig, previous: dict[str, Any]) -> Check:
    """The candidate must not forget: its AUC on the serving model's own held-out slice."""
    pc, ps = previous["candidate"], previous["serving"]
    return Check(
        "auc_on_serving_holdout",
        pc["auc"] >= ps["auc"] - g.previous_auc_margin,
        _r(pc["auc"]),
        _r(ps["auc"] - g.previous_auc_margin),
        f"candidate AUC on the serving model's own held-out slice >= serving AUC {ps['auc']:.4f} "
        f"- {g.previous_auc_margin}",
    )


def _topk_check(g: GateConfig, topk_scores: dict[str, Any]) -> Check:
    """Retrieval + ranking top-K of the candidate against serving on the window's held-out users."""
    tc, ts = topk_scores["candidate"], topk_scores["serving"]
    name = g.topk_metric
    return Check(
        f"topk_{name}",
        tc[name] >= ts[name] - g.topk_margin,
        _r(tc[name]),
        _r(ts[name] - g.topk_margin),
        f"candidate retrieval + ranking {name} on the window's "
        f"held-out users >= serving {ts[name]:.4f} - {g.topk_margin} ({tc['users']} users)",
    )


def _drift_checks(
    g: GateConfig, drift: dict[str, Any], reference_profile: dict[str, Any], window_profile: dict[str, Any]
) -> list[Check]:
    """The window's data against the serving model's training data: label rate, numeric PSI, OOV growth."""
    checks: list[Check] = []
    ref_rate, win_rate = reference_profile.get("label_mean"), window_profile.get("label_mean")
    if ref_rate and win_rate is not None:
        ratio = win_rate / ref_rate
        checks.append(
            Check(
                "label_rate",
                1 / g.label_rate_ratio <= ratio <= g.label_rate_ratio,
                _r(win_rate),
                [_r(ref_rate / g.label_rate_ratio), _r(ref_rate * g.label_rate_ratio)],
                f"the window's label rate against the serving model's training rate {ref_rate:.4f}",
            )
        )
    if g.max_psi is not None:
        psis = {f: d["psi"] for f, d in drift.items() if "psi" in d and math.isfinite(d["psi"])}
        worst = max(psis, key=lambda f: psis[f]) if psis else None
        checks.append(
            Check(
                "feature_drift_psi",
                not psis or psis[worst] <= g.max_psi,
                {f: _r(v) for f, v in sorted(psis.items())},
                g.max_psi,
                f"numeric PSI of the window against the serving training data (worst: {worst})",
            )
        )
    if g.max_oov_rate_increase is not None:
        inc = {
            f: d["oov_rate"] - d["oov_rate_ref"]
            for f, d in drift.items()
            if "oov_rate" in d and math.isfinite(d["oov_rate"]) and math.isfinite(d["oov_rate_ref"])
        }
        worst = max(inc, key=lambda f: inc[f]) if inc else None
        checks.append(
            Check(
                "oov_rate_increase",
                not inc or inc[worst] <= g.max_oov_rate_increase,
                {f: _r(v) for f, v in sorted(inc.items())},
                g.max_oov_rate_increase,
                "OOV rate of each vocabulary feature in the window (values new to the serving model "
                f"count as OOV) minus its training rate (worst: {worst})",
            )
        )
    return checks
