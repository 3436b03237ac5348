"""Users' interaction histories as a user-tower input (the ``task_config.history`` option).

Why: a user-id embedding only knows what the training steps taught it about that one user,
and it knows nothing about anything the user did after training. Pooling the embeddings of the
items the user engaged with (YouTube's candidate generator, Covington et al. 2016) lets the
tower place a user by *what they watched*: the item-to-item signal that makes item-kNN strong,
learned jointly with the rest of the tower, and it covers users and interactions newer than
the model.

A history is the user's positive rows (``label > 0.5``), as ids of the item-key feature (the
prepared column of the categorical feature whose source is the spec's ``item_key``), in time
order when the prepared data keeps a ``timestamp`` column (time splits do) and in file order
otherwise. At most the ``cap`` latest items are used, the same rule in training, offline
evaluation and serving. During training a row's history is what the user did *before* that row
(its timestamp), which is exactly the situation of evaluation and serving: predict the next
items from the past. Without timestamps, a training row's history is all the user's other
items (its own item is always left out, so the tower cannot learn to copy its input).

Everything is vectorized over rows (no per-row Python): histories are CSR arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from widedeep.model.two_tower import HISTORY_COLUMN
from widedeep.retrieval.interactions import key_rows, positive_rows

TIME_COLUMN = "timestamp"


@dataclass(frozen=True)
class Histories:
    """Item-feature ids of each user's positives, oldest first: ``ids[indptr[r]:indptr[r + 1]]``.

    Args:
        keys: user keys (row ``r`` of the CSR).
        indptr: int64 ``[users + 1]``.
        ids: int64 item-feature ids.
    """

    keys: np.ndarray
    indptr: np.ndarray
    ids: np.ndarray
    times: np.ndarray | None = None

    @staticmethod
    def from_rows(table: pa.Table, user_col: str, id_col: str) -> Histories:
        """Histories of the positive rows of ``table`` (``label`` column, optional ``timestamp``)."""
        if "label" in table.column_names:
            table = positive_rows(table)
        users = table.column(user_col).combine_chunks()
        codes = pc.dictionary_encode(users)
        u = np.asarray(codes.indices.to_numpy(zero_copy_only=False), dtype=np.int64)
        keys = np.asarray(codes.dictionary.to_numpy(zero_copy_only=False))
        ids = np.asarray(table.column(id_col).to_numpy(), dtype=np.int64)
        t = (
            np.asarray(table.column(TIME_COLUMN).to_numpy(), dtype=np.int64)
            if TIME_COLUMN in table.column_names
            else np.zeros(len(u), dtype=np.int64)
        )
        order = np.lexsort((np.arange(len(u)), t, u))  # by user, then time, then file order
        indptr = np.zeros(len(keys) + 1, dtype=np.int64)
        np.cumsum(np.bincount(u, minlength=len(keys)), out=indptr[1:])
        return Histories(keys, indptr, ids[order], t[order] if TIME_COLUMN in table.column_names else None)

    @cached_property
    def _time_keys(self) -> tuple[np.ndarray, np.int64, np.ndarray]:
        """(distinct times, span, sorted key = user row * span + rank of time) for causal cuts."""
        assert self.times is not None
        uniq = np.unique(self.times)
        span = np.int64(len(uniq) + 1)
        user_of = np.repeat(np.arange(len(self.keys), dtype=np.int64), np.diff(self.indptr))
        return uniq, span, user_of * span + np.searchsorted(uniq, self.times)

    def lists(
        self, user_keys: Any, cap: int, leave_out: np.ndarray | None = None, before: np.ndarray | None = None
    ) -> pa.ListArray:
        """One list per requested user: their latest ``cap`` ids (unknown users: empty).

        ``leave_out``: an id per row removed from that row's history (training rows leave out
        their own item). ``before``: a time per row; only items strictly earlier are used
        (ignored when the histories have no times).
        """
        r = key_rows(user_keys, self.keys) if len(self.keys) else np.full(len(user_keys), -1, dtype=np.int64)
        known = r >= 0
        starts = np.where(known, self.indptr[np.maximum(r, 0)], 0)
        ends = np.where(known, self.indptr[np.maximum(r, 0) + 1], 0)
        if before is not None and self.times is not None:
            # one global searchsorted: key = (user row, rank of time) is sorted like the ids are
            uniq, span, key = self._time_keys
            cut = np.searchsorted(
                key, np.maximum(r, 0) * span + np.searchsorted(uniq, np.asarray(before, dtype=np.int64)), side="left"
            )
            ends = np.where(known, np.clip(cut, starts, ends), 0)
        starts = np.maximum(starts, ends - cap - (0 if leave_out is None else 1))  # bound the work per row
        lens = ends - starts
        row_of = np.repeat(np.arange(len(r), dtype=np.int64), lens)
        first = np.zeros(len(r) + 1, dtype=np.int64)
        np.cumsum(lens, out=first[1:])
        vals = self.ids[starts[row_of] + np.arange(first[-1], dtype=np.int64) - first[row_of]]
        if leave_out is not None:
            keep = vals != np.asarray(leave_out, dtype=np.int64)[row_of]
            vals, row_of = vals[keep], row_of[keep]
        counts = np.bincount(row_of, minlength=len(r))
        row_end = np.cumsum(counts)
        latest = (row_end[row_of] - 1 - np.arange(len(vals))) < cap  # position from the row's end
        vals, row_of = vals[latest], row_of[latest]
        offsets = np.zeros(len(r) + 1, dtype=np.int32)
        np.cumsum(np.bincount(row_of, minlength=len(r)), out=offsets[1:])
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(vals, type=pa.int64()))


def with_history(
    table: pa.Table,
    histories: Histories,
    user_keys: Any,
    cap: int,
    leave_out: np.ndarray | None = None,
    before: np.ndarray | None = None,
) -> pa.Table:
    """``table`` plus the ``__history__`` list column of its rows' users (see ``Histories.lists``)."""
    col = histories.lists(user_keys, cap, leave_out, before)
    if HISTORY_COLUMN in table.column_names:
        table = table.drop_columns([HISTORY_COLUMN])
    return table.append_column(HISTORY_COLUMN, col)


def history_columns(table_columns: list[str], id_col: str) -> list[str]:
    """The prepared columns a history needs from a split (``timestamp`` when present)."""
    cols = ["user_key", id_col, "label"]
    return cols + ([TIME_COLUMN] if TIME_COLUMN in table_columns else [])
