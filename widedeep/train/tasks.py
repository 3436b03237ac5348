"""What the training loop trains: a small task protocol, and the registry ``task:`` selects.

The loop (``widedeep.train.loop``) owns everything distributed — Ray Data sharding, DDP,
the sparse tables' process group, reports, checkpoints, early stopping — and asks the task
only for the model-specific parts. A task is any object with these members::

    name: str                        # "ranking", "retrieval", ... (written to checkpoint.json)
    metric_for(fs) -> (metric, mode) # validation metric for early stopping / best checkpoint,
                                     # mode "max" | "min"
    required_columns(fs, cfg) -> list[str]
        prepared Parquet columns a batch needs (the loader selects only these)
    build_model(fs, cfg) -> nn.Module
        a fresh model; sparse tables as widedeep.kernels.TableBatchedEmbeddingBag modules
        (the loop finds them and calls set_process_group), dense parameters requires_grad=True
        (the loop wraps the model in DDP and builds cfg.optim.dense over them)
    collate(table: pyarrow.Table, fs, cfg) -> batch
        prepared columns -> whatever ``loss`` consumes (must be thread-safe: Ray Data's
        loader threads call it). May return the Arrow table unchanged.
    collate_split(table, fs, cfg) -> Batch | None   (optional)
        the whole table collated once, when a batch of rows is exactly those rows of it (a
        ``widedeep.data.batch.Batch``); ``None`` when batches are not row selections (sampled
        negatives). The cached train feed then selects rows per step instead of collating.
    loss(model, batch, cfg) -> Tensor (scalar, MEAN over the batch: DDP averages over ranks)
        ``model`` may be the DDP wrapper: call ``model(...)`` for the forward so gradients sync;
        ``unwrap(model)`` gives the underlying module.
    eval_outputs(model, batch, cfg) -> dict[str, np.ndarray]
        per-batch arrays (same keys every batch) that are concatenated over the rank's
        validation shard and gathered from every rank; ``model`` is the unwrapped module in
        eval mode under ``torch.no_grad()``
    eval_metrics(outputs: dict[str, np.ndarray], fs, cfg) -> dict[str, float]
        the validation metrics from the gathered outputs (must contain primary_metric)

``ranking`` is ``widedeep.train.ranking_task.RankingTask`` (Wide & Deep), ``retrieval`` is
``widedeep.train.retrieval_task.RetrievalTask`` (the two-tower retriever); both build their
model with ``widedeep.model.build`` (the recipe checkpoints are read with). ``cfg`` is the
``TrainConfig``; a task's own settings live in ``cfg.task_config`` (a free mapping the task
validates strictly with ``widedeep.config.from_dict``). A task object may cache what it derives
from the data (catalogs, samplers) on itself, keyed by everything it is derived from: the loop
keeps one per worker.
"""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from widedeep.errors import ConfigError
from widedeep.model.build import MODEL_TASKS
from widedeep.train.ranking_task import RankingTask
from widedeep.train.retrieval_task import RetrievalTask


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DDP wrapper (or the module itself)."""
    return getattr(model, "module", model)


def batch_to(batch: Any, device: torch.device) -> Any:
    """Move a task batch to ``device`` when it knows how (``Batch.to``); Arrow tables stay."""
    if device.type == "cpu":
        return batch
    to = getattr(batch, "to", None)
    return to(device, non_blocking=True) if callable(to) else batch


def batch_size_of(batch: Any) -> int:
    for attr in ("batch_size", "num_rows"):
        v = getattr(batch, attr, None)
        if isinstance(v, int):
            return v
    return len(batch)


class Task(Protocol):
    name: str

    def metric_for(self, fs: Any) -> tuple[str, str]: ...

    def required_columns(self, fs: Any, cfg: Any) -> list[str]: ...
    def build_model(self, fs: Any, cfg: Any) -> nn.Module: ...
    def collate(self, table: Any, fs: Any, cfg: Any) -> Any: ...
    def loss(self, model: nn.Module, batch: Any, cfg: Any) -> torch.Tensor: ...
    def eval_outputs(self, model: nn.Module, batch: Any, cfg: Any) -> dict[str, np.ndarray]: ...
    def eval_metrics(self, outputs: dict[str, np.ndarray], fs: Any, cfg: Any) -> dict[str, float]: ...


def get_task(name: str) -> Task:
    """A fresh task object for a config's ``task:`` value."""
    if name == "ranking":
        return RankingTask()
    if name == "retrieval":
        return RetrievalTask()
    raise ConfigError(f"task: unknown task {name!r} (known: {', '.join(MODEL_TASKS)})")
