"""The driver side of ``widedeep train``: plan the job (data checks, ``data_cache``), build the
TorchTrainer, run it, pick the best checkpoint, write the metrics JSON.

The driver never materialises the data. A train split that fits in memory is read by each
worker itself and kept across epochs (``widedeep.train.feed``); a larger one is streamed:
``read_parquet`` over the prepared shards (only the columns the task needs, file order shuffled
per epoch, rows permuted inside windows by Ray Data tasks) is handed to the trainer, which
streams a split of it to each worker.

Resume is Ray Train V2's: the run directory is ``{storage_path}/{run_name}``, and launching the
same name again continues from its latest checkpoint (``ray.train.get_checkpoint()`` in the
loop). Without ``run_name`` every launch gets a fresh, timestamped name.

The result is restore-best: the run's model is the epoch-end checkpoint with the best validation
metric (every epoch-end report carries one, scored by ``score``), not necessarily the last one.
A refit run (``TrainConfig.refit``: trained on train and valid, nothing held out) has no
validation; its epochs are scored by their number, so its result is its last epoch.
"""

from __future__ import annotations

import json
import math
import os
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from widedeep import tracking
from widedeep.errors import DataError, WidedeepError
from widedeep.paths import FS_ERRORS, Location, is_uri, short_error, write_json
from widedeep.train.config import REFIT_SPLITS, RefitConfig, TrainConfig
from widedeep.train.hooks import LoopHooks
from widedeep.train.progress import log
from widedeep.train.timings import summarize
from widedeep.train.worker import LoopSpec

#: Ray Train V2's controller takes a worker's report only when it polls the worker group, every
#: ``RAY_TRAIN_HEALTH_CHECK_INTERVAL_S`` (default 2 s), and a worker's ``ray.train.report`` waits
#: in a one-slot queue until the previous report is taken. With the default, every epoch shorter
#: than 2 s stalled up to 2 s in its report and the run's end was noticed up to 2 s late (Adult
#: recipe: 12 of the 21 s after start-up). Polling every 0.1 s costs one small actor call per
#: worker per poll; a poll a busy worker does not answer in time is carried over, not an error
#: (Ray Train's own hang timeout, 10 minutes by default, is unchanged). A value already in the
#: environment wins; Ray Train propagates it from the driver to its controller.
CONTROLLER_ENV = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}


def apply_controller_env(environ: MutableMapping[str, str]) -> None:
    """``CONTROLLER_ENV`` into ``environ``, keeping any value already set there."""
    for key, value in CONTROLLER_ENV.items():
        environ.setdefault(key, value)


def _split_path(data: str, split: str) -> str:
    return str(Location.of(data) / split)


def _permute_rows(table: Any, seed: int = 0) -> Any:
    """Ray Data UDF: shuffle the rows of a window (cheap, streaming; file order is shuffled too).

    The permutation is seeded by the job's seed and the window's content, so a run is
    reproducible (the file order, reshuffled every epoch by ``FileShuffleConfig``, makes the
    windows differ between epochs)."""
    import zlib

    import numpy as np
    import pyarrow as pa

    h = 0
    for name in table.column_names[:2]:
        col = table.column(name).combine_chunks()
        if pa.types.is_integer(col.type) or pa.types.is_floating(col.type):
            h = zlib.crc32(np.asarray(col.to_numpy(zero_copy_only=False)).tobytes(), h)
    return table.take(np.random.default_rng([seed, h, table.num_rows]).permutation(table.num_rows))


def build_dataset(cfg: TrainConfig, splits: tuple[str, ...], columns: list[str], *, train: bool) -> Any:
    import ray.data
    from ray.data import FileShuffleConfig

    shuffle = FileShuffleConfig(seed=cfg.seed) if train and cfg.shuffle != "none" else None
    paths = [_split_path(cfg.data, s) for s in splits]
    ds = ray.data.read_parquet(paths if len(paths) > 1 else paths[0], shuffle=shuffle, file_extensions=["parquet"])
    if columns:
        ds = ds.select_columns(columns)
    if train and cfg.shuffle == "batches":
        ds = ds.map_batches(
            _permute_rows, batch_format="pyarrow", batch_size=cfg.shuffle_window, fn_kwargs={"seed": cfg.seed}
        )
    return ds


