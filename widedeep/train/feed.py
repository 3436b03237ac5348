"""Batches for the training loop: the train split (cached in memory or streamed by Ray Data) and
each worker's share of the valid split.

``data_cache`` (job config) picks how the train split reaches the workers:

- ``memory``: every worker reads the split's needed columns once (Parquet, files in name order),
  keeps them (collated once into the task's batch layout when its batches are row selections,
  ``task.collate_split``: a step's batch is then an index selection, ``RowTaker``, with no
  per-batch collation and no hand-off from a loader thread), and each epoch walks a fresh
  permutation of the rows seeded by ``(seed, epoch)``:
  the same seed gives the same batches, every epoch a different order, any number of workers
  the same global batches (rank ``r`` of ``W`` takes the ``r``-th slice of every global batch of
  ``batch_size * W`` rows). No Ray Data pipeline is started, so an epoch has no start-up cost,
  and a mid-epoch resume lands on exactly the batches it left.
- ``stream``: Ray Data reads, shuffles (file order and windows, ``widedeep.train.driver``) and
  splits the split across workers every epoch (``equal=True``); for splits larger than memory.
- ``auto`` (default): ``memory`` when the split's needed columns, decoded, times the number of
  workers fit in ``MEMORY_CACHE_FRACTION`` of the cluster's object store memory (Ray's default
  object store is 30% of a node's RAM, so this leaves most of it to the workers' heaps and to
  Ray), else ``stream``. The driver resolves it once and logs why.

Validation reads each rank's contiguous share of the valid split directly (``rank_row_batches``:
every valid row scored exactly once, no Ray Data start-up); with ``memory`` the rows are read
once and kept for every epoch's validation.
"""

from __future__ import annotations

import itertools
import math
import queue
import threading
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np

from widedeep.data.batch import Batch, RowTaker
from widedeep.paths import Location

if TYPE_CHECKING:
    from widedeep.train.worker import WorkerContext

#: ``data_cache: auto`` caches the train split when (decoded bytes x workers) is below this
#: fraction of the cluster's object store memory
MEMORY_CACHE_FRACTION = 0.25

#: a cached split's batches of fewer ids (rows x ids per row, both sides) are selected in line,
#: not on the prefetch thread: measured on the Adult recipe (256 rows x 20 ids, ~60 us to select),
#: the hand-off cost 0.2 ms of data wait per step; a Criteo-shaped batch (4096 x 53) takes
#: milliseconds to select, which the thread overlaps with the step
PREFETCH_MIN_IDS = 1 << 16

T = TypeVar("T")


def split_files(split_dir: str) -> tuple[Location, list[str]]:
    """A prepared split's Parquet files, in name order (what fixes a cached split's row order)."""
    loc = Location.of(split_dir)
    files = [f.path for f in loc.files(".parquet", recursive=True) if not f.name.startswith((".", "_"))]
    return loc, files


def split_size(split_dir: str, columns: list[str]) -> tuple[int, int]:
    """``(rows, decoded bytes of columns)`` of a prepared split, from the Parquet footers only."""
    import pyarrow.parquet as pq

    loc, files = split_files(split_dir)
    wanted = set(columns)
    rows = nbytes = 0
    for path in files:
        with loc.fs.open_input_file(path) as f:
            meta = pq.ParquetFile(f).metadata
        rows += meta.num_rows
        for g in range(meta.num_row_groups):
            rg = meta.row_group(g)
            for c in range(rg.num_columns):
                col = rg.column(c)
                if not wanted or col.path_in_schema.split(".")[0] in wanted:
                    nbytes += col.total_uncompressed_size
    return rows, nbytes


def resolve_data_cache(setting: str, train_bytes: int, workers: int, object_store_bytes: float) -> tuple[str, str]:
    """``(memory | stream, why)`` for the job's ``data_cache`` setting."""
    need = train_bytes * max(workers, 1)
    budget = MEMORY_CACHE_FRACTION * object_store_bytes
    size = f"train split {train_bytes / 2**20:,.1f} MiB (needed columns, decoded) x {max(workers, 1)} worker(s)"
    if setting != "auto":
        return setting, f"data_cache={setting}: {size}"
    mode = "memory" if need <= budget else "stream"
    rel = "<=" if mode == "memory" else ">"
    return mode, (
        f"data_cache=auto -> {mode}: {size} {rel} {MEMORY_CACHE_FRACTION:.0%} of the object store "
        f"({object_store_bytes / 2**30:,.1f} GiB)"
    )


