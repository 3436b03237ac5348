"""Raw column -> typed NumPy / Arrow arrays, with row-level problem detection.

Why separate from the transform: "nothing is silently dropped". Every conversion reports which
rows it could not convert (a number column holding ``"abc"``, an infinite value where the spec
says ``infinity: error``, a label outside its declared set) as a boolean mask plus one example,
so the caller either raises a ``DataError`` naming column and value (``--on-bad-rows error``)
or drops exactly those rows and counts them (``skip``). The fit and the transform share it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from widedeep.errors import DataError


@dataclass
class Problems:
    """Rows that cannot be used, with the first offending value per reason."""

    n: int
    mask: np.ndarray = field(init=False)
    examples: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mask = np.zeros(self.n, dtype=bool)

    def add(self, rows: np.ndarray, reason: str, example: Any) -> None:
        rows = np.asarray(rows, dtype=bool) & ~self.mask  # each bad row counted under its first reason
        k = int(rows.sum())
        if not k:
            return
        self.mask |= rows
        self.counts[reason] = self.counts.get(reason, 0) + k
        self.examples.append(f"{reason} (e.g. {example!r}; {k} row(s))")

    @property
    def any(self) -> bool:
        return bool(self.mask.any())

    def raise_if_any(self, where: str = "") -> None:
        if self.any:
            prefix = f"{where}: " if where else ""
            raise DataError(prefix + "; ".join(self.examples) + " (use --on-bad-rows skip to drop such rows)")


def combine(col: pa.Array | pa.ChunkedArray) -> pa.Array:
    if isinstance(col, pa.ChunkedArray):
        if col.num_chunks == 1:
            return col.chunk(0)
        if col.num_chunks == 0:
            return pa.array([], type=col.type)
        return col.combine_chunks()
    return col


def to_float(col: pa.Array, name: str, problems: Problems) -> np.ndarray:
    """float64 values; null -> NaN; unparseable strings reported (and NaN)."""
    col = combine(col)
    t = col.type
    if (
        pa.types.is_floating(t)
        or pa.types.is_integer(t)
        or pa.types.is_boolean(t)
        or pa.types.is_null(t)
        or pa.types.is_decimal(t)
    ):
        out = pc.cast(col, pa.float64())
        return out.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        trimmed = pc.utf8_trim_whitespace(col)
        empty = pc.equal(trimmed, "")
        trimmed = pc.if_else(empty, pa.scalar(None, pa.string()), trimmed)
        try:
            out = pc.cast(trimmed, pa.float64())
            return out.to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            pass
        # Slow path, only on bad data: find the rows that don't parse.
        vals = trimmed.to_pylist()
        res = np.full(len(vals), np.nan)
        bad = np.zeros(len(vals), dtype=bool)
        first = None
        for i, v in enumerate(vals):
            if v is None:
                continue
            try:
                res[i] = float(v)
            except ValueError:
                bad[i] = True
                first = v if first is None else first
        problems.add(bad, f"column {name!r}: not a number", first)
        return res
    raise DataError(f"column {name!r}: expected a numeric column, got type {t}")


def to_strings(col: pa.Array, name: str) -> pa.Array:
    """Categorical values as strings (ints in decimal); nulls stay null."""
    col = combine(col)
    t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return col
    if pa.types.is_dictionary(t):
        # kept dictionary-encoded (Parquet's own encoding): look-ups then touch each distinct value once
        d = col.dictionary
        if not (pa.types.is_string(d.type) or pa.types.is_large_string(d.type)):
            d = to_strings(d, name)
        return pa.DictionaryArray.from_arrays(col.indices, d)
    if (
        pa.types.is_integer(t)
        or pa.types.is_boolean(t)
        or pa.types.is_null(t)
        or pa.types.is_floating(t)
        or pa.types.is_binary(t)
    ):
        return pc.cast(col, pa.string())
    raise DataError(f"column {name!r}: expected a categorical (string or integer) column, got type {t}")


def to_string_lists(col: pa.Array, name: str, separator: str | None) -> tuple[pa.Array, np.ndarray]:
    """Multivalent values: (flat string values with nulls, int64 row offsets [n+1]).

    A null list is an empty list. A string column is split on ``separator``.
    """
    col = combine(col)
    t = col.type
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        if separator is None:
            raise DataError(f"column {name!r}: a multivalent feature over a string column needs 'separator'")
        col = pc.split_pattern(col, pattern=separator)
        t = col.type
    if pa.types.is_null(t):
        return pa.array([], pa.string()), np.zeros(len(col) + 1, dtype=np.int64)
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
        raise DataError(f"column {name!r}: expected a list column (or a string column with a separator), got type {t}")
    if col.null_count:
        col = pc.if_else(pc.is_null(col), pa.scalar([], type=col.type), col)
    if pa.types.is_fixed_size_list(t):
        col = pc.cast(col, pa.list_(t.value_type))
    col = combine(col)
    offsets = np.asarray(col.offsets, dtype=np.int64)
    values = col.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0]))
    offsets = offsets - offsets[0]
    return to_strings(values, name), offsets


def column_or_nulls(table: pa.Table, column: str, optional: bool, what: str) -> pa.Array:
    """The raw column, or an all-null column for an ``optional`` feature absent from the input."""
    if column in table.column_names:
        return combine(table.column(column))
    if optional:
        return pa.nulls(table.num_rows)
    raise DataError(f"missing column {column!r} (needed by {what}); input has: {', '.join(table.column_names)}")
