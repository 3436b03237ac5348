"""User x item interaction sets as CSR arrays, keyed by the raw user and item keys.

Why CSR of plain numpy arrays: evaluation, the seen-item filter and the item-kNN baseline all
need "the items of user u" for hundreds of thousands of users at once. Python dicts of sets are
too slow to build and to query vectorized; two int64 arrays (``indptr``, ``indices``) are what
numpy and torch sparse consume directly.

Keys are mapped to dense rows with pyarrow's hash kernels (``index_in``), which handle string and
integer keys alike, vectorized.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

#: a row is a positive interaction when its prepared label is above this (binary labels are 0 / 1)
POSITIVE_LABEL_ABOVE = 0.5


def positive_rows(table: pa.Table) -> pa.Table:
    """The rows of ``table`` whose ``label`` is a positive (``label > 0.5``): the one definition
    of a positive interaction that histories, popularity, training and evaluation share."""
    return table.filter(pc.greater(table.column("label"), POSITIVE_LABEL_ABOVE))


def key_rows(keys: np.ndarray | pa.Array, vocabulary: np.ndarray | pa.Array) -> np.ndarray:
    """Row of every key in ``vocabulary`` (int64; -1 where the key is not in it)."""
    keys_a = keys if isinstance(keys, (pa.Array, pa.ChunkedArray)) else pa.array(keys)
    vocab_a = vocabulary if isinstance(vocabulary, (pa.Array, pa.ChunkedArray)) else pa.array(vocabulary)
    if isinstance(vocab_a, pa.ChunkedArray):
        vocab_a = vocab_a.combine_chunks()
    if keys_a.type != vocab_a.type:
        keys_a = keys_a.cast(vocab_a.type)
    idx = pc.index_in(keys_a, value_set=vocab_a)
    return np.asarray(idx.fill_null(-1).to_numpy(zero_copy_only=False), dtype=np.int64)


def unique_keys(keys: np.ndarray | pa.Array) -> np.ndarray:
    """Distinct keys in first-seen order (a numpy array of the keys' type)."""
    a = keys if isinstance(keys, (pa.Array, pa.ChunkedArray)) else pa.array(keys)
    return np.asarray(pc.unique(a).to_numpy(zero_copy_only=False))


@dataclass(frozen=True)
class CSR:
    """Row-compressed sets: the columns of row ``r`` are ``indices[indptr[r]:indptr[r+1]]``.

    Args:
        indptr: int64 ``[n_rows + 1]``.
        indices: int64 ``[nnz]`` column ids, sorted and unique within each row.
        n_cols: number of columns (items).
    """

    indptr: np.ndarray
    indices: np.ndarray
    n_cols: int

    @property
    def n_rows(self) -> int:
        return int(self.indptr.shape[0] - 1)

    @property
    def nnz(self) -> int:
        return int(self.indices.shape[0])

    def row(self, r: int) -> np.ndarray:
        return self.indices[self.indptr[r] : self.indptr[r + 1]]

    def lengths(self) -> np.ndarray:
        return np.diff(self.indptr)

    def row_ids(self) -> np.ndarray:
        """The row of every stored entry (``[nnz]``)."""
        return np.repeat(np.arange(self.n_rows, dtype=np.int64), self.lengths())

    def take_rows(self, rows: np.ndarray) -> CSR:
        """A CSR of the given rows, in that order (vectorized gather)."""
        rows = np.asarray(rows, dtype=np.int64)
        lens = self.lengths()[rows]
        indptr = np.zeros(rows.shape[0] + 1, dtype=np.int64)
        np.cumsum(lens, out=indptr[1:])
        starts = np.repeat(self.indptr[rows] - indptr[:-1], lens)
        src = starts + np.arange(indptr[-1], dtype=np.int64)
        return CSR(indptr, self.indices[src], self.n_cols)

    @staticmethod
    def from_pairs(rows: np.ndarray, cols: np.ndarray, n_rows: int, n_cols: int) -> CSR:
        """Build from (row, col) pairs; duplicates collapse, negative rows/cols are dropped by the caller."""
        rows = np.asarray(rows, dtype=np.int64)
        cols = np.asarray(cols, dtype=np.int64)
        if rows.size and (rows.min() < 0 or rows.max() >= n_rows or cols.min() < 0 or cols.max() >= n_cols):
            raise ValueError("CSR.from_pairs: row or column out of range")
        code = np.unique(rows * np.int64(n_cols) + cols)
        r = code // n_cols
        c = code % n_cols
        indptr = np.zeros(n_rows + 1, dtype=np.int64)
        np.cumsum(np.bincount(r, minlength=n_rows), out=indptr[1:])
        return CSR(indptr, c.astype(np.int64), int(n_cols))

    @staticmethod
    def empty(n_rows: int, n_cols: int) -> CSR:
        return CSR(np.zeros(n_rows + 1, dtype=np.int64), np.zeros(0, dtype=np.int64), int(n_cols))
