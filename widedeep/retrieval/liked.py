"""The history side of the history crosses (``CrossedFeature.history``): the one transform.

Why: the paper's wide part memorizes "user_installed_app=netflix AND impression_app=pandora",
the co-occurrence of what the user already has and the candidate. Here the user's set is their
latest positive items (``widedeep.retrieval.history.Histories``, the same causal histories the
two-tower retriever pools): for a row at time ``t`` only the positives strictly before ``t``, so
a training row sees what evaluation and serving see (the past, never the item itself).

``LikedValues.add`` appends, per feature named by a history cross, the column
``liked_column(feature)``: the values of that item-side feature over the user's latest
``history_cap`` positives, most recent first, each value once (an item's genres, or its id),
then every history cross (``FeatureSpace.add_crosses``). Training (``widedeep.train.ranking_task``),
offline evaluation (``widedeep.evaluation.topk``) and the bundle export use it; a served request
takes its user's liked columns from the bundle's user table and crosses them with each candidate
(``widedeep.serve.pipeline``), one vectorized ``add_crosses`` per request.

Everything is vectorized over rows (CSR arithmetic, no per-row Python).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from widedeep.errors import DataError
from widedeep.features.columns import combine
from widedeep.features.spec import liked_column
from widedeep.model.two_tower import history_source
from widedeep.paths import Location
from widedeep.retrieval.data import build_catalog, load_rows, split_columns
from widedeep.retrieval.history import Histories, history_columns


def liked_features(fs: Any) -> dict[str, int]:
    """``{item-side feature: history_cap}`` of the FeatureSpace's history crosses."""
    out: dict[str, int] = {}
    for f in fs.history_crosses:
        if out.get(f.history, f.history_cap) != f.history_cap:
            raise DataError(
                f"cross {f.name!r}: history_cap {f.history_cap} differs from another cross over {f.history!r} "
                f"({out[f.history]}); crosses over one history share its length"
            )
        out[f.history] = f.history_cap
    return out


def _jagged(col: Any) -> tuple[np.ndarray, np.ndarray]:
    """(int64 values, int64 offsets[n + 1]) of an int64 or list<int64> column."""
    arr = combine(col)
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        offs = np.asarray(arr.offsets, dtype=np.int64)
        vals = np.asarray(arr.values.to_numpy(zero_copy_only=False), dtype=np.int64)[offs[0] : offs[-1]]
        return vals, offs - offs[0]
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.int64), np.arange(len(arr) + 1, dtype=np.int64)


