"""``task: ranking`` for ``widedeep train``: Wide & Deep on the FeatureSpace's label.

The rows of a batch are the prepared rows (``widedeep.data.collate.Collator``), plus, with
``task_config.sampled_negatives``, label-0 rows with items drawn from the training catalog
(``widedeep.train.negatives``). With history crosses in the FeatureSpace
(``CrossedFeature.history``), every row first gets its user's liked columns and the crosses
(``widedeep.retrieval.liked``): the positives of the train split strictly before the row's
``timestamp`` (without timestamps: all of them but the row's own item). With candidate scores
(``CandidateScoreFeature``), every row of the batch, the logged ones and each sampled negative with
its own item, then gets them (``widedeep.retrieval.candidate_scores``, each row's own train positive
left out). The loss is the log loss, plus, with ``task_config.listwise_weight``, the softmax
cross-entropy of each logged positive among its own negatives (``listwise_loss``; why:
``widedeep.train.negatives``). Validation metrics are the pointwise ones of
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
from widedeep.errors import ConfigError
from widedeep.model.build import build_model
from widedeep.model.two_tower import history_source
from widedeep.retrieval.candidate_scores import CandidateStats, candidate_score_features, candidate_stats_from
from widedeep.retrieval.data import split_columns
from widedeep.retrieval.history import TIME_COLUMN
from widedeep.retrieval.interactions import POSITIVE_LABEL_ABOVE, positive_rows
from widedeep.retrieval.liked import LikedValues, liked_from
from widedeep.train.config import fit_splits
from widedeep.train.negatives import (
    NegativeSampler,
    RankingTaskConfig,
    RetrievalNegatives,
    extra_columns,
    ranking_config,
)
from widedeep.train.pointwise_metrics import task_metrics


def _data_of(cfg: Any) -> str:
    """The prepared directory of a ``TrainConfig`` or its dict (what a worker's task sees)."""
    return str(cfg.get("data") if isinstance(cfg, dict) else cfg.data)


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
        self._liked: dict[tuple[str, str], LikedValues] = {}
        self._retrieval: dict[tuple[str, str, float], RetrievalNegatives] = {}
        self._stats: dict[tuple[str, str], CandidateStats | None] = {}

    def metric_for(self, fs: Any) -> tuple[str, str]:
        return ("auc", "max") if fs.task == "binary" else ("rmse", "min")

    def required_columns(self, fs: Any, cfg: Any) -> list[str]:
        hist = {f.name for f in fs.history_crosses} | {f.name for f in candidate_score_features(fs)}
        hist |= set(fs.liked_columns)  # the history features' input
        cols = [c for c in Collator(fs).columns() if c not in hist]  # computed in collate
        rc = ranking_config(cfg)
        if rc.draws_negatives:
            cols = list(dict.fromkeys([*cols, *extra_columns(fs), "label", *(["item_key"] if fs.item_key else [])]))
        if rc.retrieval_negatives:
            cols = list(dict.fromkeys([*cols, "user_key", *self._time(cfg)]))
        if hist:
            cols = list(dict.fromkeys([*cols, "user_key", history_source(fs)[0], *self._time(cfg)]))
        return cols

    @staticmethod
    def _time(cfg: Any) -> list[str]:
        """``["timestamp"]`` when the train split keeps one (histories are then causal), else ``[]``."""
        data = _data_of(cfg)
        return [TIME_COLUMN] if TIME_COLUMN in split_columns(f"{data.rstrip('/')}/train") else []

    def retrieval_negatives(self, fs: Any, cfg: Any) -> RetrievalNegatives:
        """The retrieval-negative sampler of this data directory (built once; threads share it)."""
        data, splits = _data_of(cfg), fit_splits(cfg)
        key = (data, splits, str(fs.content_hash), ranking_config(cfg).sampling_power)
        base = self.sampler(fs, cfg)
        with self._lock:
            s = self._retrieval.get(key)
            if s is None:
                s = self._retrieval[key] = RetrievalNegatives(base, data, ranking_config(cfg), splits)
            return s

    def liked(self, fs: Any, cfg: Any) -> LikedValues:
        """The liked values of the fitted splits of this data directory (built once; threads share it)."""
        data, splits = _data_of(cfg), fit_splits(cfg)
        key = (data, splits, str(fs.content_hash))
        with self._lock:
            lv = self._liked.get(key)
            if lv is None:
                lv = self._liked[key] = liked_from(fs, data, splits)
            return lv

    def candidate_stats(self, fs: Any, cfg: Any) -> CandidateStats | None:
        """The fitted splits' candidate-score statistics of this data directory (built once; threads share it)."""
        data, splits = _data_of(cfg), fit_splits(cfg)
        key = (data, splits, str(fs.content_hash))
        with self._lock:
            if key not in self._stats:
                self._stats[key] = candidate_stats_from(fs, data, splits)
            return self._stats[key]

    def with_history(self, table: pa.Table, fs: Any, cfg: Any) -> pa.Table:
        """The batch plus its rows' liked columns and history crosses (causal: see the module doc)."""
        if TIME_COLUMN in table.column_names:
            before = np.asarray(table.column(TIME_COLUMN).to_numpy(), dtype=np.int64)
            return self.liked(fs, cfg).add(fs, table, table.column("user_key"), before=before)
        own = np.asarray(table.column(history_source(fs)[0]).to_numpy(), dtype=np.int64)
        return self.liked(fs, cfg).add(fs, table, table.column("user_key"), leave_out=own)

    def build_model(self, fs: Any, cfg: Any) -> nn.Module:
        rc = ranking_config(cfg)  # a typo in task_config fails before training starts
        # the settings that read each label as positive or not
        binary_only = [
            n
            for n, on in (("listwise_weight", rc.listwise_weight), ("logged_negatives: false", not rc.logged_negatives))
            if on
        ]
        if binary_only and fs.task != "binary":
            raise ConfigError(
                f"task_config.{binary_only[0]} needs a binary label, the FeatureSpace's task is {fs.task!r}"
            )
        return build_model("ranking", fs, cfg.model, cfg.optim, cfg.task_config, seed=cfg.seed)

    def sampler(self, fs: Any, cfg: Any) -> NegativeSampler:
        """The negative sampler of this data directory (built once; loader threads share it)."""
        data, splits = _data_of(cfg), fit_splits(cfg)
        power = ranking_config(cfg).sampling_power
        key = (data, splits, str(fs.content_hash), power)
        with self._lock:
            s = self._samplers.get(key)
            if s is None:
                s = self._samplers[key] = NegativeSampler(fs, data, power, splits)
            return s

    def _collator(self, fs: Any) -> Collator:
        with self._lock:
            c = self._collators.get(fs.content_hash)
            if c is None:
                c = self._collators[fs.content_hash] = Collator(fs)
            return c

    def rows(self, table: Any, fs: Any, cfg: Any) -> pa.Table:
        """The rows a batch of logged rows is trained on: the logged rows (their positives only
        without ``logged_negatives``) with their history columns, then ``sampled_negatives`` per
        row, then ``retrieval_negatives`` per positive (``negative_groups`` reads this layout),
        each with its candidate scores."""
        rc = ranking_config(cfg)
        k, kr = rc.sampled_negatives, rc.retrieval_negatives
        if not isinstance(table, pa.Table):
            table = pa.table(dict(table))
        if not rc.logged_negatives:  # the positives, each against its drawn negatives only
            table = positive_rows(table)
        if fs.history_crosses:
            table = self.with_history(table, fs, cfg)
        if (k or kr) and table.num_rows:
            parts = [table]
            if k:
                parts.append(self.sampler(fs, cfg).negatives(table, k, cfg.seed))
            if kr:  # the positives' competitors: what retrieval proposes beside what the user took
                parts.append(self.retrieval_negatives(fs, cfg).negatives(positive_rows(table), kr, cfg.seed))
            table = pa.concat_tables(parts)
        stats = self.candidate_stats(fs, cfg)
        if stats is not None:  # every row with its own item: the negatives' scores are their own
            table = stats.add(fs, table, users=table.column("user_key"))
        return table

    @staticmethod
    def _rows_per_batch(fs: Any, cfg: Any) -> bool:
        """Whether a batch's rows are computed from its logged rows (negatives added, or history
        or candidate-score columns), rather than being those rows as prepared."""
        rc = ranking_config(cfg)
        return bool(rc.draws_negatives or fs.history_crosses or candidate_score_features(fs))

    def collate(self, table: Any, fs: Any, cfg: Any) -> Any:
        if self._rows_per_batch(fs, cfg):
            table = self.rows(table, fs, cfg)
        return self._collator(fs)(table)

    def collate_split(self, table: Any, fs: Any, cfg: Any) -> Any | None:
        """The whole ``table`` as one ``Batch`` when a batch of rows is exactly those rows of it
        (``_rows_per_batch`` is false: no negatives drawn, no columns computed per batch), else
        ``None``: a cached train split is then collated once and each step's batch is an index
        selection (``widedeep.data.batch.RowTaker``)."""
        if self._rows_per_batch(fs, cfg):
            return None  # per-batch rows, or columns computed per batch
        return self._collator(fs)(table)

    def loss(self, model: nn.Module, batch: Any, cfg: Any) -> torch.Tensor:
        logits = model(batch)  # through a DDP wrapper, if any, so gradients sync
        if not batch.batch_size:  # no row (logged label-0 rows only, ``logged_negatives: false``)
            return logits.sum()  # 0 with zero gradients: every worker still steps in time
        loss = getattr(model, "module", model).loss(logits, batch.labels)
        rc = ranking_config(cfg)
        if rc.listwise_weight:
            loss = loss + rc.listwise_weight * listwise_loss(logits, batch.labels, rc)
        return loss

    def eval_outputs(self, model: nn.Module, batch: Any, cfg: Any) -> dict[str, np.ndarray]:
        out = model(batch)
        return {"outputs": out.float().cpu().numpy(), "labels": batch.labels.cpu().numpy()}

    def eval_metrics(self, outputs: dict[str, np.ndarray], fs: Any, cfg: Any) -> dict[str, float]:
        return task_metrics(fs.task, outputs["labels"], outputs["outputs"])


def negative_groups(labels: torch.Tensor, rc: RankingTaskConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """(rows of the logged positives ``[P]``, rows of each one's negatives ``[P, k + kr]``) of a
    batch laid out by ``RankingTask.rows``: B logged rows, then ``k = sampled_negatives`` per
    logged row (row-major), then ``kr = retrieval_negatives`` per logged positive."""
    k, kr = rc.sampled_negatives, rc.retrieval_negatives
    n, p = labels.shape[0], int((labels > POSITIVE_LABEL_ABOVE).sum())
    b = (n - p * kr) // (1 + k)
    if b < 0 or b * (1 + k) + p * kr != n or bool((labels[b:] > POSITIVE_LABEL_ABOVE).any()):
        raise RuntimeError(f"a batch of {n} rows is not {k} + {kr} negatives per logged row and positive")
    pos = torch.nonzero(labels[:b] > POSITIVE_LABEL_ABOVE).squeeze(1)
    parts = []
    if k:
        parts.append(b + pos.unsqueeze(1) * k + torch.arange(k, device=labels.device))
    if kr:
        first = b * (1 + k) + torch.arange(len(pos), device=labels.device).unsqueeze(1) * kr
        parts.append(first + torch.arange(kr, device=labels.device))
    return pos, torch.cat(parts, dim=1)


def listwise_loss(logits: torch.Tensor, labels: torch.Tensor, rc: RankingTaskConfig) -> torch.Tensor:
    """Mean over the batch's logged positives of the softmax cross-entropy of the positive among
    itself and its own negatives (``widedeep.train.negatives`` says why); 0 without positives."""
    pos, neg = negative_groups(labels, rc)
    if len(pos) == 0:
        return logits.sum() * 0.0  # keeps the graph (DDP expects every parameter's gradient)
    group = torch.cat([logits[pos].unsqueeze(1), logits[neg]], dim=1)
    return (torch.logsumexp(group, dim=1) - group[:, 0]).mean()
