"""What the training loop trains: a small task protocol, and the registry ``task:`` selects.

The loop (``widedeep.train.loop``) owns everything distributed — Ray Data sharding, DDP,
the sparse tables' process group, reports, checkpoints, early stopping — and asks the task
only for the model-specific parts. A task is any object with these members::

    name: str                        # "ranking", "retrieval", ... (written to checkpoint.json)
    metric_for(fs) -> (metric, mode) # validation metric for early stopping / best checkpoint,
                                     # mode "max" | "min" (a task module sets primary_metric /
                                     # primary_mode instead; default ("loss", "min"))
    required_columns(fs, cfg) -> list[str]
        prepared Parquet columns a batch needs (the loader selects only these)
    build_model(fs, cfg) -> nn.Module
        a fresh model; sparse tables as widedeep.kernels.TableBatchedEmbeddingBag modules
        (the loop finds them and calls set_process_group), dense parameters requires_grad=True
        (the loop wraps the model in DDP and builds cfg.optim.dense over them)
    collate(table: pyarrow.Table, fs, cfg) -> batch
        prepared columns -> whatever ``loss`` consumes (must be thread-safe: Ray Data's
        loader threads call it). May return the Arrow table unchanged.
    loss(model, batch, cfg) -> Tensor (scalar, MEAN over the batch: DDP averages over ranks)
        ``model`` may be the DDP wrapper: call ``model(...)`` for the forward so gradients sync;
        ``unwrap(model)`` gives the underlying module.
    eval_outputs(model, batch, cfg) -> dict[str, np.ndarray]
        per-batch arrays (same keys every batch) that are concatenated over the rank's
        validation shard and gathered from every rank; ``model`` is the unwrapped module in
        eval mode under ``torch.no_grad()``
    eval_metrics(outputs: dict[str, np.ndarray], fs, cfg) -> dict[str, float]
        the validation metrics from the gathered outputs (must contain primary_metric)

``task: retrieval`` lazily imports ``widedeep.retrieval.task`` (the retrieval helper's module).
That module must define ``build_model(fs, cfg)`` and ``loss(model, batch, cfg)``; every other
member above is optional there (``ModuleTask`` supplies defaults: all columns, the Arrow table
as the batch, mean validation loss as the metric). ``cfg`` is the ``TrainConfig``; a task's own
settings live in ``cfg.task_config`` (a free mapping: the task should validate it strictly,
e.g. with ``widedeep.config.from_dict``).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from widedeep.errors import ConfigError


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


class RankingTask:
    """Wide & Deep on a binary or regression label (the FeatureSpace's task)."""

    name = "ranking"

    def __init__(self) -> None:
        self._collators: dict[int, Any] = {}

    def metric_for(self, fs: Any) -> tuple[str, str]:
        return ("auc", "max") if fs.task == "binary" else ("rmse", "min")

    def required_columns(self, fs: Any, cfg: Any) -> list[str]:
        from widedeep.data.collate import Collator
        from widedeep.train.negatives import extra_columns, ranking_config

        cols = Collator(fs).columns()
        if ranking_config(cfg).sampled_negatives:
            cols = list(dict.fromkeys([*cols, *extra_columns(fs), "label"]))
        return cols

    def build_model(self, fs: Any, cfg: Any) -> nn.Module:
        from widedeep.model.wide_deep import WideAndDeep
        from widedeep.train.negatives import ranking_config

        ranking_config(cfg)  # a typo in task_config fails before training starts
        return WideAndDeep(fs, cfg.model, cfg.optim, seed=cfg.seed)

    def collate(self, table: Any, fs: Any, cfg: Any) -> Any:
        from widedeep.data.collate import Collator
        from widedeep.train.negatives import ranking_config, sampler_for

        c = self._collators.get(id(fs))
        if c is None:
            c = self._collators[id(fs)] = Collator(fs)
        k = ranking_config(cfg).sampled_negatives
        if k:
            import pyarrow as pa

            if not isinstance(table, pa.Table):
                table = pa.table(dict(table))
            table = sampler_for(fs, cfg).add(table, k, cfg.seed)
        return c(table)

    def loss(self, model: nn.Module, batch: Any, cfg: Any) -> torch.Tensor:
        logits = model(batch)
        return unwrap(model).loss(logits, batch.labels)

    def eval_outputs(self, model: nn.Module, batch: Any, cfg: Any) -> dict[str, np.ndarray]:
        out = model(batch)
        return {"outputs": out.float().cpu().numpy(), "labels": batch.labels.cpu().numpy()}

    def eval_metrics(self, outputs: dict[str, np.ndarray], fs: Any, cfg: Any) -> dict[str, float]:
        from widedeep.train.metrics import task_metrics

        return task_metrics(fs.task, outputs["labels"], outputs["outputs"])


class ModuleTask:
    """Adapts a task module (functions at module level) to the protocol, with defaults."""

    def __init__(self, name: str, module: ModuleType) -> None:
        for fn in ("build_model", "loss"):
            if not callable(getattr(module, fn, None)):
                raise ConfigError(f"task: {module.__name__} does not define {fn}(...)")
        self.name = name
        self.module = module
        self.primary_metric = getattr(module, "primary_metric", "loss")
        self.primary_mode = getattr(module, "primary_mode", "min" if self.primary_metric == "loss" else "max")

    def metric_for(self, fs: Any) -> tuple[str, str]:
        return self.primary_metric, self.primary_mode

    def required_columns(self, fs: Any, cfg: Any) -> list[str]:
        fn = getattr(self.module, "required_columns", None)
        return list(fn(fs, cfg)) if fn else []

    def build_model(self, fs: Any, cfg: Any) -> nn.Module:
        return self.module.build_model(fs, cfg)

    def collate(self, table: Any, fs: Any, cfg: Any) -> Any:
        fn = getattr(self.module, "collate", None)
        return fn(table, fs, cfg) if fn else table

    def loss(self, model: nn.Module, batch: Any, cfg: Any) -> torch.Tensor:
        return self.module.loss(model, batch, cfg)

    def eval_outputs(self, model: nn.Module, batch: Any, cfg: Any) -> dict[str, np.ndarray]:
        fn = getattr(self.module, "eval_outputs", None)
        if fn:
            return fn(model, batch, cfg)
        n = batch_size_of(batch)
        return {"loss_sum": np.array([float(self.module.loss(model, batch, cfg)) * n]), "n": np.array([n])}

    def eval_metrics(self, outputs: dict[str, np.ndarray], fs: Any, cfg: Any) -> dict[str, float]:
        fn = getattr(self.module, "eval_metrics", None)
        if fn:
            return dict(fn(outputs, fs, cfg))
        n = float(outputs["n"].sum())
        return {"loss": float(outputs["loss_sum"].sum()) / max(n, 1.0), "num_examples": int(n)}


_MODULES = {"retrieval": "widedeep.retrieval.task"}


def get_task(name: str) -> Any:
    """The task object for a config's ``task:`` value."""
    if name == "ranking":
        return RankingTask()
    if name in _MODULES:
        try:
            mod = importlib.import_module(_MODULES[name])
        except ImportError as e:
            raise ConfigError(f"task: {name!r} needs module {_MODULES[name]} ({e})") from e
        return ModuleTask(name, mod)
    raise ConfigError(f"task: unknown task {name!r} (known: ranking, {', '.join(_MODULES)})")
