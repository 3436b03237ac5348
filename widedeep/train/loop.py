"""The per-worker training loop that Ray Train runs (``TorchTrainer(train_loop_per_worker=...)``),
in named parts, each in its own module:

- set-up: ``widedeep.train.worker`` (context, model, restore, DDP);
- data: ``widedeep.train.feed`` (train batches cached in memory or streamed, the valid share);
- step: ``widedeep.train.step``;
- validate: ``widedeep.train.validate`` (metrics gathered from every rank, early stopping);
- report/checkpoint: ``widedeep.train.reporting``;
- where the time goes: ``widedeep.train.timings``; callbacks for tests: ``widedeep.train.hooks``.

Resume: ``ray.train.get_checkpoint()`` is the latest reported checkpoint after a worker failure
or when the same ``RunConfig(storage_path, name)`` is launched again; it restores weights, the
sparse and dense optimizer state, the epoch / step position and the early-stopping state. A
mid-epoch resume skips the batches already trained in that epoch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

from widedeep.errors import ConfigError
from widedeep.train.feed import TrainFeed, ValidFeed, make_train_feed
from widedeep.train.hooks import LoopHooks
from widedeep.train.progress import StepLogger, log
from widedeep.train.reporting import STEP_SCORE, Reporter
from widedeep.train.step import set_dense_lr, train_step
from widedeep.train.tasks import batch_to
from widedeep.train.timings import EpochClock, epoch_line
from widedeep.train.validate import selection_metric, update_best, validate
from widedeep.train.worker import LoopSpec, ModelParts, TrainState, WorkerContext, build_model_parts

__all__ = ["STEP_SCORE", "LoopSpec", "TrainState", "log", "selection_metric", "train_loop_per_worker"]


@dataclass
class Loop:
    """Everything one worker's epochs use, built once."""

    ctx: WorkerContext
    parts: ModelParts
    feed: TrainFeed
    valid: ValidFeed | None  # None for a refit (``LoopSpec.valid_dir`` empty)
    reporter: Reporter
    hooks: LoopHooks
    metric: str
    mode: str
    steps_per_epoch: int
    logger: StepLogger

    @property
    def total_steps(self) -> int:
        return self.ctx.cfg.epochs * self.steps_per_epoch


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Entry point run on every Ray Train worker (and in the driver for ``num_workers=0``).

    ``loop_config``: ``{"spec": LoopSpec, "hooks": LoopHooks | None}`` from ``widedeep.train.driver``."""
    ctx = WorkerContext.create(loop_config["spec"])
    hooks: LoopHooks = loop_config.get("hooks") or LoopHooks()
    parts, state = build_model_parts(ctx)
    feed = hooks.train_feed(ctx) or make_train_feed(ctx)
    steps = feed.steps_per_epoch()
    metric, mode = selection_metric(ctx.task, ctx.fs, ctx.cfg)
    loop = Loop(
        ctx,
        parts,
        feed,
        ValidFeed(ctx, cached=ctx.spec.data_cache == "memory") if ctx.spec.valid_dir else None,
        Reporter(ctx, parts),
        hooks,
        metric,
        mode,
        steps,
        StepLogger(ctx.cfg.epochs, steps, ctx.cfg.log_every_steps, enabled=ctx.rank == 0),
    )
    parts.model.train()
    while state.epoch < ctx.cfg.epochs and not state.stopped:
        clock, train_loss = train_epoch(loop, state)
        end_epoch(loop, state, clock, train_loss)


def train_epoch(loop: Loop, state: TrainState) -> tuple[EpochClock, float]:
    """The rest of epoch ``state.epoch`` (all of it, or what a mid-epoch resume left), timed;
    returns the clock and the epoch's mean train loss."""
    ctx = loop.ctx
    clock = EpochClock(loop.steps_per_epoch)
    if state.ray_start_s is None:  # the first batch this run asks for: start-up ends here
        state.ray_start_s = time.time() - ctx.spec.started_at
        ctx.log0(f"start-up {state.ray_start_s:.1f}s (Ray, Train controller, worker group) until the first batch")
    it = iter(loop.feed.batches(state.epoch, state.step_in_epoch))
    loop.logger.start_epoch(state.samples, 0.0)
    loss_sum, loss_n = 0.0, 0
    while True:
        t0 = time.perf_counter()
        batch = next(it, None)
        t1 = time.perf_counter()
        if batch is None:
            clock.data_wait_s += t1 - t0
            break
        loss, n = _step(loop, state, batch)
        clock.add_step(t1 - t0, time.perf_counter() - t1, n * ctx.world)
        loss_sum, loss_n = loss_sum + loss * n, loss_n + n
        loop.logger.step(state.epoch, state.step_in_epoch, state.global_step, state.samples, loss_sum / loss_n, clock)
        _step_checkpoint(loop, state, clock, loss_sum / loss_n)
        loop.hooks.after_step(ctx, state.global_step, loop.parts.restored)
    return clock, loss_sum / max(loss_n, 1)


