"""Reading what retrieval needs from a prepared data directory, vectorized with Arrow.

- the **item catalog**: one row per ``item_key`` with the item-side prepared columns (a
  deterministic function of the item's raw features, ``FeatureSpace.transform``), in a fixed row order that
  the index, the candidate policy and evaluation share;
- the **user table**: one row per ``user_key`` with its user- and context-side columns;
- **interactions**: user x item sets as CSR (training history, test positives).

Also the Arrow -> tensor step of the towers (``tower_input``): jagged, table-major ids as the
kernel wants them, without per-row Python.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from widedeep.data.batch import JaggedIds
from widedeep.errors import DataError
from widedeep.features.spec import is_computed
from widedeep.model.two_tower import TowerInput
from widedeep.paths import Location
from widedeep.retrieval.interactions import CSR, key_rows, positive_rows

SPLITS = ("train", "valid", "test")


def parquet_files(location: str | Path | Location) -> list[Location]:
    """The ``*.parquet`` files of a directory (sorted), or the file itself; ``[]`` when there are none."""
    loc = Location.of(location)
    if not loc.is_dir():
        return [loc] if loc.exists() else []
    return loc.files(".parquet")


def split_columns(split: str | Path | Location) -> list[str]:
    """Column names of a split's first Parquet shard (``[]`` when it has none)."""
    files = parquet_files(split)
    return pq.read_schema(files[0].path, filesystem=files[0].fs).names if files else []


def side_columns(fs: Any, sides: tuple[str, ...]) -> list[str]:
    """Prepared columns of the given sides: every feature of those sides (cross components too;
    never a computed one, ``is_computed``),
    or, for a FeatureSpace-like object without ``features``, the columns of its tables."""
    cols: dict[str, None] = {}
    feats = getattr(fs, "features", None)
    if feats is not None:
        for f in feats:
            if fs.feature_side(f.name) in sides and not is_computed(f):
                cols[f.name] = None
        return list(cols)
    for t in list(fs.wide_tables) + list(fs.deep_tables):
        if t.side in sides:
            cols[t.column] = None
    for c in fs.dense_columns:
        if fs.feature_side(c) in sides:
            cols[c] = None
    return list(cols)


def data_root(path: str | Path | Location) -> Location:
    """The prepared directory for ``DIR`` or ``DIR/<split>`` (the one holding feature_space.json)."""
    p = Location.of(path)
    if (p / "feature_space.json").exists():
        return p
    if p.name in SPLITS and (p.parent / "feature_space.json").exists():
        return p.parent
    raise DataError(f"{p}: not a prepared data directory or split (no feature_space.json here or above)")


def read_split(path: str | Path | Location, columns: list[str]) -> pa.Table:
    """Columns of every Parquet shard under ``path`` (a split directory or one file; path or URI)."""
    p = Location.of(path)
    files = parquet_files(p)
    if not files:
        raise DataError(f"{p}: no Parquet shards")
    tables = []
    for f in files:
        names = pq.read_schema(f.path, filesystem=f.fs).names
        missing = [c for c in columns if c not in names]
        if missing:
            raise DataError(f"{f}: missing prepared column(s) {missing} (has {names})")
        tables.append(pq.read_table(f.path, columns=columns, filesystem=f.fs))
    return pa.concat_tables(tables, promote_options="permissive") if len(tables) > 1 else tables[0]


