"""Score a prepared split with a checkpoint, in one process (no Ray needed).

Reads the split's Parquet shards batch by batch (only the columns the model needs), runs the
model in eval mode and computes the same metrics as training-time validation
(``widedeep.train.pointwise_metrics``), so a checkpoint's valid figures and test figures compare directly.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import torch

from widedeep.errors import DataError
from widedeep.model.checkpoint import load_checkpoint, refuse_in_sample
from widedeep.paths import Location
from widedeep.train.config import config_from_dict
from widedeep.train.loop import log
from widedeep.train.tasks import get_task


def iter_split(path: str, columns: list[str], batch_size: int) -> Any:
    try:
        ds = pads.dataset(path, format="parquet")
    except (FileNotFoundError, OSError) as e:
        raise DataError(f"{path}: cannot read prepared Parquet shards: {e}") from e
    missing = [c for c in columns if c not in ds.schema.names]
    if missing:
        raise DataError(
            f"{path}: columns {missing} missing (have {ds.schema.names}); was it prepared with this FeatureSpace?"
        )
    for rb in ds.to_batches(columns=columns, batch_size=batch_size):
        if rb.num_rows:
            yield pa.Table.from_batches([rb])


def _predict(ck: Any, data: str, batch_size: int) -> dict[str, np.ndarray]:
    cfg = config_from_dict(ck.config)
    task = get_task(ck.task)
    fs = ck.feature_space
    outs: dict[str, list[np.ndarray]] = {}
    with torch.no_grad():
        for table in iter_split(data, task.required_columns(fs, cfg), batch_size):
            batch = task.collate(table, fs, cfg)
            for k, v in task.eval_outputs(ck.model, batch, cfg).items():
                outs.setdefault(k, []).append(np.asarray(v))
    if not outs:
        raise DataError(f"{data}: no rows to evaluate")
    return {k: np.concatenate(v) for k, v in outs.items()}


def predict_split(checkpoint: str, data: str, *, batch_size: int = 8192) -> dict[str, np.ndarray]:
    """The task's raw outputs of ``checkpoint`` on split ``data`` (ranking: ``outputs`` and
    ``labels``), for plots and custom analyses in notebooks."""
    return _predict(load_checkpoint(checkpoint), data, batch_size)


def evaluate_split(checkpoint: str, data: str, *, batch_size: int = 8192) -> dict[str, Any]:
    """Metrics of ``checkpoint`` on the prepared split directory ``data``; a split the checkpoint
    was fitted on (``LoadedCheckpoint.fit_splits``: valid too for a refit) is refused, its figures
    there would be in-sample."""
    ck = load_checkpoint(checkpoint)
    split = Location.of(data).name
    refuse_in_sample(split, ck.fit_splits, str(checkpoint))
    t0 = time.perf_counter()
    outputs = _predict(ck, data, batch_size)
    dt = time.perf_counter() - t0
    n = len(next(iter(outputs.values())))
    metrics = get_task(ck.task).eval_metrics(outputs, ck.feature_space, config_from_dict(ck.config))
    log(f"evaluated {n:,} rows of {data} in {dt:.1f}s ({n / max(dt, 1e-9):,.0f} rows/s)")
    return {**metrics, "checkpoint": str(checkpoint), "data": str(data), "rows": n}
