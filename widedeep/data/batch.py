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
