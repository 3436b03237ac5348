"""How many tables live in one weight tensor, and the input checks every backend shares.

Packing: tables are laid out one after the other, in the order given, in ONE flat weight
tensor (table ``t`` occupies ``elem_offsets[t] : elem_offsets[t] + num_rows * dim``), as
FBGEMM's ``weights_offsets`` does. A *run* is a maximal sequence of consecutive tables with
the same ``dim``: its rows are contiguous, so the run is one ``[rows, dim]`` matrix and one
library call (``F.embedding_bag``) serves every table and bag of the run. The usual model has
one run per side (all wide tables have D=1, all deep tables share D).

Shape letters: ``T`` tables, ``B`` bags per table, ``N`` ids, ``D`` dim.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from widedeep.errors import ConfigError, KernelInputError
from widedeep.kernels.config import TableConfig


@dataclass(frozen=True)
class Run:
    """Consecutive tables ``first <= t < last`` sharing ``dim``; rows contiguous in the packing."""

    first: int
    last: int
    dim: int
    row_start: int  # first packed row of the run (rows of all tables counted together)
    num_rows: int  # rows of the run's tables together
    elem_start: int  # offset of the run in the flat weight tensor
    col_start: int  # first output column of the run

    @property
    def num_tables(self) -> int:
        return self.last - self.first


class TableLayout:
    """Offsets of every table in the packed weights, the output columns and the runs."""

    def __init__(self, tables: list[TableConfig]) -> None:
        if not tables:
            raise ConfigError("tables: TableBatchedEmbeddingBag needs at least one table, got none")
        names = [t.name for t in tables]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ConfigError(f"tables: names must be unique; repeated: {dup}")
        self.tables = list(tables)
        self.row_offsets = [0]
        self.elem_offsets = [0]
        self.col_offsets = [0]
        for t in tables:
            self.row_offsets.append(self.row_offsets[-1] + t.num_rows)
            self.elem_offsets.append(self.elem_offsets[-1] + t.num_rows * t.dim)
            self.col_offsets.append(self.col_offsets[-1] + t.dim)
        self.runs: list[Run] = []
        first = 0
        for i in range(1, len(tables) + 1):
            if i == len(tables) or tables[i].dim != tables[first].dim:
                self.runs.append(
                    Run(
                        first=first,
                        last=i,
                        dim=tables[first].dim,
                        row_start=self.row_offsets[first],
                        num_rows=self.row_offsets[i] - self.row_offsets[first],
                        elem_start=self.elem_offsets[first],
                        col_start=self.col_offsets[first],
                    )
                )
                first = i
        self.index = {n: i for i, n in enumerate(names)}
        self._limits: dict[torch.device, torch.Tensor] = {}
        self._shifts: dict[tuple[int, torch.device], torch.Tensor] = {}
        self._steps: dict[torch.device, tuple[int, int, torch.Tensor]] = {}

    def row_limits(self, device: torch.device) -> torch.Tensor:
        """int64 ``[T]``: each table's number of rows, on ``device`` (built once per device)."""
        lim = self._limits.get(device)
        if lim is None:
            lim = self._limits[device] = torch.tensor([t.num_rows for t in self.tables], device=device)
        return lim

    def row_shift(self, run: Run, device: torch.device) -> torch.Tensor:
        """int64 ``[T_r]``: first row of each of the run's tables counted from the run's first row,
        on ``device`` (built once per run and device: it is needed every call)."""
        key = (run.first, device)
        shift = self._shifts.get(key)
        if shift is None:
            rows = [self.row_offsets[t] - run.row_start for t in range(run.first, run.last)]
            shift = self._shifts[key] = torch.tensor(rows, dtype=torch.int64, device=device)
        return shift

    def expected_offsets(self, n_ids: int, bag_len: int, device: torch.device) -> torch.Tensor:
        """int64 ``[n_ids // bag_len + 1]``: ``0, L, 2L, ..., n_ids``, the offsets of bags that all
        hold ``L = bag_len`` ids. The last one built is kept per device: a training loop asks for
        the same one every step, and building it costs as much as comparing with it."""
        kept = self._steps.get(device)
        if kept is None or kept[0] != n_ids or kept[1] != bag_len:
            kept = self._steps[device] = (n_ids, bag_len, torch.arange(0, n_ids + 1, bag_len, device=device))
        return kept[2]

    @property
    def num_tables(self) -> int:
        return len(self.tables)

    @property
    def total_rows(self) -> int:
        return self.row_offsets[-1]

    @property
    def total_elems(self) -> int:
        return self.elem_offsets[-1]

    @property
    def total_dim(self) -> int:
        return self.col_offsets[-1]

    def table_index(self, t: int | str) -> int:
        if isinstance(t, str):
            if t not in self.index:
                raise KernelInputError(f"no table named {t!r}; tables: {list(self.index)}")
            return self.index[t]
        if not 0 <= t < self.num_tables:
            raise KernelInputError(f"table index {t} out of range: expected 0 <= t < {self.num_tables}")
        return t