def first_by_key(table: pa.Table, key: str) -> tuple[np.ndarray, pa.Table]:
    """``(distinct keys in first-seen order, their first rows)``."""
    codes = pc.dictionary_encode(table.column(key)).combine_chunks()
    idx = np.asarray(codes.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
    _, first = np.unique(idx, return_index=True)
    first = np.sort(first)
    rows = table.take(pa.array(first))
    keys = np.asarray(rows.column(key).to_numpy(zero_copy_only=False))
    return keys, rows


@dataclass
class Catalog:
    """Items in a fixed row order: ``keys[r]`` and its prepared item-side columns ``table[r]``."""

    keys: np.ndarray
    table: pa.Table

    @property
    def n_items(self) -> int:
        return int(self.keys.shape[0])

    def rows(self, keys: Any) -> np.ndarray:
        return key_rows(keys, self.keys)


def read_splits(root: str | Path | Location, splits: tuple[str, ...] | list[str], columns: list[str]) -> pa.Table:
    """``columns`` of every row of ``splits`` of a prepared directory, each of which must exist
    (what a model was fitted on: fewer splits would give other statistics than training's)."""
    root = Location.of(root)
    return pa.concat_tables([read_split(root / s, columns) for s in splits], promote_options="permissive")


def load_rows(root: str | Path | Location, splits: tuple[str, ...], columns: list[str]) -> pa.Table:
    """``columns`` of every row of the given splits of a prepared directory (splits that do not exist are skipped)."""
    root = Location.of(root)
    parts = [read_split(root / s, columns) for s in splits if (root / s).exists()]
    if not parts:
        raise DataError(f"{root}: none of the splits {list(splits)} exist")
    return pa.concat_tables(parts, promote_options="permissive")


def build_catalog(fs: Any, root: str | Path | Location, splits: tuple[str, ...] = SPLITS) -> Catalog:
    """The item catalog of every item in ``splits`` of a prepared directory."""
    if not fs.item_key:
        raise DataError(f"{root}: the FeatureSpace declares no item_key; retrieval needs one")
    t = load_rows(root, splits, [fs.item_key, *side_columns(fs, ("item",))])
    keys, rows = first_by_key(t, fs.item_key)
    return Catalog(keys, rows.drop_columns([fs.item_key]))


def interactions(
    table: pa.Table, user_col: str, item_col: str, users: np.ndarray, items: np.ndarray, positives_only: bool = True
) -> CSR:
    """Users x items CSR (rows aligned with ``users``) of ``table``'s rows (positives only if asked).

    Rows whose user or item is not in ``users`` / ``items`` are left out (the caller chooses them).
    """
    if positives_only:
        table = positive_rows(table)
    u = key_rows(table.column(user_col), users)
    i = key_rows(table.column(item_col), items)
    ok = (u >= 0) & (i >= 0)
    return CSR.from_pairs(u[ok], i[ok], len(users), len(items))


def _ids_lengths(col: pa.ChunkedArray | pa.Array, name: str) -> tuple[np.ndarray, np.ndarray | None]:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if arr.null_count:
        raise DataError(f"column {name!r}: {arr.null_count} null id(s) in prepared data")
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False).astype(np.int64)
        return pc.list_flatten(arr).to_numpy(zero_copy_only=False).astype(np.int64), lengths
    return arr.to_numpy(zero_copy_only=False).astype(np.int64), None


def tower_input(feats: Any, table: pa.Table) -> Any:
    """Arrow rows -> ``TowerInput`` (jagged table-major ids + float32 numerics) of one tower."""
    b = table.num_rows
    values, lengths = [], []
    for column, _n, _p, _multi in feats.tables:
        if column not in table.column_names:
            raise DataError(f"column {column!r} missing (have {table.column_names})")
        v, ln = _ids_lengths(table.column(column), column)
        values.append(v)
        lengths.append(np.ones(b, dtype=np.int64) if ln is None else ln)
    if values:
        vals = np.concatenate(values)
        offs = np.zeros(len(values) * b + 1, dtype=np.int64)
        np.cumsum(np.concatenate(lengths), out=offs[1:])
    else:
        vals, offs = np.zeros(0, np.int64), np.zeros(1, np.int64)
    if feats.dense:
        dense = np.stack(
            [np.asarray(table.column(c).to_numpy(zero_copy_only=False), dtype=np.float32) for c in feats.dense], axis=1
        )
    else:
        dense = np.zeros((b, 0), dtype=np.float32)
    return TowerInput(JaggedIds(torch.from_numpy(vals), torch.from_numpy(offs)), torch.from_numpy(dense))


def embed(model: Any, tower: str, table: pa.Table, batch_rows: int = 65536) -> np.ndarray:
    """Vectors ``[rows, D]`` of ``table`` through the user or item tower, in eval mode, chunked."""
    m = getattr(model, "module", model)
    feats = m.user_features if tower == "user" else m.item_features
    fn = m.user_embedding if tower == "user" else m.item_embedding
    out = []
    was = m.training
    m.eval()
    device = next(m.parameters()).device  # a model being trained may live on a GPU
    with torch.no_grad():
        for lo in range(0, max(table.num_rows, 1), batch_rows):
            part = table.slice(lo, batch_rows)
            if part.num_rows:
                out.append(fn(tower_input(feats, part).to(device)).float().cpu().numpy())
    m.train(was)
    return np.concatenate(out) if out else np.zeros((0, m.cfg.output_dim), np.float32)
