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

# model selection (best checkpoint, early stopping) by the full-catalog hit rate on the valid
# split: the in-batch softmax loss kept falling for an epoch or two after top-K quality stopped
# rising, and rose while it still improved (MovieLens-100k: best-loss epoch 2, best hit@50 epoch 5)
primary_metric = "hit@50"
primary_mode = "max"
VALID_TOPK_ROWS = 5000   # valid positives scored against the whole catalog per rank and validation

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
    if fs.user_key:
        cols.append(fs.user_key)      # validation excludes each user's training items
    if tcfg.history:
        cols += [history_source(fs)[0], *_time_column(cfg)]
    return list(dict.fromkeys(cols))


@dataclass
class _TrainState:
    """Per-process catalog for the item tower, logQ counts and the negative sampler."""

    catalog: Any
    counts: torch.Tensor        # float64 [n_items] training positives + 1
    rng: np.random.Generator
    histories: Any = None       # widedeep.retrieval.history.Histories of the train split (task_config.history)
    seen: Any = None            # (user keys, CSR of catalog rows): every train-split item of each user


def _state(fs: Any, cfg: Any) -> _TrainState:
    from widedeep.retrieval.data import DataPath, build_catalog, load_rows

    key = (str(cfg.data), fs.content_hash)
    with _LOCK:
        st = _STATES.get(key)
        if st is None:
            root = DataPath.of(cfg.data)
            tcfg = retrieval_config(cfg)
            catalog = build_catalog(fs, root, splits=("train", "valid"))
            train = load_rows(root, ("train",), _train_columns(fs, root, tcfg.history > 0))   # read once
            t = train.filter(pc.equal(train.column("label"), 1.0)) if tcfg.train_on == "positives" else train
            rows = catalog.rows(t.column(fs.item_key))
            counts = np.bincount(rows[rows >= 0], minlength=catalog.n_items).astype(np.float64) + 1.0
            histories = None
            if tcfg.history > 0:
                from widedeep.retrieval.history import Histories, history_source

                histories = Histories.from_rows(train, "user_key", history_source(fs)[0])
            seen = None
            if fs.user_key:
                from widedeep.retrieval.data import first_by_key, interactions

                users = first_by_key(train.select([fs.user_key]), fs.user_key)[0]
                seen = (users, interactions(train, fs.user_key, fs.item_key, users, catalog.keys, positives_only=False))
            st = _STATES[key] = _TrainState(catalog, torch.from_numpy(counts), np.random.default_rng(cfg.seed),
                                            histories, seen)
        return st


def _time_column(cfg: Any) -> list[str]:
    """``["timestamp"]`` when the prepared train split keeps it (time splits), else ``[]``."""
    from widedeep.retrieval.data import DataPath, split_columns
    from widedeep.retrieval.history import TIME_COLUMN

    data = cfg.get("data") if isinstance(cfg, dict) else cfg.data
    return [TIME_COLUMN] if TIME_COLUMN in split_columns(DataPath.of(str(data)) / "train") else []


def _train_columns(fs: Any, root: Any, history: bool) -> list[str]:
    """What the train state reads from the train split, in one pass: item key and label (logQ
    counts), user key (seen items), and the history's item ids and timestamps."""
    from widedeep.retrieval.data import split_columns
    from widedeep.retrieval.history import history_columns, history_source

    cols = [fs.item_key, "label", *([fs.user_key] if fs.user_key else [])]
    if history:
        cols += history_columns(split_columns(root / "train"), history_source(fs)[0])
    return list(dict.fromkeys(cols))


@dataclass
class RetrievalBatch:
    """Positives of one batch: user inputs ``[B]``, item inputs ``[B + M]`` (positives, then
    random negatives), the items' catalog rows and their log expected counts."""

    user: TowerInput
    item: TowerInput
    item_ids: torch.Tensor
    log_q: torch.Tensor
    user_keys: np.ndarray | None = None   # of the positives (validation's seen-item exclusion)

    @property
    def batch_size(self) -> int:
        return self.user.batch_size

    def to(self, device: torch.device | str, non_blocking: bool = False) -> RetrievalBatch:
        return RetrievalBatch(self.user.to(device, non_blocking), self.item.to(device, non_blocking),
                              self.item_ids.to(device, non_blocking=non_blocking),
                              self.log_q.to(device, non_blocking=non_blocking), self.user_keys)


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
    keys = np.asarray(pos.column(fs.user_key).to_numpy(zero_copy_only=False)) if fs.user_key in pos.column_names else None
    return RetrievalBatch(tower_input(user_feats, pos), tower_input(item_feats, item_tab), ids_t, log_q, keys)


def loss(model: nn.Module, batch: Any, cfg: Any) -> torch.Tensor:
    """In-batch sampled softmax with logQ correction (mean over the batch's positives)."""
    if isinstance(batch, pa.Table):
        raise TypeError("retrieval.loss expects a RetrievalBatch (collate first)")
    tcfg = retrieval_config(cfg)
    u, v = model(batch.user, batch.item)
    return sampled_softmax_loss(u, v, batch.item_ids, batch.log_q if tcfg.logq_correction else None,
                                tcfg.temperature, tcfg.remove_accidental_hits)


