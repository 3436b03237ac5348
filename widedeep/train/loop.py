"""The per-worker training loop that Ray Train runs (``TorchTrainer(train_loop_per_worker=...)``).

Why it is shaped like this (the rules of Ray Train V2, as its user guide states them):

- ``ray.train.report`` is a barrier: every rank calls it the same number of times (after every
  ``checkpoint_every_steps`` steps and at every epoch end), rank 0 alone attaches the checkpoint
  directory, other ranks report ``checkpoint=None``.
- V2 keeps only the metrics of reports that carry a checkpoint, so every report whose metrics
  matter (the epoch-end validation) carries one.
- The train dataset is streamed from Ray Data, split across workers with ``equal=True``, so ranks
  run the same number of train batches (DDP needs that). Validation reads each rank's contiguous
  share of the valid split directly (``rank_row_batches``: exact, no per-epoch Ray Data start-up);
  predictions are gathered to every rank before computing AUC, so all ranks take the same
  early-stopping decision.
- Resume: ``ray.train.get_checkpoint()`` is the latest reported checkpoint after a worker failure
  or when the same ``RunConfig(storage_path, name)`` is launched again; it restores weights, the
  sparse and dense optimizer state, the epoch / step position and the early-stopping state.
  A mid-epoch resume skips the batches already trained in that epoch.
- Dense parameters sync through DDP; the embedding tables (``requires_grad=False``) sync through
  the kernel's exact exchange on a separate process group, so the two collectives never interleave
  on one group.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from widedeep.errors import ConfigError
from widedeep.train.config import TrainConfig, config_from_dict
from widedeep.train.schedule import lr_factor
from widedeep.train.tasks import batch_size_of, batch_to, get_task, unwrap

STEP_SCORE = -1e30  # "score" of mid-epoch checkpoints: never preferred over an epoch-end one


@dataclass
class TrainState:
    """Where training stands; saved in ``checkpoint.json`` under ``train_state``."""

    epoch: int = 0  # completed epochs
    step_in_epoch: int = 0  # batches trained in the current, incomplete epoch
    global_step: int = 0
    samples: int = 0  # global samples trained
    train_seconds: float = 0.0
    best_score: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    stopped: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)
    resumes: list[dict[str, int]] = field(default_factory=list)  # where each restart picked up

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainState:
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def log(msg: str) -> None:
    """A progress line on stderr (written directly: Ray Train's patched ``print`` would tee it
    to its logger as well, and the driver would show every line twice)."""
    sys.stderr.write(f"[widedeep train] {msg}\n")
    sys.stderr.flush()


_LOWER_IS_BETTER = ("loss", "logloss", "rmse", "mae")


def selection_metric(task: Any, fs: Any, cfg: Any) -> tuple[str, str]:
    """``(metric, mode)`` that picks the best epoch: the config's ``early_stopping`` when it names
    one, else the task's own."""
    metric, mode = task.metric_for(fs)
    es = cfg.early_stopping
    if es.metric is None or es.metric == metric:
        return metric, es.mode or mode
    return es.metric, es.mode or ("min" if es.metric in _LOWER_IS_BETTER else "max")


