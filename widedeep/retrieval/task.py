"""``task: retrieval`` for ``widedeep train``: the two-tower model, its batches and its loss.

The training loop (``widedeep.train``) owns Ray Train, sharding, DDP, checkpoints, resume and
multi-worker exchange of the sparse tables; this module supplies the model-specific parts of
its task protocol (``widedeep/train/tasks.py``).

Training uses positive interactions only (``label == 1``): the rows of a batch are filtered in
``collate``. The item tower always reads an item's features from the **item catalog** (one row
per ``item_key``, built once per worker from the train and valid splits of the prepared
directory), the same rows ``widedeep index`` embeds, so training and serving see identical item
inputs. The catalog also gives the logQ table: each item's sampling probability estimated
from its count of training positives (add-one smoothed), and the pool of uniform random
negatives.

Settings live in the job's ``task_config`` (``widedeep.model.two_tower.TwoTowerConfig``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
from torch import nn

from widedeep.config import from_dict
from widedeep.model.two_tower import (
    ITEM_SIDES,
    USER_SIDES,
    TowerInput,
    TwoTower,
    TwoTowerConfig,
    log_expected_counts,
    sampled_softmax_loss,
    tower_features,
)

primary_metric = "loss"
primary_mode = "min"

_LOCK = threading.Lock()
_STATES: dict[tuple[str, str], _TrainState] = {}


def retrieval_config(cfg: Any) -> TwoTowerConfig:
    """The validated ``task_config`` of a TrainConfig (or of its resolved dict)."""
    raw = cfg.get("task_config", {}) if isinstance(cfg, dict) else getattr(cfg, "task_config", {})
    return from_dict(TwoTowerConfig, raw or {}, "task_config")


def build_model(fs: Any, cfg: Any) -> nn.Module:
    """A fresh two-tower model (tables use the job's ``optim.embedding`` sparse optimizer)."""
    optim = cfg["optim"] if isinstance(cfg, dict) else cfg.optim
    seed = cfg.get("seed", 0) if isinstance(cfg, dict) else cfg.seed
    if isinstance(optim, dict):
        from widedeep.config import from_dict as _fd
        from widedeep.model.wide_deep import OptimConfig

        optim = _fd(OptimConfig, optim)
    return TwoTower(fs, retrieval_config(cfg), optim.embedding, seed=seed)


def required_columns(fs: Any, cfg: Any) -> list[str]:
    """The user tower's columns, the item key and the label (items come from the catalog)."""
    if not fs.item_key:
        from widedeep.errors import ConfigError

        raise ConfigError("task: retrieval needs a FeatureSpace with an item_key (declare item_key in the spec)")
    tcfg = retrieval_config(cfg)
    if tcfg.history and not fs.user_key:
        from widedeep.errors import ConfigError

        raise ConfigError("task_config.history: needs a FeatureSpace with a user_key (histories are per user)")
    from widedeep.retrieval.history import HISTORY_COLUMN, history_source

    cols = [c for c in tower_features(fs, USER_SIDES, "user", tcfg.history).columns if c != HISTORY_COLUMN]
    cols += [fs.item_key, "label"]
    if tcfg.history:
        cols += ["user_key", history_source(fs)[0], *_time_column(cfg)]
    return list(dict.fromkeys(cols))


@dataclass
class _TrainState:
    """Per-process catalog for the item tower, logQ counts and the negative sampler."""

    catalog: Any
    counts: torch.Tensor        # float64 [n_items] training positives + 1
    rng: np.random.Generator
    histories: Any = None       # widedeep.retrieval.history.Histories of the train split (task_config.history)


def _state(fs: Any, cfg: Any) -> _TrainState:
    from widedeep.retrieval.data import build_catalog, load_rows

    key = (str(cfg.data), fs.content_hash)
    with _LOCK:
        st = _STATES.get(key)
        if st is None:
            root = Path(cfg.data)
            catalog = build_catalog(fs, root, splits=("train", "valid"))
            t = load_rows(root, ("train",), [fs.item_key, "label"])
            if retrieval_config(cfg).train_on == "positives":
                t = t.filter(pc.equal(t.column("label"), 1.0))
            pos = t.column(fs.item_key)
            rows = catalog.rows(pos)
            counts = np.bincount(rows[rows >= 0], minlength=catalog.n_items).astype(np.float64) + 1.0
            histories = None
            if retrieval_config(cfg).history > 0:
                histories = _train_histories(fs, root)
            st = _STATES[key] = _TrainState(catalog, torch.from_numpy(counts), np.random.default_rng(cfg.seed), histories)
        return st


def _time_column(cfg: Any) -> list[str]:
    """``["timestamp"]`` when the prepared train split keeps it (time splits), else ``[]``."""
    import pyarrow.parquet as pq

    from widedeep.retrieval.history import TIME_COLUMN

    data = cfg.get("data") if isinstance(cfg, dict) else cfg.data
    first = next(iter(sorted((Path(str(data)) / "train").glob("*.parquet"))), None)
    return [TIME_COLUMN] if first is not None and TIME_COLUMN in pq.read_schema(first).names else []


def _train_histories(fs: Any, root: Path) -> Any:
    """Every user's positive items of the train split (the user tower's history input)."""
    import pyarrow.parquet as pq

    from widedeep.retrieval.data import load_rows
    from widedeep.retrieval.history import Histories, history_columns, history_source

    id_col = history_source(fs)[0]
    first = next(iter(sorted((root / "train").glob("*.parquet"))), None)
    names = pq.read_schema(first).names if first is not None else []
    t = load_rows(root, ("train",), history_columns(names, id_col))
    return Histories.from_rows(t, "user_key", id_col)


@dataclass
class RetrievalBatch:
    """Positives of one batch: user inputs ``[B]``, item inputs ``[B + M]`` (positives, then
    random negatives), the items' catalog rows and their log expected counts."""

    user: TowerInput
    item: TowerInput
    item_ids: torch.Tensor
    log_q: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.user.batch_size

    def to(self, device: torch.device | str, non_blocking: bool = False) -> RetrievalBatch:
        return RetrievalBatch(self.user.to(device, non_blocking), self.item.to(device, non_blocking),
                              self.item_ids.to(device, non_blocking=non_blocking),
                              self.log_q.to(device, non_blocking=non_blocking))


def collate(table: pa.Table, fs: Any, cfg: Any) -> RetrievalBatch:
    """Prepared rows -> a ``RetrievalBatch`` of the positive rows (thread-safe)."""
    from widedeep.errors import DataError
    from widedeep.retrieval.data import tower_input

    if not isinstance(table, pa.Table):
        table = pa.table({k: (v if isinstance(v, (pa.Array, pa.ChunkedArray)) else pa.array(list(v) if getattr(v, "dtype", None) == object else v))
                          for k, v in dict(table).items()})
    tcfg = retrieval_config(cfg)
    st = _state(fs, cfg)
    pos = table.filter(pc.equal(table.column("label"), 1.0)) if tcfg.train_on == "positives" else table
    rows = st.catalog.rows(pos.column(fs.item_key))
    if (rows < 0).any():
        bad = pos.column(fs.item_key)[int(np.flatnonzero(rows < 0)[0])]
        raise DataError(f"{cfg.data}: item_key {bad} of a batch is not in the item catalog of the train/valid splits")
    with _LOCK:
        neg = st.rng.integers(0, st.catalog.n_items, size=tcfg.random_negatives) if tcfg.random_negatives else np.zeros(0, np.int64)
    ids = np.concatenate([rows, neg]).astype(np.int64)
    item_tab = st.catalog.table.take(pa.array(ids))
    user_feats = tower_features(fs, USER_SIDES, "user", tcfg.history)
    if tcfg.history:
        from widedeep.retrieval.history import TIME_COLUMN, history_source, with_history

        own = np.asarray(pos.column(history_source(fs)[0]).to_numpy(), dtype=np.int64)
        before = np.asarray(pos.column(TIME_COLUMN).to_numpy(), dtype=np.int64) if TIME_COLUMN in pos.column_names else None
        pos = with_history(pos, st.histories, pos.column("user_key"), tcfg.history, leave_out=own, before=before)
    item_feats = tower_features(fs, ITEM_SIDES, "item")
    ids_t = torch.from_numpy(ids)
    log_q = log_expected_counts(st.counts, max(len(rows), 1), tcfg.random_negatives, st.catalog.n_items)[ids_t]
    return RetrievalBatch(tower_input(user_feats, pos), tower_input(item_feats, item_tab), ids_t, log_q)


def loss(model: nn.Module, batch: Any, cfg: Any) -> torch.Tensor:
    """In-batch sampled softmax with logQ correction (mean over the batch's positives)."""
    if isinstance(batch, pa.Table):
        raise TypeError("retrieval.loss expects a RetrievalBatch (collate first)")
    tcfg = retrieval_config(cfg)
    u, v = model(batch.user, batch.item)
    return sampled_softmax_loss(u, v, batch.item_ids, batch.log_q if tcfg.logq_correction else None,
                                tcfg.temperature, tcfg.remove_accidental_hits)


def eval_outputs(model: nn.Module, batch: RetrievalBatch, cfg: Any) -> dict[str, np.ndarray]:
    """Per-batch validation loss sum and the in-batch top-1 hits (positives only)."""
    n = batch.batch_size
    if n == 0:
        return {"loss_sum": np.zeros(1), "n": np.zeros(1), "top1": np.zeros(1)}
    tcfg = retrieval_config(cfg)
    u, v = model(batch.user, batch.item)
    l = sampled_softmax_loss(u, v, batch.item_ids, batch.log_q if tcfg.logq_correction else None,
                             tcfg.temperature, tcfg.remove_accidental_hits)
    best = torch.argmax(u @ v.T, dim=1)
    top1 = (batch.item_ids[best] == batch.item_ids[:n]).sum()   # a duplicate of the positive counts as a hit
    return {"loss_sum": np.array([float(l) * n]), "n": np.array([float(n)]), "top1": np.array([float(top1)])}


def eval_metrics(outputs: dict[str, np.ndarray], fs: Any, cfg: Any) -> dict[str, float]:
    n = float(outputs["n"].sum())
    return {"loss": float(outputs["loss_sum"].sum()) / max(n, 1.0),
            "in_batch_top1": float(outputs["top1"].sum()) / max(n, 1.0), "num_examples": int(n)}
