"""Validation at every epoch end: score this worker's share of the valid split, gather the
outputs from every rank (so every rank computes the same metrics and takes the same
early-stopping decision), and keep the best epoch."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from widedeep.train.tasks import batch_to, unwrap

if TYPE_CHECKING:
    from widedeep.train.feed import ValidFeed
    from widedeep.train.worker import ModelParts, TrainState, WorkerContext

_LOWER_IS_BETTER = ("loss", "logloss", "rmse", "mae")


def selection_metric(task: Any, fs: Any, cfg: Any) -> tuple[str, str]:
    """``(metric, mode)`` that picks the best epoch: the config's ``early_stopping`` when it names
    one, else the task's own."""
    metric, mode = task.metric_for(fs)
    es = cfg.early_stopping
    if es.metric is None or es.metric == metric:
        return metric, es.mode or mode
    return es.metric, es.mode or ("min" if es.metric in _LOWER_IS_BETTER else "max")


def gather(local: dict[str, np.ndarray], world: int) -> dict[str, np.ndarray]:
    """Every rank's arrays, concatenated in rank order, on every rank."""
    import torch.distributed as dist

    if world <= 1 or not dist.is_initialized():
        return local
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, local)
    return {k: np.concatenate([p[k] for p in parts]) for k in local}


def validate(ctx: WorkerContext, parts: ModelParts, feed: ValidFeed) -> dict[str, float]:
    """The task's validation metrics over the whole valid split (all ranks)."""
    module = unwrap(parts.train_model)
    module.eval()
    outs: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for batch in feed.batches(parts.model):
            for k, v in ctx.task.eval_outputs(module, batch_to(batch, ctx.device), ctx.cfg).items():
                outs.setdefault(k, []).append(np.asarray(v))
    module.train()
    local = {k: np.concatenate(v) for k, v in outs.items()}
    if not local:  # this rank's shard was empty: contribute empty arrays of the right keys
        local = {k: np.zeros(0) for k in ctx.spec.eval_keys}
    return ctx.task.eval_metrics(gather(local, ctx.world), ctx.fs, ctx.cfg)


def update_best(state: TrainState, score: float, epoch: int, mode: str, es: Any) -> None:
    """Record epoch ``epoch``'s (1-based) score: a new best, or one more bad epoch (and the stop
    once ``es.patience`` is exceeded, when early stopping is enabled)."""
    best = state.best_score
    if best is None or not math.isfinite(best):
        better = math.isfinite(score)
    else:
        better = score > best + es.min_delta if mode == "max" else score < best - es.min_delta
    if better:
        state.best_score, state.best_epoch, state.bad_epochs = score, epoch, 0
        return
    state.bad_epochs += 1
    if es.enabled and state.bad_epochs > es.patience:
        state.stopped = True
