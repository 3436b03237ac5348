"""Warm start: initialise a new model from an earlier checkpoint (the paper retrains on new
data this way instead of from scratch).

Rows of every embedding / wide table are mapped *by vocabulary value*: a value present in both
vocabularies keeps its learned row (and its sparse optimizer state, which FTRL needs: its weight
is a function of the z/n accumulators), a new value keeps its fresh init, a removed value is
dropped. The out-of-vocabulary row maps to the out-of-vocabulary row. Tables without a
vocabulary (hashed features, crosses, bucketized numerics) are copied row for row when their
size is unchanged (a stable hash keeps meaning across runs) and skipped otherwise. Dense
parameters (MLP, bias) are copied when their shapes match.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from widedeep.features.spec import history_features, liked_column
from widedeep.model.checkpoint import load_checkpoint


def _tbe_modules(model: nn.Module) -> dict[str, Any]:
    return {name: m for name, m in model.named_modules() if hasattr(m, "layout") and hasattr(m, "table_weight")}


def _row_map(
    fs_new: Any, fs_old: Any, column: str, rows_new: int, rows_old: int
) -> tuple[np.ndarray, np.ndarray] | None:
    """(new_rows, old_rows) index pairs to copy, or None when the table cannot be mapped."""
    try:
        vn, vo = fs_new.vocabulary(column), fs_old.vocabulary(column)
    except KeyError:
        vn = vo = None
    if vn is None or vo is None:
        if rows_new != rows_old:
            return None
        r = np.arange(rows_new)
        return r, r
    old_index = {v: i for i, v in enumerate(vo)}
    new_rows, old_rows = [], []
    for i, v in enumerate(vn):
        j = old_index.get(v)
        if j is not None and i < rows_new and j < rows_old:
            new_rows.append(i)
            old_rows.append(j)
    on, oo = fs_new.oov_id(column), fs_old.oov_id(column)
    if on is not None and oo is not None and on < rows_new and oo < rows_old:
        new_rows.append(on)
        old_rows.append(oo)
    return np.asarray(new_rows, dtype=np.int64), np.asarray(old_rows, dtype=np.int64)


def _columns_by_table(fs: Any) -> dict[str, str]:
    """Table name -> the feature whose vocabulary its rows follow: its column, except a history
    feature's table (``kind: history``), whose rows are ids of its ``history`` feature."""
    ids_of = {liked_column(f.history): f.history for f in history_features(fs.features)}
    return {t.name: ids_of.get(t.column, t.column) for t in [*fs.wide_tables, *fs.deep_tables]}


@torch.no_grad()
def warm_start(model: nn.Module, fs_new: Any, ckpt_path: str) -> str:
    """Copy what maps from checkpoint ``ckpt_path`` into ``model``; returns a one-line summary."""
    old = load_checkpoint(ckpt_path)
    fs_old = old.feature_space
    new_tbes, old_tbes = _tbe_modules(model), _tbe_modules(old.model)
    cols_new, cols_old = _columns_by_table(fs_new), _columns_by_table(fs_old)
    copied_rows = tables_done = tables_skipped = 0
    for name, tn in new_tbes.items():
        to = old_tbes.get(name)
        if to is None:
            continue
        old_names = [t.name for t in to.layout.tables]
        for t_new, tc in enumerate(tn.layout.tables):
            if tc.name not in old_names or tc.name not in cols_new or tc.name not in cols_old:
                continue
            t_old = old_names.index(tc.name)
            tco = to.layout.tables[t_old]
            if tco.dim != tc.dim:
                tables_skipped += 1
                continue
            pairs = _row_map(fs_new, fs_old, cols_new[tc.name], tc.num_rows, tco.num_rows)
            if pairs is None:
                tables_skipped += 1
                continue
            rn, ro = (torch.from_numpy(a).to(tn.weight.device) for a in pairs)
            # weights and per-element state ([rows, dim] views), per-row state ([rows])
            tn.table_weight(t_new)[rn] = to.table_weight(t_old)[ro.cpu()].to(tn.weight.device, tn.weight.dtype)
            st_new, st_old = tn.optimizer_state(), to.optimizer_state()
            for key, buf in st_new.items():
                if (
                    key not in st_old
                    or type(tn.optimizer) is not type(to.optimizer)
                    or tn.optimizer.kind != to.optimizer.kind
                ):
                    continue
                src = st_old[key]
                if key == "adagrad_sum":
                    lo_n, lo_o = tn.layout.row_offsets[t_new], to.layout.row_offsets[t_old]
                    buf[lo_n + rn] = src[lo_o + ro.cpu()].to(buf.device)
                else:
                    lo_n, lo_o = tn.layout.elem_offsets[t_new], to.layout.elem_offsets[t_old]
                    vn = buf[lo_n : lo_n + tc.num_rows * tc.dim].view(tc.num_rows, tc.dim)
                    vo = src[lo_o : lo_o + tco.num_rows * tco.dim].view(tco.num_rows, tco.dim)
                    vn[rn] = vo[ro.cpu()].to(buf.device)
            copied_rows += len(rn)
            tables_done += 1
    dense_done = 0
    old_params = dict(old.model.named_parameters())
    for pname, p in model.named_parameters():
        q = old_params.get(pname)
        if p.requires_grad and q is not None and q.shape == p.shape:
            p.copy_(q.to(p.device, p.dtype))
            dense_done += 1
    return (
        f"{tables_done} tables mapped ({copied_rows} rows), {tables_skipped} skipped, {dense_done} dense tensors copied"
    )