def _fmt_eta(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class _Collate:
    """Ray Data collate: Arrow batch -> the task's batch, in the loader's threads."""

    def __new__(cls, task: Any, fs: Any, cfg: TrainConfig) -> Any:
        from ray.data.collate_fn import ArrowBatchCollateFn

        class TaskCollate(ArrowBatchCollateFn):
            def __call__(self, table: Any) -> Any:
                return task.collate(table, fs, cfg)

        return TaskCollate()


def _sorted_files(split_dir: str) -> list[str]:
    import pyarrow.dataset as pads

    return sorted(pads.dataset(split_dir, format="parquet").files)


def rank_row_batches(split_dir: str, columns: list[str], batch_size: int, rank: int, world: int) -> Iterator[Any]:
    """Stream rank ``rank``'s contiguous share of a split (files in name order) as Arrow tables.

    Used for validation: every valid row is scored exactly once across ranks (no ``equal=True``
    dropping), and there is no per-epoch Ray Data execution to start, which dominates the cost of
    a small validation split. Ranks may get different batch counts; nothing inside is collective.
    """
    import pyarrow as pa
    import pyarrow.dataset as pads

    ds = pads.dataset(_sorted_files(split_dir), format="parquet")
    n = ds.count_rows()
    lo, hi = n * rank // world, n * (rank + 1) // world
    pos = 0
    pending: list[Any] = []
    pending_rows = 0
    for rb in ds.to_batches(columns=columns or None, batch_size=batch_size):
        start, stop = max(lo - pos, 0), min(hi - pos, rb.num_rows)
        pos += rb.num_rows
        if stop > start:
            pending.append(rb.slice(start, stop - start))
            pending_rows += stop - start
            if pending_rows >= batch_size:
                t = pa.Table.from_batches(pending)
                pending, pending_rows = [], 0
                for s in range(0, t.num_rows, batch_size):
                    yield t.slice(s, batch_size)
        if pos >= hi:
            break
    if pending:
        yield pa.Table.from_batches(pending)


class _DeterministicReader:
    """Test hook (``debug.deterministic_shards``): identical global batches for any world size."""

    def __init__(self, split_dir: str, columns: list[str]) -> None:
        import pyarrow.dataset as pads

        self.table = pads.dataset(_sorted_files(split_dir), format="parquet").to_table(columns=columns or None)

    def train_batches(self, batch_size: int, rank: int, world: int) -> Iterator[Any]:
        g = batch_size * world
        for k in range(self.table.num_rows // g):
            yield self.table.slice(k * g + rank * batch_size, batch_size)


def _gather(local: dict[str, np.ndarray], world: int) -> dict[str, np.ndarray]:
    import torch.distributed as dist

    if world <= 1 or not dist.is_initialized():
        return local
    parts: list[Any] = [None] * world
    dist.all_gather_object(parts, local)
    return {k: np.concatenate([p[k] for p in parts]) for k in local}


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Entry point run on every Ray Train worker (and in the driver for ``num_workers=0``)."""
    import ray.train
    import torch.distributed as dist
    from ray.train import Checkpoint

    from widedeep.features import FeatureSpace
    from widedeep.model.checkpoint import load_state_into, read_meta, save_checkpoint

    cfg = config_from_dict(loop_config["config"])
    fs = FeatureSpace.from_json(loop_config["feature_space"])
    task = get_task(cfg.task)
    metric, mode = selection_metric(task, fs, cfg)
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    distributed = world > 1 and dist.is_initialized()
    device = torch.device("cpu")
    if cfg.use_gpu and torch.cuda.is_available():
        import ray.train.torch

        device = ray.train.torch.get_device()
    if cfg.torch_threads:  # small models on shared CPUs: extra OpenMP threads only spin-wait
        torch.set_num_threads(cfg.torch_threads)
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)

    model = task.build_model(fs, cfg)
    restored = ray.train.get_checkpoint()
    if restored is None and cfg.warm_start_from:  # on the whole tables, before they are sharded
        from widedeep.train.warm_start import warm_start

        report = warm_start(model, fs, cfg.warm_start_from)
        if rank == 0:
            log(f"warm start from {cfg.warm_start_from}: {report}")
    # issue 16 hook: tables split by rows across workers per cfg.sharding (before .to(device) and restore)
    from widedeep.train.sharded_training import shard_for_training

    model, shard_msg = shard_for_training(model, cfg, rank, world)
    if shard_msg and rank == 0:
        log(shard_msg)
    model = model.to(device)
    dense_params = [p for p in model.parameters() if p.requires_grad]
    optimizer = cfg.optim.dense.build(dense_params) if dense_params else None

    state = TrainState()
    if restored is not None:
        with restored.as_directory() as d:
            load_state_into(d, model, optimizer)
            state = TrainState.from_dict(read_meta(d).get("train_state", {}))
        state.resumes.append({"epoch": state.epoch, "global_step": state.global_step})
        if rank == 0:
            log(
                f"resumed from checkpoint at epoch {state.epoch} step {state.global_step} "
                f"(+{state.step_in_epoch} batches into epoch {state.epoch + 1})"
            )

    train_model: torch.nn.Module = model
    if distributed:
        from torch.nn.parallel import DistributedDataParallel as DDP

        sparse_pg = dist.new_group(backend=dist.get_backend())
        for m in model.modules():
            if hasattr(m, "set_process_group") and m is not model:
                m.set_process_group(sparse_pg)
        if dense_params:
            train_model = DDP(
                model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False
            )

    cols = list(loop_config["columns"])
    collate = _Collate(task, fs, cfg)
    det_train = None
    if cfg.debug.deterministic_shards:
        det_train = _DeterministicReader(os.path.join(cfg.data, "train"), cols)
        steps_per_epoch = det_train.table.num_rows // (cfg.batch_size * world)
    else:
        steps_per_epoch = max(1, math.ceil((loop_config["train_rows"] // max(world, 1)) / cfg.batch_size))

    def train_batches() -> Iterator[Any]:
        if det_train is not None:
            for t in det_train.train_batches(cfg.batch_size, rank, world):
                yield task.collate(t, fs, cfg)
            return
        shard = ray.train.get_dataset_shard("train")
        yield from shard.iter_torch_batches(
            batch_size=cfg.batch_size, collate_fn=collate, prefetch_batches=cfg.prefetch_batches, device="cpu"
        )

    def valid_batches() -> Iterator[Any]:
        from widedeep.train.sharded_training import empty_batch, lockstep

        batches = (
            task.collate(t, fs, cfg)
            for t in rank_row_batches(loop_config["valid_dir"], cols, cfg.eval_batch_size, rank, world)
        )
        # issue 16: sharded lookups are collective: every worker runs as many batches as the busiest
        yield from lockstep(batches, model, lambda: empty_batch(task, fs, cfg, loop_config["valid_dir"], cols), device)

    local_mode = bool(loop_config.get("local_mode", False))

    def report(metrics: dict[str, Any], name: str) -> None:
        """Every rank calls this at the same points; rank 0 attaches the checkpoint."""
        metrics = {**metrics, "checkpoint_name": name}
        if rank != 0:
            from widedeep.train.sharded_training import rank_tables_dir

            with rank_tables_dir(model, rank) as tables_dir:  # issue 16: this worker's rows of sharded tables
                if tables_dir is None:
                    ray.train.report(metrics, checkpoint=None)
                else:
                    ray.train.report(
                        metrics, checkpoint=Checkpoint.from_directory(tables_dir), checkpoint_dir_name=name
                    )
            return
        if local_mode:  # local mode keeps checkpoints in memory only: write them in place
            d = Path(loop_config["run_dir"]) / name
            tmp = None
        else:
            tmp = tempfile.mkdtemp(prefix="widedeep-ckpt-")
            d = Path(tmp)
        save_checkpoint(
            d,
            model=model,
            optimizer=optimizer,
            feature_space=fs,
            config=loop_config["config"],
            metrics=metrics,
            task=task.name,
            state={
                "epoch": state.epoch,
                "global_step": state.global_step,
                "step_in_epoch": state.step_in_epoch,
                "train_state": asdict(state),
            },
        )
        try:
            ray.train.report(metrics, checkpoint=Checkpoint.from_directory(str(d)), checkpoint_dir_name=name)
        finally:
            if tmp:
                shutil.rmtree(tmp, ignore_errors=True)

    def validate() -> dict[str, float]:
        module = unwrap(train_model)
        module.eval()
        outs: dict[str, list[np.ndarray]] = {}
        with torch.no_grad():
            for batch in valid_batches():
                for k, v in task.eval_outputs(module, batch_to(batch, device), cfg).items():
                    outs.setdefault(k, []).append(np.asarray(v))
        module.train()
        local = {k: np.concatenate(v) for k, v in outs.items()}
        if not local:  # this rank's shard was empty: contribute empty arrays of the right keys
            local = {k: np.zeros(0) for k in loop_config.get("eval_keys", ["outputs", "labels"])}
        return task.eval_metrics(_gather(local, world), fs, cfg)

    def better(score: float) -> bool:
        if state.best_score is None or not math.isfinite(state.best_score):
            return math.isfinite(score)
        d = cfg.early_stopping.min_delta
        return score > state.best_score + d if mode == "max" else score < state.best_score - d

    restored_run = restored is not None
    dense_cfg = cfg.optim.dense
    total_steps = cfg.epochs * steps_per_epoch
    model.train()
    fail_at = cfg.debug.fail_at_step
    while state.epoch < cfg.epochs and not state.stopped:
        epoch = state.epoch
        skip = state.step_in_epoch
        loss_sum, loss_n = 0.0, 0
        t0 = time.perf_counter()
        t_last, s_last = t0, state.samples
        t_first, s_first = None, 0  # steady-state throughput: from the end of the first batch
        it = iter(train_batches())
        for _ in range(skip):  # mid-epoch resume: the first batches of this epoch are done
            next(it, None)
        for batch in it:
            batch = batch_to(batch, device)
            if optimizer is not None and dense_cfg.schedule != "constant":
                f = lr_factor(
                    dense_cfg.schedule, state.global_step, total_steps, dense_cfg.min_lr_ratio, dense_cfg.warmup_steps
                )
                for g in optimizer.param_groups:
                    g["lr"] = dense_cfg.lr * f
            elif optimizer is not None and dense_cfg.warmup_steps:
                f = lr_factor("constant", state.global_step, total_steps, 0.0, dense_cfg.warmup_steps)
                for g in optimizer.param_groups:
                    g["lr"] = dense_cfg.lr * f
            loss = task.loss(train_model, batch, cfg)
            if optimizer is not None:
                optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if optimizer is not None:
                optimizer.step()
            n = batch_size_of(batch)
            state.samples += n * world
            state.step_in_epoch += 1
            state.global_step += 1
            loss_sum += float(loss.detach()) * n
            loss_n += n
            if t_first is None:
                t_first, s_first = time.perf_counter(), state.samples
            if rank == 0 and state.global_step % cfg.log_every_steps == 0:
                now = time.perf_counter()
                rate = (state.samples - s_last) / max(now - t_last, 1e-9)
                remaining = (cfg.epochs - epoch - 1) * steps_per_epoch + max(steps_per_epoch - state.step_in_epoch, 0)
                step_rate = cfg.log_every_steps / max(now - t_last, 1e-9)
                log(
                    f"epoch {epoch + 1}/{cfg.epochs} step {state.step_in_epoch}/{steps_per_epoch} "
                    f"loss {loss_sum / max(loss_n, 1):.4f} {rate:,.0f} samples/s ETA {_fmt_eta(remaining / step_rate)}"
                )
                t_last, s_last = now, state.samples
            if cfg.checkpoint_every_steps and state.global_step % cfg.checkpoint_every_steps == 0:
                state.train_seconds += time.perf_counter() - t0
                t0 = time.perf_counter()
                report(
                    {
                        "kind": "step",
                        "epoch": epoch,
                        "global_step": state.global_step,
                        "score": STEP_SCORE,
                        "train_loss": loss_sum / max(loss_n, 1),
                    },
                    f"step={state.global_step:08d}",
                )
            if (
                fail_at is not None
                and not restored_run
                and state.global_step == fail_at
                and rank == cfg.debug.fail_rank
            ):
                log(f"debug.fail_at_step={fail_at}: killing worker pid {os.getpid()} (test hook)")
                os.kill(os.getpid(), signal.SIGKILL)
        t_end = time.perf_counter()
        state.train_seconds += t_end - t0
        steady = (state.samples - s_first) / (t_end - t_first) if t_first is not None and t_end > t_first else 0.0
        v0 = time.perf_counter()
        vm = validate()
        if metric not in vm:
            raise ConfigError(
                f"early_stopping.metric: {metric!r} is not a validation metric of task {cfg.task!r} "
                f"(it reports {sorted(vm)})"
            )
        score = float(vm.get(metric, float("nan")))
        if better(score):
            state.best_score, state.best_epoch, state.bad_epochs = score, epoch + 1, 0
        else:
            state.bad_epochs += 1
            if cfg.early_stopping.enabled and state.bad_epochs > cfg.early_stopping.patience:
                state.stopped = True
        state.epoch = epoch + 1
        state.step_in_epoch = 0
        sps = state.samples / max(state.train_seconds, 1e-9)
        rec = {"epoch": epoch + 1, "train_loss": loss_sum / max(loss_n, 1), **{f"valid_{k}": v for k, v in vm.items()}}
        state.history.append(rec)
        if rank == 0:
            shown = " ".join(f"{k} {v:.4f}" for k, v in vm.items() if isinstance(v, float))
            log(
                f"epoch {epoch + 1}/{cfg.epochs} done: train loss {rec['train_loss']:.4f} | valid {shown} "
                f"| {sps:,.0f} samples/s | validation {time.perf_counter() - v0:.1f}s"
                + (" | early stop" if state.stopped else "")
            )
        scored = score if mode == "max" else -score
        report(
            {
                "kind": "epoch",
                "epoch": epoch + 1,
                "global_step": state.global_step,
                "score": scored if math.isfinite(scored) else STEP_SCORE,
                "primary_metric": metric,
                "train_loss": rec["train_loss"],
                "train_samples_per_s": sps,
                "train_samples_per_s_steady": steady,
                "valid": vm,
                "best_epoch": state.best_epoch,
                "stopped": state.stopped,
            },
            f"epoch={epoch + 1:04d}",
        )