def read_split(split_dir: str, columns: list[str]) -> Any:
    """The whole split (only ``columns``) as one Arrow table, rows in file-name order."""
    import pyarrow.dataset as pads

    loc, files = split_files(split_dir)
    table = pads.dataset(files, filesystem=loc.fs, format="parquet").to_table(columns=columns or None)
    return table.combine_chunks()


def read_splits(split_dirs: tuple[str, ...] | list[str], columns: list[str]) -> Any:
    """``read_split`` of several splits, one after the other (a refit's train and valid)."""
    import pyarrow as pa

    tables = [read_split(d, columns) for d in split_dirs]
    return tables[0] if len(tables) == 1 else pa.concat_tables(tables, promote_options="permissive").combine_chunks()


def rank_row_batches(split_dir: str, columns: list[str], batch_size: int, rank: int, world: int) -> Iterator[Any]:
    """Stream rank ``rank``'s contiguous share of a split (files in name order) as Arrow tables.

    Used for validation: every valid row is scored exactly once across ranks (no ``equal=True``
    dropping), and there is no per-epoch Ray Data execution to start, which dominates the cost of
    a small validation split. Ranks may get different batch counts; nothing inside is collective.
    """
    import pyarrow as pa
    import pyarrow.dataset as pads

    loc, files = split_files(split_dir)
    ds = pads.dataset(files, filesystem=loc.fs, format="parquet")
    n = ds.count_rows()
    lo, hi = n * rank // world, n * (rank + 1) // world
    pos = 0
    pending: list[Any] = []
    pending_rows = 0
    for rb in ds.to_batches(columns=columns or None, batch_size=batch_size):
        start, stop = max(lo - pos, 0), min(hi - pos, rb.num_rows)
        pos += rb.num_rows
        if stop > start:
            pending.append(rb.slice(start, stop - start))
            pending_rows += stop - start
            if pending_rows >= batch_size:
                t = pa.Table.from_batches(pending)
                pending, pending_rows = [], 0
                for s in range(0, t.num_rows, batch_size):
                    yield t.slice(s, batch_size)
        if pos >= hi:
            break
    if pending:
        yield pa.Table.from_batches(pending)