def _catalog_vectors(model: nn.Module, st: _TrainState, tcfg: Any) -> tuple[torch.Tensor, dict[str, Any]]:
    """Search vectors of the whole catalog, computed once per validation pass (cached on the model,
    keyed by a fingerprint of the item tower's dense weights, which change at every training step)."""
    from widedeep.model.two_tower import search_vectors
    from widedeep.retrieval.data import embed

    m = getattr(model, "module", model)
    with torch.no_grad():
        mark = float(sum(float(p.double().sum()) for p in m.item_tower.mlp.parameters()))
    cache = getattr(m, "_valid_topk", None)
    if cache is None or cache["mark"] != mark:
        vecs = search_vectors(tcfg, "item", embed(m, "item", st.catalog.table), st.counts.numpy() - 1.0)
        cache = {"mark": mark, "vectors": torch.from_numpy(np.ascontiguousarray(vecs)), "rows": 0}
        m._valid_topk = cache
    return cache["vectors"], cache


def _topk_hits(model: nn.Module, batch: RetrievalBatch, cfg: Any) -> tuple[np.ndarray, np.ndarray]:
    """Per positive row: hit@50 and NDCG@10 of its item when the user's vector ranks the whole
    catalog minus the user's training items (the rows after ``VALID_TOPK_ROWS`` are skipped)."""
    from widedeep.model.two_tower import search_vectors
    from widedeep.retrieval.interactions import key_rows

    tcfg = retrieval_config(cfg)
    st = _state_for(cfg)
    if st is None:
        return np.zeros(0), np.zeros(0)
    vectors, cache = _catalog_vectors(model, st, tcfg)
    take = max(0, min(batch.batch_size, VALID_TOPK_ROWS - cache["rows"]))
    cache["rows"] += take
    if take == 0:
        return np.zeros(0), np.zeros(0)
    m = getattr(model, "module", model)
    u = search_vectors(tcfg, "user", m.user_embedding(batch.user)[:take].detach().float().cpu().numpy())
    scores = torch.from_numpy(np.ascontiguousarray(u)) @ vectors.T                # [take, n_items], on the CPU
    pos = batch.item_ids[:take].cpu()
    pos_score = scores[torch.arange(take), pos].clone()
    if st.seen is not None and batch.user_keys is not None:                       # a user's training items
        users, seen = st.seen
        r = key_rows(batch.user_keys[:take], users)
        for i in np.flatnonzero(r >= 0):
            scores[i, torch.from_numpy(seen.row(int(r[i])))] = -torch.inf
    scores[torch.arange(take), pos] = pos_score
    rank = (scores > pos_score.unsqueeze(1)).sum(1).numpy()
    hit = (rank < 50).astype(np.float64)
    ndcg = np.where(rank < 10, 1.0 / np.log2(rank + 2.0), 0.0)
    return hit, ndcg


def _state_for(cfg: Any) -> _TrainState | None:
    """The process's train state for ``cfg.data`` (built by ``collate``), if any."""
    with _LOCK:
        for (data, _h), st in _STATES.items():
            if data == str(cfg.data):
                return st
    return None


def eval_outputs(model: nn.Module, batch: RetrievalBatch, cfg: Any) -> dict[str, np.ndarray]:
    """Per-batch validation loss sum, in-batch top-1 hits, and per-row full-catalog hit@50 / NDCG@10."""
    n = batch.batch_size
    if n == 0:
        return {"loss_sum": np.zeros(1), "n": np.zeros(1), "top1": np.zeros(1), "hit50": np.zeros(0), "ndcg10": np.zeros(0)}
    tcfg = retrieval_config(cfg)
    u, v = model(batch.user, batch.item)
    l = sampled_softmax_loss(u, v, batch.item_ids, batch.log_q if tcfg.logq_correction else None,
                             tcfg.temperature, tcfg.remove_accidental_hits)
    best = torch.argmax(u @ v.T, dim=1)
    top1 = (batch.item_ids[best] == batch.item_ids[:n]).sum()   # a duplicate of the positive counts as a hit
    hit, ndcg = _topk_hits(model, batch, cfg)
    return {"loss_sum": np.array([float(l) * n]), "n": np.array([float(n)]), "top1": np.array([float(top1)]),
            "hit50": hit, "ndcg10": ndcg}


def eval_metrics(outputs: dict[str, np.ndarray], fs: Any, cfg: Any) -> dict[str, float]:
    """Loss and in-batch top-1 over every valid positive; ``hit@50`` / ``ndcg@10`` over the rows
    scored against the whole catalog (``topk_rows``; per interaction, the user's training items
    excluded, the popularity prior applied as in search)."""
    n = float(outputs.get("n", np.zeros(0)).sum())
    hit = outputs.get("hit50", np.zeros(0))
    ndcg = outputs.get("ndcg10", np.zeros(0))
    return {"loss": float(outputs.get("loss_sum", np.zeros(0)).sum()) / max(n, 1.0),
            "in_batch_top1": float(outputs.get("top1", np.zeros(0)).sum()) / max(n, 1.0), "num_examples": int(n),
            "hit@50": float(hit.mean()) if hit.size else float("nan"),
            "ndcg@10": float(ndcg.mean()) if ndcg.size else float("nan"), "topk_rows": int(hit.size)}