# Up to this many ids, the id range check is one pass over all tables' ids at once.
_ONE_PASS_MAX_IDS = 1 << 16


def check_inputs_info(
    layout: TableLayout,
    indices: torch.Tensor,
    offsets: torch.Tensor,
    per_sample_weights: torch.Tensor | None,
    device: torch.device,
    *,
    check_values: bool,
    check_ids: bool = True,
) -> tuple[int, int]:
    """Validate the jagged input; return ``B``, the number of bags per table, and ``L`` when
    the offsets were checked (``check_values``) and every bag holds ``L >= 1`` ids, else 0
    (lengths vary, no ids, or not checked), so that a backend need not compare them again.

    Shapes, dtypes and devices are always checked (free: metadata only). With
    ``check_values`` the values are checked too: offsets start at 0, end at ``N`` and never
    decrease (one pass over the offsets: a comparison with the expected offsets when every bag
    has the same length) and, unless ``check_ids`` is False, every id lies in
    ``[0, num_rows)`` of ITS table (``check_id_ranges``). ``check_ids=False`` is for a backend
    that checks the ids itself (the vectorized CPU path: see ``module.py``). On CUDA the
    checks add ``2 + 2*T`` device-to-host syncs per call, which is why they can be turned off
    (``validate=False``) once the loader is trusted.
    """
    for name, x in (("indices", indices), ("offsets", offsets)):
        if not isinstance(x, torch.Tensor):
            raise KernelInputError(f"{name}: expected a torch.Tensor, got {type(x).__name__}")
        if x.dtype != torch.int64:
            raise KernelInputError(f"{name}: expected dtype torch.int64, got {x.dtype}")
        if x.dim() != 1:
            raise KernelInputError(f"{name}: expected a 1-D tensor, got shape {tuple(x.shape)}")
        if x.device != device:
            raise KernelInputError(f"{name}: expected device {device} (the weights'), got {x.device}")
    T = layout.num_tables
    if offsets.numel() < 1 or (offsets.numel() - 1) % T != 0:
        raise KernelInputError(
            f"offsets: expected length T*B+1 with T={T} tables, got length {offsets.numel()} "
            f"({offsets.numel() - 1} is not a multiple of {T})"
        )
    B = (offsets.numel() - 1) // T
    N = indices.numel()
    if per_sample_weights is not None:
        w = per_sample_weights
        if not isinstance(w, torch.Tensor):
            raise KernelInputError(f"per_sample_weights: expected a torch.Tensor or None, got {type(w).__name__}")
        if w.dtype != torch.float32:
            raise KernelInputError(f"per_sample_weights: expected dtype torch.float32, got {w.dtype}")
        if w.dim() != 1 or w.numel() != N:
            raise KernelInputError(f"per_sample_weights: expected shape ({N},) like indices, got {tuple(w.shape)}")
        if w.device != device:
            raise KernelInputError(f"per_sample_weights: expected device {device}, got {w.device}")
    if not check_values:
        return B, 0
    first, last = int(offsets[0]), int(offsets[-1])
    if first != 0:
        raise KernelInputError(f"offsets[0]: expected 0, got {first}")
    if last != N:
        raise KernelInputError(f"offsets[-1]: expected {N} (the number of indices), got {last}")
    # Every bag of the same length L (single-valued features: L = 1) is monotone by construction:
    # one comparison with the expected offsets replaces the difference pass.
    fixed = B > 0 and N > 0 and N % (T * B) == 0
    if fixed:
        fixed = torch.equal(offsets, layout.expected_offsets(N, N // (T * B), offsets.device))
    if B > 0 and not fixed:
        d = offsets[1:] - offsets[:-1]
        if bool((d < 0).any()):
            i = int(torch.nonzero(d < 0)[0, 0])
            raise KernelInputError(
                f"offsets: not monotone at position {i + 1}: offsets[{i}]={int(offsets[i])} > "
                f"offsets[{i + 1}]={int(offsets[i + 1])}"
            )
    if check_ids:
        check_id_ranges(layout, indices, offsets, B, fixed=fixed)
    return B, N // (T * B) if fixed else 0


def check_id_ranges(
    layout: TableLayout,
    indices: torch.Tensor,
    offsets: torch.Tensor,
    B: int,
    first: int = 0,
    last: int | None = None,
    *,
    fixed: bool = False,
) -> None:
    """Raise ``KernelInputError`` naming the first id of tables ``first <= t < last`` (default:
    all) outside ``[0, num_rows)`` of its table. Offsets must already be valid; ``fixed``: every
    bag holds the same number of ids (the checked offsets say so).

    One min/max pass per table over its ids (one call per table: measured faster than one
    ``aminmax(dim=1)`` over all tables): on CPU (one thread) about 0.13 ms for criteo's 106k
    ids and 4 ms for multihot's 2.1M. Small batches (up to ``_ONE_PASS_MAX_IDS`` ids) take one
    pass over all the tables' ids at once instead, and the per-table loop only runs to name a
    bad id.
    """
    last = layout.num_tables if last is None else last
    T = last - first
    bounds = offsets[first * B :: max(B, 1)][: T + 1].tolist() if B > 0 else [0] * (T + 1)
    lo_all, hi_all = bounds[0], bounds[-1]
    N = hi_all - lo_all
    if N == 0:
        return
    if N <= _ONE_PASS_MAX_IDS:
        # Small batches: one pass over all ids at once (per-table calls would cost more than the
        # check); the per-table loop below then only runs to name the first bad id.
        lim = layout.row_limits(indices.device)[first:last]
        ids = indices[lo_all:hi_all]
        if fixed:
            mn, mx = torch.aminmax(ids.view(T, -1), dim=1)
            ok = not bool(torch.logical_or(mn < 0, mx >= lim).any())
        else:
            offs = offsets[first * B : last * B + 1]
            lim_per_id = torch.repeat_interleave(lim, offs[B::B] - offs[0:-1:B], output_size=N)
            ok = not bool(torch.logical_or(ids < 0, ids >= lim_per_id).any())
        if ok:
            return
    # One pass over each table's ids (min and max), instead of materialising a per-id limit.
    for k in range(T):
        tc = layout.tables[first + k]
        lo, hi = bounds[k], bounds[k + 1]
        if hi == lo:
            continue
        mn, mx = torch.aminmax(indices[lo:hi])
        if int(mn) < 0:
            i = lo + int(torch.nonzero(indices[lo:hi] < 0)[0, 0])
            raise KernelInputError(f"indices[{i}]={int(indices[i])} is negative (table {tc.name!r}); expected 0 <= id")
        if int(mx) >= tc.num_rows:
            i = lo + int(torch.nonzero(indices[lo:hi] >= tc.num_rows)[0, 0])
            raise KernelInputError(
                f"indices[{i}]={int(indices[i])} out of range for table {tc.name!r}: expected 0 <= id < {tc.num_rows}"
            )
