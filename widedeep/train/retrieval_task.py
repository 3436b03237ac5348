"""``task: retrieval`` for ``widedeep train``: the two-tower model's batches, loss and validation.

The training loop (``widedeep.train.loop``) owns Ray Train, sharding, DDP, checkpoints, resume and
multi-worker exchange of the sparse tables; ``RetrievalTask`` supplies the model-specific parts
of its task protocol (``widedeep.train.tasks``).

Training uses positive interactions only (``label > 0.5``, ``widedeep.retrieval.interactions``):
the rows of a batch are filtered in ``collate``. The item tower always reads an item's features
from the **item catalog** (one row per ``item_key``, built once per worker from the train and
valid splits of the prepared directory), the same rows ``widedeep index`` embeds, so training and
serving see identical item inputs. The train split also gives the logQ table (each item's
sampling probability estimated from its count of training rows, add-one smoothed), the pool of
uniform random negatives, the users' histories and their seen items (``RetrievalTrainData``).

Settings live in the job's ``task_config`` (``widedeep.model.two_tower.TwoTowerConfig``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from widedeep.errors import ConfigError, DataError
from widedeep.model.build import build_model
from widedeep.model.two_tower import (
    HISTORY_COLUMN,
    ITEM_SIDES,
    USER_SIDES,
    TowerInput,
    TwoTowerConfig,
    history_source,
    log_expected_counts,
    sampled_softmax_loss,
    search_vectors,
    tower_features,
    two_tower_config,
)
from widedeep.paths import Location
from widedeep.retrieval.data import (
    Catalog,
    build_catalog,
    embed,
    first_by_key,
    interactions,
    load_rows,
    split_columns,
    tower_input,
)
from widedeep.retrieval.history import TIME_COLUMN, Histories, history_columns, with_history
from widedeep.retrieval.interactions import CSR, key_rows, positive_rows
from widedeep.retrieval.popularity import item_counts, item_popularity
from widedeep.train.config import fit_splits

# model selection (best checkpoint, early stopping) by the full-catalog hit rate on the valid
# split: the in-batch softmax loss kept falling for an epoch or two after top-K quality stopped
# rising, and rose while it still improved (MovieLens-100k: best-loss epoch 2, best hit@50 epoch 5)
PRIMARY_METRIC = "hit@50"
PRIMARY_MODE = "max"
VALID_TOPK_ROWS = 5000  # valid positives scored against the whole catalog per rank and validation


def retrieval_config(cfg: Any) -> TwoTowerConfig:
    """The validated ``task_config`` of a TrainConfig (or of its resolved dict)."""
    return two_tower_config(cfg.get("task_config") if isinstance(cfg, dict) else getattr(cfg, "task_config", None))


@dataclass(frozen=True)
class RetrievalTrainData:
    """What one process derives from the train split of one prepared directory, read once.

    Args:
        catalog: the item catalog (train and valid splits) the item tower reads.
        counts: float64 ``[n_items]`` training rows of each catalog item + 1 (the logQ table;
            rows = the rows training batches hold, ``task_config.train_on``).
        popularity: float64 ``[n_items]`` the items' popularity (``widedeep.retrieval.popularity``),
            for the search-time popularity prior.
        histories: the users' histories (``task_config.history``), else ``None``.
        seen: ``(user keys, CSR of catalog rows)``: every train-split item of each user, else ``None``.
    """

    catalog: Catalog
    counts: torch.Tensor
    popularity: np.ndarray
    histories: Histories | None = None
    seen: tuple[np.ndarray, CSR] | None = None


@dataclass
class _CatalogVectors:
    """Search vectors of the whole catalog for one state of the item tower, and how many valid
    rows have been ranked against them (at most ``VALID_TOPK_ROWS`` per state)."""

    key: tuple[Any, ...]
    vectors: torch.Tensor
    rows: int = 0


def _item_tower_fingerprint(model: nn.Module) -> tuple[float, ...]:
    """One float64 sum per tensor of the item tower (MLP, embedding tables and their optimizer
    state): it changes whenever a training step changes anything the item vectors depend on."""
    with torch.no_grad():
        return tuple(float(t.double().sum()) for t in model.item_tower.state_dict().values())


def _data_key(fs: Any, cfg: Any) -> tuple[Any, ...]:
    """Everything ``RetrievalTrainData`` is computed from."""
    tcfg = retrieval_config(cfg)
    return (str(cfg.data), fit_splits(cfg), fs.content_hash, tcfg.train_on, tcfg.history > 0)


class RetrievalTask:
    """The two-tower retriever as a training task (see ``widedeep.train.tasks.Task``).

    Per-process data (catalog, logQ counts, histories, seen items) and the catalog vectors of a
    validation pass are cached on the object, keyed by everything they are computed from; the
    loop keeps one task object per worker, and Ray Data's loader threads share it (a lock guards
    the caches and the negative sampler's generator).
    """

    name = "retrieval"

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._data: dict[tuple[Any, ...], RetrievalTrainData] = {}
        self._rngs: dict[tuple[Any, ...], np.random.Generator] = {}
        self._vectors: _CatalogVectors | None = None

    def metric_for(self, fs: Any) -> tuple[str, str]:
        return PRIMARY_METRIC, PRIMARY_MODE

    def build_model(self, fs: Any, cfg: Any) -> nn.Module:
        """A fresh two-tower model (tables use the job's ``optim.embedding`` sparse optimizer)."""
        return build_model("retrieval", fs, cfg.model, cfg.optim, cfg.task_config, seed=cfg.seed)

    def required_columns(self, fs: Any, cfg: Any) -> list[str]:
        """The user tower's columns, the item key and the label (items come from the catalog)."""
        if not fs.item_key:
            raise ConfigError("task: retrieval needs a FeatureSpace with an item_key (declare item_key in the spec)")
        tcfg = retrieval_config(cfg)
        if tcfg.history and not fs.user_key:
            raise ConfigError("task_config.history: needs a FeatureSpace with a user_key (histories are per user)")
        cols = [c for c in tower_features(fs, USER_SIDES, "user", tcfg.history).columns if c != HISTORY_COLUMN]
        cols += [fs.item_key, "label"]
        if fs.user_key:
            cols.append(fs.user_key)  # validation excludes each user's training items
        if tcfg.history:
            has_time = TIME_COLUMN in split_columns(Location.of(str(cfg.data)) / "train")
            cols += [history_source(fs)[0], *([TIME_COLUMN] if has_time else [])]
        return list(dict.fromkeys(cols))

    def training_data(self, fs: Any, cfg: Any) -> RetrievalTrainData:
        """The process's ``RetrievalTrainData`` for ``cfg.data`` (built on first use)."""
        key = _data_key(fs, cfg)
        with self._lock:
            st = self._data.get(key)
            if st is None:
                st = self._data[key] = _read_train_data(fs, cfg)
                self._rngs[key] = np.random.default_rng(cfg.seed)
            return st

    def collate(self, table: Any, fs: Any, cfg: Any) -> RetrievalBatch:
        """Prepared rows -> a ``RetrievalBatch`` of the positive rows (thread-safe)."""
        if not isinstance(table, pa.Table):
            table = pa.table(
                {
                    k: (
                        v
                        if isinstance(v, (pa.Array, pa.ChunkedArray))
                        else pa.array(list(v) if getattr(v, "dtype", None) == np.dtype(object) else v)
                    )
                    for k, v in dict(table).items()
                }
            )
        tcfg = retrieval_config(cfg)
        key = _data_key(fs, cfg)
        st = self.training_data(fs, cfg)
        pos = positive_rows(table) if tcfg.train_on == "positives" else table
        rows = st.catalog.rows(pos.column(fs.item_key))
        if (rows < 0).any():
            bad = pos.column(fs.item_key)[int(np.flatnonzero(rows < 0)[0])]
            raise DataError(
                f"{cfg.data}: item_key {bad} of a batch is not in the item catalog of the train/valid splits"
            )
        with self._lock:
            rng = self._rngs[key]
            neg = (
                rng.integers(0, st.catalog.n_items, size=tcfg.random_negatives)
                if tcfg.random_negatives
                else np.zeros(0, np.int64)
            )
        ids = np.concatenate([rows, neg]).astype(np.int64)
        item_tab = st.catalog.table.take(pa.array(ids))
        user_feats = tower_features(fs, USER_SIDES, "user", tcfg.history)
        if tcfg.history:
            own = np.asarray(pos.column(history_source(fs)[0]).to_numpy(), dtype=np.int64)
            before = (
                np.asarray(pos.column(TIME_COLUMN).to_numpy(), dtype=np.int64)
                if TIME_COLUMN in pos.column_names
                else None
            )
            pos = with_history(pos, st.histories, pos.column("user_key"), tcfg.history, leave_out=own, before=before)
        item_feats = tower_features(fs, ITEM_SIDES, "item")
        ids_t = torch.from_numpy(ids)
        log_q = log_expected_counts(st.counts, max(len(rows), 1), tcfg.random_negatives, st.catalog.n_items)[ids_t]
        keys = (
            np.asarray(pos.column(fs.user_key).to_numpy(zero_copy_only=False))
            if fs.user_key in pos.column_names
            else None
        )
        return RetrievalBatch(tower_input(user_feats, pos), tower_input(item_feats, item_tab), ids_t, log_q, keys, key)

    def loss(self, model: nn.Module, batch: Any, cfg: Any) -> torch.Tensor:
        """In-batch sampled softmax with logQ correction (mean over the batch's positives)."""
        if isinstance(batch, pa.Table):
            raise TypeError("retrieval loss expects a RetrievalBatch (collate first)")
        tcfg = retrieval_config(cfg)
        u, v = model(batch.user, batch.item)
        return sampled_softmax_loss(
            u,
            v,
            batch.item_ids,
            batch.log_q if tcfg.logq_correction else None,
            tcfg.temperature,
            tcfg.remove_accidental_hits,
        )

    def eval_outputs(self, model: nn.Module, batch: RetrievalBatch, cfg: Any) -> dict[str, np.ndarray]:
        """Per-batch validation loss sum, in-batch top-1 hits, and per-row full-catalog hit@50 / NDCG@10."""
        n = batch.batch_size
        if n == 0:
            return {
                "loss_sum": np.zeros(1),
                "n": np.zeros(1),
                "top1": np.zeros(1),
                "hit50": np.zeros(0),
                "ndcg10": np.zeros(0),
            }
        tcfg = retrieval_config(cfg)
        u, v = model(batch.user, batch.item)
        loss = sampled_softmax_loss(
            u,
            v,
            batch.item_ids,
            batch.log_q if tcfg.logq_correction else None,
            tcfg.temperature,
            tcfg.remove_accidental_hits,
        )
        best = torch.argmax(u @ v.T, dim=1)
        top1 = (batch.item_ids[best] == batch.item_ids[:n]).sum()  # a duplicate of the positive counts as a hit
        hit, ndcg = self._topk_hits(model, batch, cfg)
        return {
            "loss_sum": np.array([float(loss) * n]),
            "n": np.array([float(n)]),
            "top1": np.array([float(top1)]),
            "hit50": hit,
            "ndcg10": ndcg,
        }

    def eval_metrics(self, outputs: dict[str, np.ndarray], fs: Any, cfg: Any) -> dict[str, float]:
        """Loss and in-batch top-1 over every valid positive; ``hit@50`` / ``ndcg@10`` over the rows
        scored against the whole catalog (``topk_rows``; per interaction, the user's training items
        excluded, the popularity prior applied as in search)."""
        n = float(outputs.get("n", np.zeros(0)).sum())
        hit = outputs.get("hit50", np.zeros(0))
        ndcg = outputs.get("ndcg10", np.zeros(0))
        return {
            "loss": float(outputs.get("loss_sum", np.zeros(0)).sum()) / max(n, 1.0),
            "in_batch_top1": float(outputs.get("top1", np.zeros(0)).sum()) / max(n, 1.0),
            "num_examples": int(n),
            "hit@50": float(hit.mean()) if hit.size else float("nan"),
            "ndcg@10": float(ndcg.mean()) if ndcg.size else float("nan"),
            "topk_rows": int(hit.size),
        }

    def _catalog_vectors(
        self, model: nn.Module, st: RetrievalTrainData, key: tuple[Any, ...], tcfg: TwoTowerConfig
    ) -> _CatalogVectors:
        """Search vectors of the whole catalog, computed once per state of the item tower: the key
        is the data, the model object, the settings that shape the vectors and a fingerprint of
        every item-tower tensor (which changes at every training step)."""
        m = getattr(model, "module", model)
        full_key = (key, id(m), tcfg.temperature, tcfg.popularity_prior, _item_tower_fingerprint(m))
        with self._lock:
            cached = self._vectors
        if cached is not None and cached.key == full_key:
            return cached
        vecs = search_vectors(tcfg, "item", embed(m, "item", st.catalog.table), st.popularity)
        fresh = _CatalogVectors(full_key, torch.from_numpy(np.ascontiguousarray(vecs)))
        with self._lock:
            self._vectors = fresh
        return fresh

    def _topk_hits(self, model: nn.Module, batch: RetrievalBatch, cfg: Any) -> tuple[np.ndarray, np.ndarray]:
        """Per positive row: hit@50 and NDCG@10 of its item when the user's vector ranks the whole
        catalog minus the user's training items (the rows after ``VALID_TOPK_ROWS`` are skipped)."""
        tcfg = retrieval_config(cfg)
        with self._lock:
            st = self._data.get(batch.source) if batch.source is not None else None
        if st is None:  # a batch this task object did not collate: no catalog to rank against
            return np.zeros(0), np.zeros(0)
        cache = self._catalog_vectors(model, st, batch.source, tcfg)
        take = max(0, min(batch.batch_size, VALID_TOPK_ROWS - cache.rows))
        cache.rows += take
        if take == 0:
            return np.zeros(0), np.zeros(0)
        m = getattr(model, "module", model)
        u = search_vectors(tcfg, "user", m.user_embedding(batch.user)[:take].detach().float().cpu().numpy())
        scores = torch.from_numpy(np.ascontiguousarray(u)) @ cache.vectors.T  # [take, n_items], on the CPU
        pos = batch.item_ids[:take].cpu()
        pos_score = scores[torch.arange(take), pos].clone()
        if st.seen is not None and batch.user_keys is not None:  # a user's training items
            users, seen = st.seen
            r = key_rows(batch.user_keys[:take], users)
            for i in np.flatnonzero(r >= 0):
                scores[i, torch.from_numpy(seen.row(int(r[i])))] = -torch.inf
        scores[torch.arange(take), pos] = pos_score
        rank = (scores > pos_score.unsqueeze(1)).sum(1).numpy()
        hit = (rank < 50).astype(np.float64)
        ndcg = np.where(rank < 10, 1.0 / np.log2(rank + 2.0), 0.0)
        return hit, ndcg


def _read_train_data(fs: Any, cfg: Any) -> RetrievalTrainData:
    """Catalog (train + valid splits), logQ counts, popularity, histories and seen items, from one
    read of the splits the model is fitted on (the train split; train and valid for a refit)."""
    root = Location.of(cfg.data)
    tcfg = retrieval_config(cfg)
    catalog = build_catalog(fs, root, splits=("train", "valid"))
    train = load_rows(root, fit_splits(cfg), _train_columns(fs, root, tcfg.history > 0))
    popularity = item_popularity(train, fs.item_key, catalog.keys, fs.user_key)
    # logQ: how often each item occurs among the rows batches are drawn from (rows, not distinct users)
    batch_rows = item_counts(positive_rows(train) if tcfg.train_on == "positives" else train, fs.item_key, catalog.keys)
    histories = Histories.from_rows(train, "user_key", history_source(fs)[0]) if tcfg.history > 0 else None
    seen = None
    if fs.user_key:
        users = first_by_key(train.select([fs.user_key]), fs.user_key)[0]
        seen = (users, interactions(train, fs.user_key, fs.item_key, users, catalog.keys, positives_only=False))
    return RetrievalTrainData(catalog, torch.from_numpy(batch_rows + 1.0), popularity, histories, seen)


def _train_columns(fs: Any, root: Location, history: bool) -> list[str]:
    """What the train data reads from the train split, in one pass: item key and label (logQ
    counts, popularity), user key (seen items), and the history's item ids and timestamps."""
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
    user_keys: np.ndarray | None = None  # of the positives (validation's seen-item exclusion)
    source: tuple[Any, ...] | None = (
        None  # key of the RetrievalTrainData it was built from (validation ranks against its catalog)
    )

    @property
    def batch_size(self) -> int:
        return self.user.batch_size

    def to(self, device: torch.device | str, non_blocking: bool = False) -> RetrievalBatch:
        return RetrievalBatch(
            self.user.to(device, non_blocking),
            self.item.to(device, non_blocking),
            self.item_ids.to(device, non_blocking=non_blocking),
            self.log_q.to(device, non_blocking=non_blocking),
            self.user_keys,
            self.source,
        )
