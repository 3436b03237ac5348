"""Prepared columns -> ``Batch`` (the kernel's jagged, table-major layout), vectorized.

Why here and not in the model: the loader threads of Ray Data (``iter_torch_batches``) run
this while the model trains, so the training step gets ready-made int64 values/offsets.
No per-row Python: single-valued id columns become one value per bag (offsets are a
``cumsum`` of ones); multivalent columns are Arrow ``list<int64>`` arrays whose list lengths
*are* the bag lengths, so a flatten + ``value_lengths`` gives values and offsets directly.

Nothing is coerced silently: a missing column or a null id raises ``DataError`` naming the
column (prepared data never has nulls; a null means the data is not what the FeatureSpace says).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch

from widedeep.data.batch import Batch, JaggedIds
from widedeep.errors import DataError


@dataclass(frozen=True)
class _Table:
    column: str
    multivalent: bool


def _ids_and_lengths(col: Any, name: str, multivalent: bool) -> tuple[np.ndarray, np.ndarray | None]:
    """(values int64, per-row lengths or None for exactly-one-per-row)."""
    if isinstance(col, (pa.ChunkedArray, pa.Array)):
        arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        if arr.null_count:
            raise DataError(f"column {name!r}: {arr.null_count} null id(s); prepared id columns must not be null")
        if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
            flat = pc.list_flatten(arr)
            if flat.null_count:
                raise DataError(f"column {name!r}: null id inside a list")
            lengths = pc.list_value_length(arr).to_numpy(zero_copy_only=False).astype(np.int64)
            return flat.to_numpy(zero_copy_only=False).astype(np.int64, copy=False), lengths
        if multivalent:
            raise DataError(f"column {name!r}: expected list<int64> (multivalent feature), got {arr.type}")
        if not pa.types.is_integer(arr.type):
            raise DataError(f"column {name!r}: expected int64 ids, got {arr.type}")
        return arr.to_numpy(zero_copy_only=False).astype(np.int64, copy=False), None
    a = np.asarray(col)
    if a.dtype == object:  # numpy batch of a list column: an array of arrays
        lengths = np.fromiter((len(x) for x in a), dtype=np.int64, count=len(a))
        vals = np.concatenate([np.asarray(x, dtype=np.int64) for x in a]) if len(a) else np.zeros(0, np.int64)
        return vals, lengths
    if a.ndim != 1 or not np.issubdtype(a.dtype, np.integer):
        raise DataError(f"column {name!r}: expected a 1-d integer id column, got dtype {a.dtype} shape {a.shape}")
    return a.astype(np.int64, copy=False), None


def _jagged(data: Any, tables: Sequence[_Table], batch_size: int) -> JaggedIds:
    if not tables:
        return JaggedIds(torch.zeros(0, dtype=torch.int64), torch.zeros(1, dtype=torch.int64))
    values: list[np.ndarray] = []
    lengths: list[np.ndarray | None] = []
    for t in tables:
        v, ln = _ids_and_lengths(_column(data, t.column), t.column, t.multivalent)
        values.append(v)
        lengths.append(ln)
    vals = np.concatenate(values)
    if all(ln is None for ln in lengths):  # one id per bag: offsets are 0..T*B, no lengths to build
        offs = np.arange(len(tables) * batch_size + 1, dtype=np.int64)
    else:
        offs = np.zeros(len(tables) * batch_size + 1, dtype=np.int64)
        ones = np.ones(batch_size, dtype=np.int64)
        np.cumsum(np.concatenate([ones if ln is None else ln for ln in lengths]), out=offs[1:])
    return JaggedIds(torch.from_numpy(vals), torch.from_numpy(offs))


def _column(data: Any, name: str) -> Any:
    try:
        return data[name] if isinstance(data, Mapping) else data.column(name)
    except (KeyError, IndexError):
        have = list(data.keys()) if isinstance(data, Mapping) else data.column_names
        raise DataError(f"column {name!r} missing from the batch (columns: {have})") from None


def _num_rows(data: Any) -> int:
    if isinstance(data, pa.Table):
        return data.num_rows
    for v in data.values():
        return len(v)
    return 0


class Collator:
    """Precomputed column plan of a FeatureSpace; ``collator(table) -> Batch``.

    Thread-safe (no mutable state), so Ray Data's collate threads can share one.
    """

    def __init__(self, fs: Any, *, require_label: bool = True) -> None:
        self.wide = [_Table(t.column, t.multivalent) for t in fs.wide_tables]
        self.deep = [_Table(t.column, t.multivalent) for t in fs.deep_tables]
        self.dense = list(fs.dense_columns)
        self.require_label = require_label

    def columns(self) -> list[str]:
        """Prepared columns a batch needs (what the loader should select)."""
        cols = [t.column for t in self.wide] + [t.column for t in self.deep] + self.dense
        if self.require_label:
            cols.append("label")
        return list(dict.fromkeys(cols))

    def __call__(self, data: pa.Table | Mapping[str, np.ndarray]) -> Batch:
        b = _num_rows(data)
        if self.dense:
            cols = []
            for name in self.dense:
                c = _column(data, name)
                a = (c.to_numpy() if isinstance(c, pa.ChunkedArray) else np.asarray(c)).astype(np.float32, copy=False)
                cols.append(a)
            dense = torch.from_numpy(np.stack(cols, axis=1))
        else:
            dense = torch.zeros(b, 0)
        if self.require_label:
            c = _column(data, "label")
            lab = (c.to_numpy() if isinstance(c, pa.ChunkedArray) else np.asarray(c)).astype(np.float32, copy=False)
            labels = torch.from_numpy(np.array(lab, dtype=np.float32))  # copy: Arrow buffers are read-only
        else:
            labels = torch.zeros(b)
        return Batch(dense, _jagged(data, self.wide, b), _jagged(data, self.deep, b), labels)


def collate_prepared(data: pa.Table | Mapping[str, np.ndarray], fs: Any, *, require_label: bool = True) -> Batch:
    """One-shot collate of prepared columns into a ``Batch`` (see ``Collator`` to reuse the plan)."""
    return Collator(fs, require_label=require_label)(data)


def arrow_collate_fn(fs: Any, *, require_label: bool = True) -> Any:
    """A Ray Data ``ArrowBatchCollateFn`` for ``iter_torch_batches(collate_fn=...)``."""
    from ray.data.collate_fn import ArrowBatchCollateFn

    class _PreparedCollate(ArrowBatchCollateFn):
        def __init__(self) -> None:
            self.collator = Collator(fs, require_label=require_label)

        def __call__(self, batch: pa.Table) -> Batch:
            return self.collator(batch)

    return _PreparedCollate()
