"""The batch contract between the data loader and the model.

Shape letters used everywhere: ``B`` batch size, ``T`` tables of one side, ``N`` ids in the
batch (nnz).

Jagged ids are *table-major*: all bags of table 0 first, then table 1, ...::

    table 0 (B=3)          table 1
    bag:  0     1    2     0    1     2
    ids: [4,7] [ ]  [1]   [9]  [2,2] [5]
    values  = [4, 7, 1, 9, 2, 2, 5]
    offsets = [0, 2, 2, 3, 4, 6, 7]          # length T*B + 1, int64, monotone

Ids are int64 at every hop (never floats: ids above 2**24 must survive) and are local to
their table (0 <= id < table rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class JaggedIds:
    """Ids of every (table, bag) of one side of the model, in the layout above.

    Args:
        values: int64 ``[N]`` ids, local to their table.
        offsets: int64 ``[T*B + 1]`` bag boundaries into ``values``.
        weights: optional float32 ``[N]`` per-id weights (``None`` = all ones).
    """

    values: torch.Tensor
    offsets: torch.Tensor
    weights: torch.Tensor | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> JaggedIds:
        return JaggedIds(
            self.values.to(device, non_blocking=non_blocking),
            self.offsets.to(device, non_blocking=non_blocking),
            None if self.weights is None else self.weights.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> JaggedIds:
        return JaggedIds(
            self.values.pin_memory(),
            self.offsets.pin_memory(),
            None if self.weights is None else self.weights.pin_memory(),
        )


@dataclass
class Batch:
    """One training / scoring batch.

    Args:
        dense: float32 ``[B, n_numeric]`` normalised numerics for the deep side.
        wide: ids of every wide table (dimension-1 tables: raw categoricals and crosses).
        deep: ids of every deep (embedding) table.
        labels: float32 ``[B]``; zeros when scoring.
    """

    dense: torch.Tensor
    wide: JaggedIds
    deep: JaggedIds
    labels: torch.Tensor

    @property
    def batch_size(self) -> int:
        return int(self.labels.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return Batch(
            self.dense.to(device, non_blocking=non_blocking),
            self.wide.to(device, non_blocking),
            self.deep.to(device, non_blocking),
            self.labels.to(device, non_blocking=non_blocking),
        )

    def pin_memory(self) -> Batch:
        return Batch(self.dense.pin_memory(), self.wide.pin_memory(), self.deep.pin_memory(), self.labels.pin_memory())


class _SideRows:
    """Row selection on one side's ``JaggedIds`` of ``n`` rows (see ``RowTaker``)."""

    def __init__(self, ids: JaggedIds, n: int) -> None:
        self.n, self.weights = n, ids.weights
        self.tables = (ids.offsets.numel() - 1) // n if n else 0
        nbags = self.tables * n
        total = ids.values.numel()
        self.bag_len = -1  # ids per bag when every bag holds the same number, else -1
        if nbags == 0 or total == 0:
            self.bag_len = 0
        elif total % nbags == 0:
            L = total // nbags
            if torch.equal(ids.offsets, torch.arange(0, total + 1, L, dtype=torch.int64)):
                self.bag_len = L
        if self.bag_len < 0:
            self.starts = ids.offsets[:-1]
            self.lengths = ids.offsets[1:] - ids.offsets[:-1]
        # ids kept as int32 when they fit (half the memory of a cached split; a batch's ids are
        # widened back to the int64 of the batch contract after the selection)
        self.values = ids.values
        if total and ids.values.dtype == torch.int64 and int(ids.values.max()) < 2**31 and int(ids.values.min()) >= 0:
            self.values = ids.values.to(torch.int32)

    def take(self, rows: torch.Tensor) -> JaggedIds:
        T, b, L, w = self.tables, rows.numel(), self.bag_len, self.weights
        if L == 0:
            empty = torch.zeros(0, dtype=torch.int64)
            return JaggedIds(empty, torch.zeros(T * b + 1, dtype=torch.int64), None if w is None else w[:0])
        if L > 0:
            offsets = torch.arange(0, T * b * L + 1, L, dtype=torch.int64)
            values = self.values.view(T, self.n, L).index_select(1, rows).view(-1).to(torch.int64)
            weights = None if w is None else w.view(T, self.n, L).index_select(1, rows).view(-1)
            return JaggedIds(values, offsets, weights)
        bags = (torch.arange(T, dtype=torch.int64).view(T, 1) * self.n + rows.view(1, b)).view(-1)
        lengths = self.lengths.index_select(0, bags)
        offsets = torch.zeros(T * b + 1, dtype=torch.int64)
        torch.cumsum(lengths, 0, out=offsets[1:])
        total = int(offsets[-1])
        shift = torch.repeat_interleave(self.starts.index_select(0, bags) - offsets[:-1], lengths, output_size=total)
        pos = shift.add_(torch.arange(total, dtype=torch.int64))
        weights = None if w is None else w.index_select(0, pos)
        return JaggedIds(self.values.index_select(0, pos).to(torch.int64), offsets, weights)


class RowTaker:
    """Batches of rows of one large CPU ``Batch`` (a whole cached split collated once): ``take(rows)``
    is the ``Batch`` the collator would have built from those rows of the table, in that order,
    by index selection alone (no Arrow, no per-batch collation; ``widedeep.train.feed``).

    Bag lengths are looked at once here: when every bag of a side holds the same number of ids
    (single-valued features), a batch's ids are one ``index_select`` of a ``[T, n, L]`` view."""

    def __init__(self, batch: Batch) -> None:
        n = batch.batch_size
        self.dense, self.labels = batch.dense, batch.labels  # the ids are kept by the sides only
        self.ids_per_row = (batch.wide.values.numel() + batch.deep.values.numel()) / max(n, 1)
        self.wide, self.deep = _SideRows(batch.wide, n), _SideRows(batch.deep, n)

    @property
    def rows(self) -> int:
        return int(self.labels.shape[0])

    def take(self, rows: torch.Tensor) -> Batch:
        """Rows ``rows`` (int64 positions) of the batch, as a ``Batch`` of ``len(rows)`` rows."""
        return Batch(
            self.dense.index_select(0, rows),
            self.wide.take(rows),
            self.deep.take(rows),
            self.labels.index_select(0, rows),
        )
