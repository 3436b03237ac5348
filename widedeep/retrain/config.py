"""The retraining job config (``platform/jobs/retrain-*.yaml``): which jobs train the candidate,
how the window is split, and the verification gate's thresholds. Strict and frozen like every
config (``widedeep.config.from_dict``): an unknown key or an out-of-range threshold is an error
naming its key path.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from widedeep.config import apply_overrides, from_dict, read_yaml, to_dict
from widedeep.errors import ConfigError

TOPK_METRICS = ("recall@10", "recall@50", "ndcg@10", "ndcg@50", "hr@10", "hr@50")


@dataclass(frozen=True)
class GateConfig:
    """The verification gate: every check must pass for the candidate to replace the serving model.

    On the new window's held-out slice (its ``test`` split), candidate against serving model:

    - ``auc_margin``: candidate AUC >= serving AUC - margin.
    - ``logloss_margin``: candidate log loss <= serving log loss + margin.
    - ``calibration``: candidate mean prediction / mean label within ``[low, high]``.
    - ``min_prediction_std``: the candidate's predicted probabilities have at least this standard
      deviation (a collapsed model predicts one value for everyone); ``max_constant_share``: no
      single predicted value (rounded to 1e-4) covers more than this share of the rows.
    - every prediction and every weight finite (``finite``; not configurable).
    - ``topk_metric`` / ``topk_margin`` (two-stage bundles): the candidate's full-catalog
      retrieval + ranking top-K metric >= the serving model's - margin, over at most
      ``topk_users`` users of the held-out slice (``null``: no top-K check).

    On the serving model's own held-out slice (the ``test`` split it was trained with), which the
    window cannot have poisoned: ``previous_auc_margin``: candidate AUC >= serving AUC - margin.

    Data checks of the window against the serving model's training data (``widedeep.features.drift``):
    ``label_rate_ratio``: the window's label rate within ``[ref / r, ref * r]``; ``max_psi``: no
    numeric feature's PSI above it (``null``: drift is reported, never gated); ``max_oov_rate_increase``:
    no vocabulary feature's OOV rate (new values count as OOV for the serving model) more than
    this above the training one (``null``: not gated).
    """

    auc_margin: float = 0.01
    logloss_margin: float = 0.02
    calibration: list[float] = field(default_factory=lambda: [0.75, 1.33])
    min_prediction_std: float = 0.01
    max_constant_share: float = 0.5
    previous_auc_margin: float = 0.02
    topk_metric: str | None = "recall@50"
    topk_margin: float = 0.02
    topk_users: int = 2000
    label_rate_ratio: float = 1.5
    max_psi: float | None = 1.0
    max_oov_rate_increase: float | None = 0.5

    def __post_init__(self) -> None:
        for key in ("auc_margin", "logloss_margin", "min_prediction_std", "previous_auc_margin", "topk_margin"):
            if getattr(self, key) < 0:
                raise ConfigError(f"{key}: must be >= 0, got {getattr(self, key)}")
        if len(self.calibration) != 2 or not 0 < self.calibration[0] <= 1 <= self.calibration[1]:
            raise ConfigError(f"calibration: must be [low, high] with 0 < low <= 1 <= high, got {self.calibration}")
        if not 0 < self.max_constant_share <= 1:
            raise ConfigError(f"max_constant_share: must be in (0, 1], got {self.max_constant_share}")
        if self.topk_metric is not None and self.topk_metric not in TOPK_METRICS:
            raise ConfigError(f"topk_metric: must be one of {list(TOPK_METRICS)} or null, got {self.topk_metric!r}")
        if self.topk_users < 1:
            raise ConfigError(f"topk_users: must be >= 1, got {self.topk_users}")
        if self.label_rate_ratio < 1:
            raise ConfigError(f"label_rate_ratio: must be >= 1, got {self.label_rate_ratio}")
        if self.max_psi is not None and self.max_psi <= 0:
            raise ConfigError(f"max_psi: must be > 0 or null, got {self.max_psi}")
        if self.max_oov_rate_increase is not None and not 0 < self.max_oov_rate_increase <= 1:
            raise ConfigError(f"max_oov_rate_increase: must be in (0, 1] or null, got {self.max_oov_rate_increase}")


@dataclass(frozen=True)
class RetrainConfig:
    """One retraining job.

    ``ranker_job`` / ``retriever_job``: the training job configs of the two models (paths relative
    to this file, or absolute), with ``ranker_set`` / ``retriever_set`` overrides applied (the same
    ``key.path: value`` form as ``widedeep train --set``; ``data``, ``storage_path``, ``run_name``
    and ``warm_start_from`` are set by the retrain). ``split``: how the window is split into
    train / valid / held-out test (``widedeep prepare --split``). ``bundle_index``: the item index
    of the exported bundle (``widedeep export --index``).
    """

    ranker_job: str
    retriever_job: str
    ranker_set: dict[str, Any] = field(default_factory=dict)
    retriever_set: dict[str, Any] = field(default_factory=dict)
    split: str = "user-time:user_id:timestamp:0.8,0.1,0.1"
    on_bad_rows: Literal["error", "skip"] = "error"
    bundle_index: Literal["auto", "exact", "hnsw"] = "auto"
    gate: GateConfig = field(default_factory=GateConfig)

    def to_dict(self) -> dict[str, Any]:
        return to_dict(self)


def load_retrain_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RetrainConfig:
    """Read ``path``, apply ``key=value`` overrides, validate; job paths become absolute."""
    raw = apply_overrides(read_yaml(path), list(overrides))
    try:
        cfg = from_dict(RetrainConfig, raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    base = Path(path).resolve().parent
    jobs = {}
    for key in ("ranker_job", "retriever_job"):
        p = Path(getattr(cfg, key)).expanduser()
        p = p if p.is_absolute() else base / p
        if not p.is_file():
            raise ConfigError(f"{path}: {key}: no job config at {p}")
        jobs[key] = str(p)
    import dataclasses

    return dataclasses.replace(cfg, **jobs)
