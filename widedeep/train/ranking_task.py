"""``task: ranking`` for ``widedeep train``: Wide & Deep on the FeatureSpace's label.

The rows of a batch are the prepared rows (``widedeep.data.collate.Collator``), plus, with
``task_config.sampled_negatives``, label-0 rows with items drawn from the training catalog
(``widedeep.train.negatives``). Validation metrics are the pointwise ones of
``widedeep.train.pointwise_metrics`` (AUC and log loss, or RMSE).
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from widedeep.data.collate import Collator
from widedeep.model.build import build_model
from widedeep.train.negatives import NegativeSampler, extra_columns, ranking_config
from widedeep.train.pointwise_metrics import task_metrics


class RankingTask:
    """Wide & Deep on a binary or regression label (see ``widedeep.train.tasks.Task``).

    The collator of each FeatureSpace and the negative sampler of each (data, FeatureSpace,
    sampling power) are built once and cached on the object (Ray Data's loader threads share it).
    """

    name = "ranking"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._collators: dict[str, Collator] = {}
        self._samplers: dict[tuple[str, str, float], NegativeSampler] = {}

    def metric_for(self, fs: Any) -> tuple[str, str]:
        return ("auc", "max") if fs.task == "binary" else ("rmse", "min")

    def required_columns(self, fs: Any, cfg: Any) -> list[str]:
        cols = Collator(fs).columns()
        if ranking_config(cfg).sampled_negatives:
            cols = list(dict.fromkeys([*cols, *extra_columns(fs), "label"]))
        return cols

    def build_model(self, fs: Any, cfg: Any) -> nn.Module:
        ranking_config(cfg)  # a typo in task_config fails before training starts
        return build_model("ranking", fs, cfg.model, cfg.optim, cfg.task_config, seed=cfg.seed)

    def sampler(self, fs: Any, cfg: Any) -> NegativeSampler:
        """The negative sampler of this data directory (built once; loader threads share it)."""
        data = str(cfg.get("data") if isinstance(cfg, dict) else cfg.data)
        power = ranking_config(cfg).sampling_power
        key = (data, str(fs.content_hash), power)
        with self._lock:
            s = self._samplers.get(key)
            if s is None:
                s = self._samplers[key] = NegativeSampler(fs, data, power)
            return s

    def _collator(self, fs: Any) -> Collator:
        with self._lock:
            c = self._collators.get(fs.content_hash)
            if c is None:
                c = self._collators[fs.content_hash] = Collator(fs)
            return c

    def collate(self, table: Any, fs: Any, cfg: Any) -> Any:
        k = ranking_config(cfg).sampled_negatives
        if k:
            if not isinstance(table, pa.Table):
                table = pa.table(dict(table))
            table = self.sampler(fs, cfg).add(table, k, cfg.seed)
        return self._collator(fs)(table)

    def collate_split(self, table: Any, fs: Any, cfg: Any) -> Any | None:
        """The whole ``table`` as one ``Batch`` when a batch of rows is exactly those rows of it
        (no sampled negatives), else ``None``: a cached train split is then collated once and
        each step's batch is an index selection (``widedeep.data.batch.RowTaker``)."""
        if ranking_config(cfg).sampled_negatives:
            return None
        return self._collator(fs)(table)

    def loss(self, model: nn.Module, batch: Any, cfg: Any) -> torch.Tensor:
        logits = model(batch)  # through a DDP wrapper, if any, so gradients sync
        return getattr(model, "module", model).loss(logits, batch.labels)

    def eval_outputs(self, model: nn.Module, batch: Any, cfg: Any) -> dict[str, np.ndarray]:
        out = model(batch)
        return {"outputs": out.float().cpu().numpy(), "labels": batch.labels.cpu().numpy()}

    def eval_metrics(self, outputs: dict[str, np.ndarray], fs: Any, cfg: Any) -> dict[str, float]:
        return task_metrics(fs.task, outputs["labels"], outputs["outputs"])