def resolve(cfg: TrainConfig) -> TrainConfig:
    """Absolute data / storage paths and a run name, so the config written into checkpoints
    (and the one a resumed run reads) is unambiguous."""
    import dataclasses

    data = cfg.data if is_uri(cfg.data) else str(Path(cfg.data).expanduser().resolve())
    storage = cfg.storage_path if is_uri(cfg.storage_path) else str(Path(cfg.storage_path).expanduser().resolve())
    name = cfg.run_name or f"widedeep-{time.strftime('%Y%m%d-%H%M%S')}"
    warm = cfg.warm_start_from
    if warm and tracking.is_registry_uri(warm):  # models:/NAME@ALIAS -> the registered checkpoint
        warm = tracking.resolve(warm, "checkpoint", cfg.tracking.uri)
    if warm and not is_uri(warm):
        warm = str(Path(warm).expanduser().resolve())
    return dataclasses.replace(cfg, data=data, storage_path=storage, run_name=name, warm_start_from=warm)


class _LocalCheckpoint:
    def __init__(self, path: str) -> None:
        self.path = path


def scan_checkpoints(run_dir: str) -> list[tuple[Any, dict[str, Any]]]:
    """(checkpoint, metrics) of every complete checkpoint directory under ``run_dir``."""
    from widedeep.model.checkpoint import is_checkpoint_dir

    out = []
    for p in sorted(Path(run_dir).iterdir()) if Path(run_dir).is_dir() else []:
        if p.is_dir() and is_checkpoint_dir(p) and (p / "metrics.json").exists():
            out.append((_LocalCheckpoint(str(p)), json.loads((p / "metrics.json").read_text())))
    return out


def _pick_best(best_checkpoints: list[tuple[Any, dict[str, Any]]]) -> tuple[Any, dict[str, Any]] | None:
    epochs = [(c, m) for c, m in best_checkpoints if m.get("kind") == "epoch"]
    if not epochs:
        return None
    # highest score; among ties the earliest epoch (restore-best keeps the first best model)
    return max(epochs, key=lambda cm: (cm[1].get("score", -math.inf), -cm[1].get("epoch", 0)))


@dataclass(frozen=True)
class Job:
    """A training job ready to hand to Ray Train: what every worker gets, and the Ray Data train
    pipeline when the split is streamed (empty when it is cached or a test hook supplies it)."""

    spec: LoopSpec
    datasets: dict[str, Any]
    why_cache: str


def plan_job(cfg: TrainConfig, hooks: LoopHooks, started_at: float) -> Job:
    """Check the prepared data, start Ray, pick ``data_cache`` and build the loop's spec."""
    import ray

    from widedeep.features import FeatureSpace
    from widedeep.ray_runtime import ensure_ray
    from widedeep.train.feed import resolve_data_cache, split_size
    from widedeep.train.tasks import get_task

    root = Location.of(cfg.data)
    for part in ("feature_space.json", "train", "valid") if root.is_local else ():
        if not (root / part).exists():
            raise DataError(f"{cfg.data}: not a prepared data directory (missing {part}); run `widedeep prepare`")
    fs = FeatureSpace.load(_split_path(cfg.data, "feature_space.json"))
    columns = get_task(cfg.task).required_columns(fs, cfg)
    train_dirs = tuple(_split_path(cfg.data, s) for s in cfg.refit.fit_splits)
    train_rows = train_bytes = 0
    for d in train_dirs:
        try:
            rows, nbytes = split_size(d, columns)
        except FS_ERRORS as e:
            raise DataError(f"{d}: cannot read prepared Parquet shards: {short_error(e)}") from e
        if rows == 0:
            raise DataError(f"{d}: no rows")
        train_rows, train_bytes = train_rows + rows, train_bytes + nbytes
    ensure_ray()
    store = float(ray.cluster_resources().get("object_store_memory", 0.0))
    mode, why = resolve_data_cache(cfg.data_cache, train_bytes, cfg.num_workers, store)
    run_loc = Location.of(cfg.storage_path) / str(cfg.run_name)
    local_mode = cfg.num_workers == 0
    if local_mode and run_loc.is_local:
        os.makedirs(run_loc.path, exist_ok=True)
    spec = LoopSpec(
        config=cfg.to_dict(),
        feature_space=fs.to_json(),
        columns=columns,
        train_rows=train_rows,
        run_dir=run_loc.path if run_loc.is_local else str(run_loc),
        train_dirs=train_dirs,
        valid_dir="" if cfg.refit.on_valid else _split_path(cfg.data, "valid"),
        local_mode=local_mode,
        data_cache=mode,
        started_at=started_at,
    )
    stream = mode == "stream" and not hooks.replaces_train_data
    datasets = {"train": build_dataset(cfg, cfg.refit.fit_splits, columns, train=True)} if stream else {}
    return Job(spec, datasets, why)