@dataclass(frozen=True)
class LikedValues:
    """Users' histories and, per history feature, the feature's ids of every item-key id.

    Args:
        histories: the users' positives (item-key feature ids, oldest first, with times).
        caps: ``liked_features(fs)``.
        values: feature -> ``(values, offsets)`` indexed by the item-key feature's id (an id not
            in the catalog has no values).
    """

    histories: Histories
    caps: dict[str, int]
    values: dict[str, tuple[np.ndarray, np.ndarray]]

    @staticmethod
    def build(fs: Any, rows: pa.Table, catalog: pa.Table) -> LikedValues:
        """From prepared rows (``user_key``, the item-key feature's column, ``label``, optional
        ``timestamp``: the split(s) whose positives are the history) and the item catalog."""
        id_col, n_ids = history_source(fs)
        caps = liked_features(fs)
        hist = Histories.from_rows(rows, "user_key", id_col)
        ids = np.asarray(combine(catalog.column(id_col)).to_numpy(zero_copy_only=False), dtype=np.int64)
        # one catalog row per id; the out-of-vocabulary id (items unknown to training share it)
        # stands for no item in particular, so it has no values
        oov = fs.oov_id(id_col)
        first = np.unique(ids, return_index=True)[1]
        first = first[ids[first] != oov] if oov is not None else first
        values: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for feat in caps:
            if feat == id_col:
                lens = np.zeros(n_ids, dtype=np.int64)
                lens[ids[first]] = 1
                offs = np.zeros(n_ids + 1, dtype=np.int64)
                np.cumsum(lens, out=offs[1:])
                values[feat] = (np.sort(ids[first]), offs)
                continue
            v, o = _jagged(catalog.column(feat).take(pa.array(first)))
            ids_f = ids[first]
            lens = np.zeros(n_ids, dtype=np.int64)
            lens[ids_f] = np.diff(o)
            offs = np.zeros(n_ids + 1, dtype=np.int64)
            np.cumsum(lens, out=offs[1:])
            out = np.zeros(int(offs[-1]), dtype=np.int64)
            row = np.repeat(np.arange(len(ids_f)), np.diff(o))
            out[offs[ids_f[row]] + np.arange(len(v)) - o[row]] = v
            values[feat] = (out, offs)
        return LikedValues(hist, caps, values)

    def columns(
        self, user_keys: Any, before: np.ndarray | None = None, leave_out: np.ndarray | None = None
    ) -> dict[str, pa.ListArray]:
        """``{liked_column(feature): list<int64>}`` per requested user (``before``: a time per row,
        only positives strictly earlier count; ``leave_out``: an item-key id per row left out, for
        histories without times; unknown users: empty lists)."""
        keys = np.asarray(combine(user_keys).to_numpy(zero_copy_only=False)) if _is_arrow(user_keys) else user_keys
        out: dict[str, pa.ListArray] = {}
        for feat, cap in self.caps.items():
            lst = self.histories.lists(keys, cap, leave_out=leave_out, before=before)
            hv, ho = _jagged(lst)
            n = len(ho) - 1
            row = np.repeat(np.arange(n), np.diff(ho))
            rev = ho[row + 1] - 1 - (np.arange(len(hv)) - ho[row])  # most recent first
            items = hv[rev]
            fv, fo = self.values[feat]
            cnt = np.diff(fo)[items]
            vrow = np.repeat(row, cnt)
            first = np.zeros(len(items) + 1, dtype=np.int64)
            np.cumsum(cnt, out=first[1:])
            src = np.repeat(fo[items], cnt) + np.arange(int(first[-1])) - np.repeat(first[:-1], cnt)
            vals = fv[src]
            # each value once per row, at its most recent position
            span = np.int64(vals.max(initial=0) + 1)
            _, at = np.unique(vrow * span + vals, return_index=True)
            at.sort()
            vals, vrow = vals[at], vrow[at]
            offs = np.zeros(n + 1, dtype=np.int32)
            np.cumsum(np.bincount(vrow, minlength=n), out=offs[1:])
            out[liked_column(feat)] = pa.ListArray.from_arrays(pa.array(offs), pa.array(vals, type=pa.int64()))
        return out

    def add(
        self,
        fs: Any,
        table: pa.Table,
        user_keys: Any,
        before: np.ndarray | None = None,
        leave_out: np.ndarray | None = None,
    ) -> pa.Table:
        """``table`` plus the liked columns of its rows' users and every history cross."""
        return with_liked(fs, table, self.columns(user_keys, before, leave_out))


def liked_from(fs: Any, root: str | Location, splits: tuple[str, ...] = ("train",)) -> LikedValues:
    """``LikedValues`` of the positives of ``splits`` of a prepared directory (the train split:
    what training and offline evaluation know), over the catalog of every split."""
    root = Location.of(root)
    cols = history_columns(split_columns(root / splits[0]), history_source(fs)[0])
    return LikedValues.build(fs, load_rows(root, splits, cols), build_catalog(fs, root).table)


def with_columns(table: pa.Table, cols: dict[str, Any]) -> pa.Table:
    """``table`` with ``cols`` appended (replacing same-named columns)."""
    for name, col in cols.items():
        if name in table.column_names:
            table = table.drop_columns([name])
        table = table.append_column(name, col)
    return table


def with_liked(fs: Any, table: pa.Table, liked: dict[str, Any]) -> pa.Table:
    """``table`` plus the given liked columns, then the history crosses computed from them."""
    table = with_columns(table, liked)
    crosses = [f.name for f in fs.history_crosses]
    return fs.add_crosses(table, only=crosses) if crosses else table


def _is_arrow(x: Any) -> bool:
    return isinstance(x, (pa.Array, pa.ChunkedArray))
