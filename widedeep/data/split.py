"""Train / valid / test assignment of every row.

Modes (``--split``):

- ``random:0.8,0.1,0.1``: row ``r`` of file ``f`` goes by ``u = combine_ids(seed, f, r) / 2**64``
  (the stable hash of ``hashing.py``). It depends only on the seed, the (sorted) input files
  and row positions, never on how Ray batches rows, so a rerun assigns the same rows.
- ``time:COLUMN:0.8,0.1,0.1``: global time cut-offs at the 0.8 and 0.9 quantiles of COLUMN
  (from an exact-for-integers sketch of all rows); rows at or after a cut-off go to valid / test.
- ``user-time:USER:TIME:0.8,0.1,0.1``: per user, the latest ``round(n * 0.1)`` interactions go to
  test and the ``round(n * 0.1)`` before them to valid (leave-latest-out). The (user, time)
  columns are collected on the driver (16 bytes a row) to find each user's cut-offs; ties at a
  cut-off time go to the later split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from widedeep.errors import ConfigError, DataError
from widedeep.features import hashing
from widedeep.features.columns import combine

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class SplitSpec:
    mode: str
    fractions: tuple[float, float, float]
    time_column: str | None = None
    user_column: str | None = None

    @property
    def columns(self) -> list[str]:
        return [c for c in (self.user_column, self.time_column) if c]


def parse_split(text: str) -> SplitSpec:
    """``random:F,F,F`` | ``time:COL:F,F,F`` | ``user-time:USER:TIME:F,F,F``."""
    parts = text.split(":")
    mode = parts[0]
    want = {"random": 2, "time": 3, "user-time": 4}
    if mode not in want:
        raise ConfigError(f"--split {text!r}: mode must be random, time or user-time")
    if len(parts) != want[mode]:
        forms = {
            "random": "random:0.8,0.1,0.1",
            "time": "time:COLUMN:0.8,0.1,0.1",
            "user-time": "user-time:USER:TIME:0.8,0.1,0.1",
        }
        raise ConfigError(f"--split {text!r}: expected {forms[mode]}")
    try:
        fr = tuple(float(x) for x in parts[-1].split(","))
    except ValueError:
        raise ConfigError(f"--split {text!r}: fractions must be numbers") from None
    if len(fr) != 3 or any(x < 0 for x in fr) or abs(sum(fr) - 1.0) > 1e-6 or fr[0] <= 0:
        raise ConfigError(f"--split {text!r}: need three non-negative fractions summing to 1 with train > 0")
    if mode == "random":
        return SplitSpec(mode, fr)  # type: ignore[arg-type]
    if mode == "time":
        return SplitSpec(mode, fr, time_column=parts[1])  # type: ignore[arg-type]
    return SplitSpec(mode, fr, time_column=parts[2], user_column=parts[1])  # type: ignore[arg-type]


def time_values(table: pa.Table, column: str, where: str) -> np.ndarray:
    """float64 time values; timestamps as their integer unit; nulls are an error."""
    if column not in table.column_names:
        raise DataError(f"{where}: missing split time column {column!r}")
    col = combine(table.column(column))
    if col.null_count:
        raise DataError(f"{where}: split time column {column!r} has {col.null_count} missing value(s)")
    t = col.type
    if pa.types.is_timestamp(t) or pa.types.is_date(t):
        col = pc.cast(col, pa.int64())
    elif pa.types.is_string(t) or pa.types.is_large_string(t):
        try:
            col = pc.cast(col, pa.float64())
        except pa.ArrowInvalid as e:
            raise DataError(f"{where}: split time column {column!r} is not numeric: {e}") from None
    elif not (pa.types.is_integer(t) or pa.types.is_floating(t)):
        raise DataError(f"{where}: split time column {column!r} has unsupported type {t}")
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.float64)


@dataclass(frozen=True)
class UserCutoffs:
    users: pa.Array  # user key values (as strings)
    t_valid: np.ndarray
    t_test: np.ndarray


def user_cutoffs(users: pa.Array, times: np.ndarray, fractions: tuple[float, float, float]) -> UserCutoffs:
    """Per user: times at/after which rows go to valid and to test (leave-latest-out)."""
    users = pc.cast(combine(users), pa.string())
    codes_arr = (
        pc.dictionary_encode(users).combine_chunks()
        if isinstance(users, pa.ChunkedArray)
        else pc.dictionary_encode(users)
    )
    codes = np.asarray(codes_arr.indices, dtype=np.int64)
    dictionary = codes_arr.dictionary
    order = np.lexsort((times, codes))
    t = times[order]
    counts = np.bincount(codes, minlength=len(dictionary))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    k_test = np.floor(counts * fractions[2] + 0.5).astype(np.int64)
    k_valid = np.floor(counts * fractions[1] + 0.5).astype(np.int64)
    # every user keeps at least one interaction for training (valid gives way first)
    excess = np.maximum(k_test + k_valid - (counts - 1), 0)
    dv = np.minimum(excess, k_valid)
    k_valid, k_test = k_valid - dv, k_test - (excess - dv)
    inf = np.inf
    end = starts + counts
    t_test = np.where(k_test > 0, t[np.clip(end - k_test, 0, len(t) - 1)], inf)
    t_valid = np.where(k_valid > 0, t[np.clip(end - k_test - k_valid, 0, len(t) - 1)], t_test)
    return UserCutoffs(dictionary, t_valid, t_test)


@dataclass(frozen=True)
class Splitter:
    """Assigns 0 (train), 1 (valid), 2 (test) to the rows of a chunk."""

    spec: SplitSpec
    seed: int = 0
    time_cuts: tuple[float, float] | None = None
    users: UserCutoffs | None = None

    def assign(self, table: pa.Table, file_index: int, row_start: int, where: str) -> np.ndarray:
        n = table.num_rows
        fr = self.spec.fractions
        if self.spec.mode == "random":
            rows = np.arange(row_start, row_start + n, dtype=np.int64)
            h = hashing.combine_ids([np.full(n, self.seed, np.int64), np.full(n, file_index, np.int64), rows])
            u = (h >> np.uint64(11)).astype(np.float64) / float(1 << 53)
            return np.where(u < fr[0], 0, np.where(u < fr[0] + fr[1], 1, 2)).astype(np.int8)
        t = time_values(table, self.spec.time_column or "", where)
        if self.spec.mode == "time":
            assert self.time_cuts is not None
            c1, c2 = self.time_cuts
            return np.where(t >= c2, 2, np.where(t >= c1, 1, 0)).astype(np.int8)
        assert self.users is not None
        ucol = self.spec.user_column or ""
        if ucol not in table.column_names:
            raise DataError(f"{where}: missing split user column {ucol!r}")
        idx = pc.index_in(pc.cast(combine(table.column(ucol)), pa.string()), value_set=self.users.users)
        idx = np.asarray(pc.fill_null(idx, -1), dtype=np.int64)
        if (idx < 0).any():
            raise DataError(
                f"{where}: user {table.column(ucol)[int(np.argmin(idx))].as_py()!r} "
                "was not seen when computing split cut-offs"
            )
        tv, tt = self.users.t_valid[idx], self.users.t_test[idx]
        return np.where(t >= tt, 2, np.where(t >= tv, 1, 0)).astype(np.int8)