def _make_trainer(cfg: TrainConfig, job: Job, hooks: LoopHooks, run: tuple[str, str] | None) -> Any:
    from ray.train import CheckpointConfig, DataConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    from widedeep.train import tracking as train_tracking
    from widedeep.train.loop import train_loop_per_worker

    apply_controller_env(os.environ)  # read by TorchTrainer when it starts the controller
    resources: dict[str, float] = {"CPU": cfg.cpus_per_worker}
    if cfg.use_gpu:
        resources["GPU"] = 1
    data_config = None
    if cfg.shuffle == "none":  # streamed in file order, as cached
        ingest = DataConfig.default_ingest_options()
        ingest.preserve_order = True
        data_config = DataConfig(execution_options=ingest)
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": job.spec, "hooks": hooks},
        scaling_config=ScalingConfig(
            num_workers=cfg.num_workers,
            use_gpu=cfg.use_gpu,
            resources_per_worker=resources,
            placement_strategy=cfg.placement_strategy,
            label_selector=dict(cfg.label_selector) or None,
        ),
        run_config=RunConfig(
            name=cfg.run_name,
            storage_path=cfg.storage_path,
            failure_config=FailureConfig(max_failures=cfg.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=cfg.num_to_keep, checkpoint_score_attribute="score", checkpoint_score_order="max"
            ),
            callbacks=[train_tracking.EpochLogger(*run)] if run is not None and not job.spec.local_mode else None,
        ),
        datasets=job.datasets,
        dataset_config=data_config,
    )


def _fit(trainer: Any, cfg: TrainConfig, run: tuple[str, str] | None) -> tuple[Any, float]:
    """``trainer.fit()`` and its wall time; a failed run ends its tracking run and names itself."""
    t0 = time.perf_counter()
    try:
        result = trainer.fit()
    except WidedeepError:
        if run is not None:
            tracking.end_run(run[0], run[1], "FAILED")
        raise
    except Exception as e:  # TrainingFailedError & co: surface the worker's error message
        if run is not None:
            tracking.end_run(run[0], run[1], "FAILED")
        raise WidedeepError(f"training run {cfg.run_name} failed: {e}") from e
    return result, time.perf_counter() - t0


def run_training(
    cfg: TrainConfig,
    *,
    metrics_out: str | None = None,
    hooks: LoopHooks | None = None,
    started_at: float | None = None,
) -> dict[str, Any]:
    """Run one training job end to end; returns (and optionally writes) the summary metrics.

    ``hooks``: callbacks into every worker's loop (``widedeep.train.hooks``; tests pass fault
    injection here). ``started_at``: ``time.time()`` the run counts its start-up from
    (``timings.ray_start_s``; default: now). With ``refit.enabled`` the job is two runs
    (``refit_config``) and the result is the refit's checkpoint (``with_refit``)."""
    started_at = time.time() if started_at is None else started_at
    hooks = hooks or LoopHooks()
    cfg = resolve(cfg)
    summary = _train_once(cfg, hooks, started_at)
    if cfg.refit.enabled:
        refit = _train_once(refit_config(cfg, summary), hooks, time.time())
        summary = with_refit(summary, refit)
    if metrics_out:
        write_json(metrics_out, summary)  # a local path or a URI (a job on a cluster writes to shared storage)
    return summary


def refit_config(cfg: TrainConfig, selection: dict[str, Any]) -> TrainConfig:
    """The refit run of ``cfg`` (``TrainConfig.refit``): the same job from scratch on train and
    valid, for the number of epochs the selection run's validation chose, under its own run name
    (``NAME-refit``: relaunching the job resumes both runs), with no validation."""
    import dataclasses

    return dataclasses.replace(
        cfg,
        run_name=f"{cfg.run_name}-refit",
        epochs=int(selection["best_epoch"]),
        early_stopping=dataclasses.replace(cfg.early_stopping, enabled=False),
        refit=RefitConfig(enabled=False, fit_splits=REFIT_SPLITS, selected_by=selection["checkpoint"]),
    )


def with_refit(selection: dict[str, Any], refit: dict[str, Any]) -> dict[str, Any]:
    """The metrics JSON of a refit job: the selection run's validation figures (the refit has none
    to give), the refit's checkpoint as the job's result, and both runs named."""
    return selection | {
        "checkpoint": refit["checkpoint"],
        "latest_checkpoint": refit["latest_checkpoint"],
        "selection_checkpoint": selection["checkpoint"],
        "refit": {
            "fit_splits": list(REFIT_SPLITS),
            "epochs": refit["epochs_completed"],
            "run_name": refit["run_name"],
            "wall_seconds": refit["wall_seconds"],
            "train_samples_per_s": refit["train_samples_per_s"],
            "timings": refit["timings"],
        },
    }