def prefetch(items: Iterator[T], depth: int) -> Iterator[T]:
    """``items`` produced ``depth`` ahead by a background thread (collation overlaps the steps);
    errors re-raised in the consumer; the thread stops when the consumer stops early."""
    if depth <= 0:
        yield from items
        return
    q: queue.Queue[tuple[bool, Any]] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: tuple[bool, Any]) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for x in items:
                if not put((True, x)):
                    return
            put((False, None))
        except BaseException as e:  # handed to the consumer, raised there
            put((False, e))

    thread = threading.Thread(target=produce, name="widedeep-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            ok, x = q.get()
            if not ok:
                if x is not None:
                    raise x
                return
            yield x
    finally:
        stop.set()
        thread.join()


class TrainFeed(Protocol):
    """Train batches of one worker, epoch by epoch (every rank the same number per epoch)."""

    def steps_per_epoch(self) -> int: ...

    def batches(self, epoch: int, skip: int) -> Iterator[Any]:
        """Epoch ``epoch``'s collated batches after the first ``skip`` (a mid-epoch resume)."""
        ...


class _Collate:
    """Ray Data collate: Arrow batch -> the task's batch, in the loader's threads."""

    def __new__(cls, task: Any, fs: Any, cfg: Any) -> Any:
        from ray.data.collate_fn import ArrowBatchCollateFn

        class TaskCollate(ArrowBatchCollateFn):
            def __call__(self, table: Any) -> Any:
                return task.collate(table, fs, cfg)

        return TaskCollate()


class StreamedTrainFeed:
    """This worker's split of the Ray Data train pipeline the driver built (``data_cache: stream``)."""

    def __init__(self, ctx: WorkerContext) -> None:
        self.ctx = ctx

    def steps_per_epoch(self) -> int:
        return max(1, math.ceil((self.ctx.spec.train_rows // max(self.ctx.world, 1)) / self.ctx.cfg.batch_size))

    def batches(self, epoch: int, skip: int) -> Iterator[Any]:
        import ray.train

        cfg = self.ctx.cfg
        shard = ray.train.get_dataset_shard("train")
        it = shard.iter_torch_batches(
            batch_size=cfg.batch_size,
            collate_fn=_Collate(self.ctx.task, self.ctx.fs, cfg),
            prefetch_batches=cfg.prefetch_batches,
            device="cpu",
        )
        return itertools.islice(it, skip, None)


class CachedTrainFeed:
    """The train split read once into memory, walked in a fresh seeded order every epoch
    (``data_cache: memory``; see the module docstring). ``shuffle=False`` keeps file order;
    ``drop_incomplete`` drops the last, incomplete global batch instead of splitting it evenly."""

    def __init__(self, ctx: WorkerContext, *, shuffle: bool = True, drop_incomplete: bool = False) -> None:
        self.ctx, self.shuffle, self.drop_incomplete = ctx, shuffle, drop_incomplete
        self._table: Any = None  # the split as read (tasks whose batches are not row selections)
        self._rows: RowTaker | None = None  # the split collated once (``task.collate_split``)

    def _bounds(self) -> list[tuple[int, int]]:
        """This rank's ``[start, stop)`` of every batch, as positions in the epoch's row order."""
        n, b, w, r = self.ctx.spec.train_rows, self.ctx.cfg.batch_size, self.ctx.world, self.ctx.rank
        g = b * w
        full = n // g
        out = [(k * g + r * b, k * g + (r + 1) * b) for k in range(full)]
        last = 0 if self.drop_incomplete else (n - full * g) // w
        if last:
            out.append((full * g + r * last, full * g + (r + 1) * last))
        return out

    def steps_per_epoch(self) -> int:
        return len(self._bounds())

    def order(self, epoch: int) -> np.ndarray | None:
        """The epoch's row order (``None``: file order), the same on every rank."""
        if not self.shuffle:
            return None
        return np.random.default_rng([self.ctx.cfg.seed, epoch]).permutation(self.ctx.spec.train_rows)

    def _load(self) -> None:
        """Read the split once; collate it once too when the task's batches are row selections."""
        if self._table is not None or self._rows is not None:
            return
        table = read_splits(self.ctx.spec.train_dirs, self.ctx.spec.columns)
        collate_split = getattr(self.ctx.task, "collate_split", None)
        whole = collate_split(table, self.ctx.fs, self.ctx.cfg) if collate_split is not None else None
        if isinstance(whole, Batch):
            self._rows = RowTaker(whole)
        else:
            self._table = table

    def _tables(self, epoch: int, skip: int) -> Iterator[Any]:
        import pyarrow as pa

        table, order = self._table, self.order(epoch)
        for start, stop in self._bounds()[skip:]:
            yield table.slice(start, stop - start) if order is None else table.take(pa.array(order[start:stop]))

    def _taken(self, epoch: int, skip: int) -> Iterator[Any]:
        import torch

        rows, order = self._rows, self.order(epoch)
        assert rows is not None
        idx = torch.arange(rows.rows) if order is None else torch.from_numpy(order)
        for start, stop in self._bounds()[skip:]:
            yield rows.take(idx[start:stop])

    def batches(self, epoch: int, skip: int) -> Iterator[Any]:
        task, fs, cfg = self.ctx.task, self.ctx.fs, self.ctx.cfg
        self._load()
        if self._rows is not None:
            rows = self._rows
            # a selection of few ids is cheaper in line than handed over by a thread; a large one
            # overlaps the step on the prefetch thread
            depth = cfg.prefetch_batches if cfg.batch_size * rows.ids_per_row >= PREFETCH_MIN_IDS else 0
            return prefetch(self._taken(epoch, skip), depth)
        return prefetch((task.collate(t, fs, cfg) for t in self._tables(epoch, skip)), cfg.prefetch_batches)


def make_train_feed(ctx: WorkerContext) -> TrainFeed:
    """The feed of the driver's resolved ``data_cache``."""
    if ctx.spec.data_cache == "memory":
        return CachedTrainFeed(ctx, shuffle=ctx.cfg.shuffle != "none")
    return StreamedTrainFeed(ctx)


class ValidFeed:
    """This worker's share of the valid split, collated; read once and kept when ``cached``."""

    def __init__(self, ctx: WorkerContext, *, cached: bool) -> None:
        self.ctx, self.cached = ctx, cached
        self._tables: list[Any] | None = None

    def _rank_tables(self) -> Iterable[Any]:
        c = self.ctx
        rows = rank_row_batches(c.spec.valid_dir, c.spec.columns, c.cfg.eval_batch_size, c.rank, c.world)
        if not self.cached:
            return rows
        if self._tables is None:
            self._tables = list(rows)
        return self._tables

    def batches(self, model: Any) -> Iterator[Any]:
        from widedeep.train.sharded_training import empty_batch, lockstep

        c = self.ctx
        batches = (c.task.collate(t, c.fs, c.cfg) for t in self._rank_tables())
        # issue 16: sharded lookups are collective: every worker runs as many batches as the busiest
        yield from lockstep(
            batches, model, lambda: empty_batch(c.task, c.fs, c.cfg, c.spec.valid_dir, c.spec.columns), c.device
        )
