"""MLflow tracking of a training run (``tracking:`` in the job config; ``widedeep.tracking``).

Ray Train 2.60 offers two MLflow hooks: ``ray.air.integrations.mlflow.setup_mlflow``, which starts
an MLflow run inside the rank-0 worker (a new run on every worker restart, and the driver never
learns its id), and ``MLflowLoggerCallback``, a Ray Tune logger that Train V2's ``RunConfig``
rejects. What fits V2 is its driver-side hook, ``ray.train.UserCallback``: ``after_report`` runs on
the Train controller after every ``ray.train.report`` of the workers, so ``EpochLogger`` logs each
epoch's validation metrics there, live, into a run the driver created (and can then complete with
the best checkpoint and register it). Local mode (``num_workers: 0``) runs no callbacks; the driver
then logs the same per-epoch figures from the run's history when it ends.
"""

from __future__ import annotations

from typing import Any

import ray.train

from widedeep import tracking


def epoch_metrics(m: dict[str, Any]) -> dict[str, Any]:
    """The figures of one epoch report worth a curve: train loss and every validation metric."""
    out = {f"valid_{k}": v for k, v in (m.get("valid") or {}).items()}
    for k in ("train_loss", "train_samples_per_s"):
        if k in m:
            out[k] = m[k]
    return out


class EpochLogger(ray.train.UserCallback):
    """Logs every epoch-end report of rank 0 to the MLflow run ``run_id`` (runs on the controller)."""

    def __init__(self, uri: str, run_id: str) -> None:
        self.uri = uri
        self.run_id = run_id

    def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
        m = metrics[0] if metrics else {}
        if m.get("kind") != "epoch":
            return
        tracking.log_metrics(self.uri, self.run_id, epoch_metrics(m), step=int(m.get("epoch", 0)))
        if checkpoint is not None:
            tracking.set_tags(self.uri, self.run_id, {f"widedeep.checkpoint.epoch{m.get('epoch')}": checkpoint.path})


def start(cfg: Any) -> tuple[str, str] | None:
    """``(tracking uri, run id)`` of a new run for ``cfg`` (a resolved ``TrainConfig``), or None."""
    t = cfg.tracking
    if not t.enabled:
        return None
    uri = tracking.tracking_uri(t.uri, cfg.storage_path)
    run_id = tracking.start_run(
        uri, t.experiment, str(cfg.run_name), cfg.to_dict(), tags={"widedeep.task": cfg.task, "widedeep.data": cfg.data}
    )
    return uri, run_id


def finish(cfg: Any, run: tuple[str, str], summary: dict[str, Any], logged_live: bool) -> dict[str, Any]:
    """Complete the run: per-epoch history (when no callback logged it), best metrics, checkpoint
    URIs, and the registered version of the best checkpoint (``tracking.register_as``)."""
    uri, run_id = run
    if not logged_live:
        for h in summary.get("history", []):
            figures = {k: v for k, v in h.items() if k != "epoch"}
            tracking.log_metrics(uri, run_id, figures, step=int(h["epoch"]))
    best = {
        f"best_{k}": summary[k]
        for k in ("auc", "logloss", "accuracy", "calibration", "rmse", "hit@50", "loss")
        if k in summary
    }
    tracking.log_metrics(
        uri,
        run_id,
        {**best, "best_epoch": summary.get("best_epoch") or 0, "wall_seconds": summary.get("wall_seconds") or 0},
    )
    tracking.set_tags(
        uri,
        run_id,
        {"widedeep.checkpoint": summary["checkpoint"], "widedeep.latest_checkpoint": summary.get("latest_checkpoint")},
    )
    out: dict[str, Any] = {"tracking_uri": uri, "run_id": run_id}
    t = cfg.tracking
    if t.register_as:
        out["registered"] = {
            "name": t.register_as,
            "version": tracking.register(
                uri,
                t.register_as,
                summary["checkpoint"],
                "checkpoint",
                run_id,
                tuple(t.aliases or ()),
                tags={"widedeep.task": cfg.task},
            ),
        }
    tracking.end_run(uri, run_id)
    return out