def _train_once(cfg: TrainConfig, hooks: LoopHooks, started_at: float) -> dict[str, Any]:
    """One run (``cfg`` resolved): plan, fit, summarize; its tracking run if enabled."""
    from widedeep.train import tracking as train_tracking

    job = plan_job(cfg, hooks, started_at)
    run = train_tracking.start(cfg)  # None unless cfg.tracking.enabled
    trainer = _make_trainer(cfg, job, hooks, run)
    log(
        f"run {cfg.run_name}: {cfg.num_workers or 'local-mode'} worker(s), {job.spec.train_rows:,} train rows, "
        f"storage {job.spec.run_dir}; {job.why_cache}"
    )
    result, wall = _fit(trainer, cfg, run)
    summary = summarize_run(cfg, job, result, wall)
    if cfg.refit.on_valid:
        fitted = " + ".join(cfg.refit.fit_splits)
        log(f"refit on {fitted}: {summary['epochs_completed']} epochs; checkpoint {summary['checkpoint']}")
    else:
        keys = dict.fromkeys(
            [summary.get("primary_metric") or "auc", "auc", "logloss", "accuracy", "calibration", "rmse"]
        )
        shown = ", ".join(f"{k} {summary[k]:.4f}" for k in keys if isinstance(summary.get(k), float))
        log(f"best epoch {summary['best_epoch']} (valid {shown}); checkpoint {summary['checkpoint']}")
    if run is not None:
        summary["mlflow"] = train_tracking.finish(cfg, run, summary, logged_live=not job.spec.local_mode)
    return summary


def _reported(result: Any, job: Job) -> list[tuple[Any, dict[str, Any]]]:
    """(checkpoint, metrics) of every checkpoint the run kept."""
    best_list = list(result.best_checkpoints or [])
    if not best_list and job.spec.local_mode and Location.of(job.spec.run_dir).is_local:
        best_list = scan_checkpoints(job.spec.run_dir)  # local mode keeps no checkpoint list: read the run dir
    return best_list


def checkpoint_location(cfg: TrainConfig, checkpoint: Any) -> str:
    """Where a reported checkpoint is, as the user can pass it on (``widedeep export``, ``evaluate``):
    a Ray ``Checkpoint``'s ``path`` is relative to its file system, so a run stored at a URI would
    otherwise report ``bucket/runs/NAME/epoch=0002`` without its ``s3://``."""
    if not is_uri(cfg.storage_path):
        return checkpoint.path
    from urllib.parse import urlsplit, urlunsplit

    uri = urlsplit(cfg.storage_path)  # no file system call: a URI's query (endpoint options) stays last
    name = checkpoint.path.rstrip("/").rsplit("/", 1)[-1]
    return urlunsplit(uri._replace(path=f"{uri.path.rstrip('/')}/{cfg.run_name}/{name}"))


def summarize_run(cfg: TrainConfig, job: Job, result: Any, wall: float) -> dict[str, Any]:
    """The metrics JSON: the best epoch's validation metrics, where the checkpoints are, the
    per-epoch history and ``timings`` (``widedeep.train.timings``)."""
    best_list = _reported(result, job)
    best = _pick_best(best_list)
    if best is None:
        raise WidedeepError(f"training run {cfg.run_name} reported no epoch checkpoint")
    ckpt, m = best
    latest = result.checkpoint
    if latest is None and best_list:
        latest = max(best_list, key=lambda cm: (cm[1].get("global_step", 0), cm[1].get("kind") == "epoch"))[0]
    epochs = [mm for _, mm in best_list if mm.get("kind") == "epoch"]
    last_epoch = max(epochs, key=lambda mm: mm.get("epoch", 0))
    history = sorted(
        (
            {"epoch": mm["epoch"], "train_loss": mm.get("train_loss")}
            | {f"valid_{k}": v for k, v in mm.get("valid", {}).items()}
            for mm in epochs
        ),
        key=lambda r: r["epoch"],
    )
    timed = last_epoch.get("timings") or {}
    return {
        **{k: v for k, v in m.get("valid", {}).items()},
        "split": "valid" if m.get("valid") else None,
        "primary_metric": m.get("primary_metric"),
        "best_epoch": m.get("epoch"),
        "epochs_completed": last_epoch.get("epoch"),
        "early_stopped": bool(last_epoch.get("stopped")),
        "global_step": last_epoch.get("global_step"),
        "train_samples_per_s": last_epoch.get("train_samples_per_s"),
        "train_samples_per_s_steady": last_epoch.get("train_samples_per_s_steady"),
        "wall_seconds": wall,
        "timings": summarize(timed.get("ray_start_s"), list(timed.get("epochs", []))),
        "data_cache": job.spec.data_cache,
        "checkpoint": checkpoint_location(cfg, ckpt),
        "latest_checkpoint": checkpoint_location(cfg, latest) if latest is not None else None,
        "run_name": cfg.run_name,
        "storage_path": cfg.storage_path,
        "num_workers": cfg.num_workers,
        "history": history,
    }