def _step(loop: Loop, state: TrainState, batch: Any) -> tuple[float, int]:
    """One optimizer step at the schedule's learning rate; ``(loss, rows of this worker)``."""
    ctx, parts = loop.ctx, loop.parts
    set_dense_lr(parts.optimizer, ctx.cfg.optim.dense, state.global_step, loop.total_steps)
    loss, n = train_step(ctx.task, parts.train_model, parts.optimizer, batch_to(batch, ctx.device), ctx.cfg)
    state.samples += n * ctx.world
    state.step_in_epoch += 1
    state.global_step += 1
    return loss, n


def _step_checkpoint(loop: Loop, state: TrainState, clock: EpochClock, train_loss: float) -> None:
    """A mid-epoch checkpoint every ``checkpoint_every_steps`` global steps."""
    every = loop.ctx.cfg.checkpoint_every_steps
    if not every or state.global_step % every:
        return
    metrics = {
        "kind": "step",
        "epoch": state.epoch,
        "global_step": state.global_step,
        "score": STEP_SCORE,
        "train_loss": train_loss,
    }
    clock.checkpoint_s += loop.reporter.report(f"step={state.global_step:08d}", lambda _: metrics, state)


def end_epoch(loop: Loop, state: TrainState, clock: EpochClock, train_loss: float) -> None:
    """Validate, update early stopping, report the epoch-end checkpoint, print the epoch line."""
    ctx, epoch = loop.ctx, state.epoch + 1
    v0 = time.perf_counter()
    vm = validate(ctx, loop.parts, loop.valid) if loop.valid is not None else {}
    clock.validate_s = time.perf_counter() - v0
    if loop.valid is None:  # a refit: nothing held out, the latest epoch is the result
        score = float(epoch) if loop.mode == "max" else -float(epoch)
    elif loop.metric not in vm:
        raise ConfigError(
            f"early_stopping.metric: {loop.metric!r} is not a validation metric of task {ctx.cfg.task!r} "
            f"(it reports {sorted(vm)})"
        )
    else:
        score = float(vm[loop.metric])
    update_best(state, score, epoch, loop.mode, ctx.cfg.early_stopping)
    state.epoch, state.step_in_epoch = epoch, 0
    state.train_seconds += clock.data_wait_s + clock.compute_s
    state.history.append({"epoch": epoch, "train_loss": train_loss, **{f"valid_{k}": v for k, v in vm.items()}})
    scored = score if loop.mode == "max" else -score
    base = {
        "kind": "epoch",
        "epoch": epoch,
        "global_step": state.global_step,
        "score": scored if math.isfinite(scored) else STEP_SCORE,
        "primary_metric": loop.metric,
        "train_loss": train_loss,
        "train_samples_per_s": state.samples / max(state.train_seconds, 1e-9),
        "train_samples_per_s_steady": clock.steady_samples / clock.steady_s if clock.steady_s > 0 else 0.0,
        "valid": vm,
        "best_epoch": state.best_epoch,
        "stopped": state.stopped,
    }
    before = clock.checkpoint_s

    def metrics(write_s: float) -> dict[str, Any]:  # once the checkpoint's tensors are written
        clock.checkpoint_s = before + write_s
        state.timings.append(clock.record(epoch))
        return {**base, "timings": {"ray_start_s": state.ray_start_s, "epochs": list(state.timings)}}

    loop.reporter.report(f"epoch={epoch:04d}", metrics, state)
    shown = " ".join(f"{k} {v:.4f}" for k, v in vm.items() if isinstance(v, float))
    ctx.log0(
        f"epoch {epoch}/{ctx.cfg.epochs} done: train loss {train_loss:.4f} | "
        + (f"valid {shown} | " if vm else "no validation (refit) | ")
        + epoch_line(state.timings[-1])
        + (" | early stop" if state.stopped else "")
    )
