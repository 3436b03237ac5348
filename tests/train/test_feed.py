"""The train loop's batches without Ray: the in-memory train split (``data_cache: memory``) is
reshuffled every epoch, reproducibly, gives the same global batches to any number of workers and
covers every row; ``auto`` picks memory or streaming by size; the prefetch thread hands errors
over and stops with its consumer; the timings' steady rate leaves each epoch's start out."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tests.train.helpers import adult_prepared
from widedeep.errors import ConfigError
from widedeep.features import FeatureSpace
from widedeep.train.config import TrainConfig, load_train_config
from widedeep.train.feed import (
    MEMORY_CACHE_FRACTION,
    CachedTrainFeed,
    ValidFeed,
    prefetch,
    read_split,
    resolve_data_cache,
    split_size,
)
from widedeep.train.tasks import get_task
from widedeep.train.timings import EpochClock, summarize
from widedeep.train.worker import LoopSpec, WorkerContext


@pytest.fixture(scope="module")
def prepared(adult_path, tmp_path_factory):
    return adult_prepared(adult_path, tmp_path_factory.mktemp("feed"), rows=1000)


def _ctx(data, rank: int = 0, world: int = 1, *overrides: str) -> WorkerContext:
    cfg = load_train_config(None, [f"data={data}", *overrides])
    fs = FeatureSpace.load(str(data / "feature_space.json"))
    task = get_task("ranking")
    columns = task.required_columns(fs, cfg)
    rows, _ = split_size(str(data / "train"), columns)
    spec = LoopSpec(
        config=cfg.to_dict(),
        feature_space=fs.to_json(),
        columns=columns,
        train_rows=rows,
        run_dir="unused",
        train_dirs=(str(data / "train"),),
        valid_dir=str(data / "valid"),
        local_mode=True,
        data_cache="memory",
        started_at=0.0,
    )
    return WorkerContext(spec, cfg, fs, task, rank, world, torch.device("cpu"))


def _rows(feed: CachedTrainFeed, epoch: int) -> list[np.ndarray]:
    """The rows (by original position in the split) of every batch of an epoch."""
    order = feed.order(epoch)
    out = []
    for start, stop in feed._bounds():
        out.append(np.arange(start, stop) if order is None else order[start:stop])
    return out


def test_cached_split_reshuffles_every_epoch_reproducibly(prepared):
    a, b = CachedTrainFeed(_ctx(prepared)), CachedTrainFeed(_ctx(prepared))
    e0, e1 = np.concatenate(_rows(a, 0)), np.concatenate(_rows(a, 1))
    n = a.ctx.spec.train_rows
    assert sorted(e0) == list(range(n)) and sorted(e1) == list(range(n))  # every row once per epoch
    assert not np.array_equal(e0, e1)  # a new order every epoch
    assert np.array_equal(e0, np.concatenate(_rows(b, 0)))  # same seed, same order
    other = CachedTrainFeed(_ctx(prepared, 0, 1, "seed=7"))
    assert not np.array_equal(e0, np.concatenate(_rows(other, 0)))


def test_cached_batches_are_the_rows_of_the_order(prepared):
    ctx = _ctx(prepared, 0, 1, "batch_size=100", "prefetch_batches=2")
    feed = CachedTrainFeed(ctx)
    table = read_split(ctx.spec.train_dirs[0], ctx.spec.columns)
    label = np.asarray(table.column("label").to_numpy(), dtype=np.float32)
    batches = list(feed.batches(3, 0))
    assert len(batches) == feed.steps_per_epoch() == -(-ctx.spec.train_rows // 100)
    for got, rows in zip(batches, _rows(feed, 3), strict=True):
        assert torch.equal(got.labels, torch.from_numpy(label[rows]))
    resumed = list(feed.batches(3, 4))  # a mid-epoch resume lands on the same batches
    assert len(resumed) == len(batches) - 4
    assert all(torch.equal(x.labels, y.labels) for x, y in zip(resumed, batches[4:], strict=True))


def test_any_number_of_workers_sees_the_same_global_batches(prepared):
    one = CachedTrainFeed(_ctx(prepared, 0, 1, "batch_size=96"))
    three = [CachedTrainFeed(_ctx(prepared, r, 3, "batch_size=32")) for r in range(3)]
    steps = {f.steps_per_epoch() for f in three}
    assert steps == {one.steps_per_epoch()}  # every rank runs as many steps (DDP needs it)
    for k, rows in enumerate(_rows(one, 2)):
        glob = np.concatenate([_rows(f, 2)[k] for f in three])
        if len(rows) % 3 == 0:
            assert np.array_equal(glob, rows)
        else:  # the last, incomplete global batch is split evenly (< 3 rows left out)
            assert len(rows) - len(glob) < 3 and np.array_equal(glob, rows[: len(glob)])


def test_valid_rows_are_read_once_and_split_across_ranks(prepared):
    ctxs = [_ctx(prepared, r, 2, "eval_batch_size=64") for r in range(2)]
    feeds = [ValidFeed(c, cached=True) for c in ctxs]
    first = [[b.labels.clone() for b in f.batches(torch.nn.Linear(1, 1))] for f in feeds]
    assert feeds[0]._tables is not None  # kept for the next epoch
    again = [[b.labels for b in f.batches(torch.nn.Linear(1, 1))] for f in feeds]
    assert all(torch.equal(x, y) for a, b in zip(first, again, strict=True) for x, y in zip(a, b, strict=True))
    valid = read_split(str(prepared / "valid"), ctxs[0].spec.columns)
    assert sum(len(x) for part in first for x in part) == valid.num_rows  # every valid row once


def test_auto_caches_what_fits_and_streams_the_rest(prepared):
    ctx = _ctx(prepared)
    rows, nbytes = split_size(ctx.spec.train_dirs[0], ctx.spec.columns)
    assert rows == read_split(ctx.spec.train_dirs[0], ctx.spec.columns).num_rows and nbytes > 0
    store = nbytes * 2 / MEMORY_CACHE_FRACTION  # room for two workers' copies, not three
    assert resolve_data_cache("auto", nbytes, 2, store)[0] == "memory"
    mode, why = resolve_data_cache("auto", nbytes, 3, store)
    assert mode == "stream" and "data_cache=auto" in why
    assert resolve_data_cache("memory", nbytes, 3, store)[0] == "memory"
    assert resolve_data_cache("stream", nbytes, 1, store)[0] == "stream"


def test_data_cache_is_validated_naming_key_and_value(prepared):
    with pytest.raises(ConfigError, match=r"data_cache: must be one of \['auto', 'memory', 'stream'\], got 'disk'"):
        load_train_config(None, [f"data={prepared}", "data_cache=disk"])
    with pytest.raises(ConfigError, match=r"data_cache: .*got 'ram'"):
        TrainConfig(data=str(prepared), data_cache="ram")  # type: ignore[arg-type]


def test_prefetch_hands_over_errors_and_stops_with_its_consumer():
    def boom():
        yield 1
        raise ValueError("bad batch")

    it = prefetch(boom(), 2)
    assert next(it) == 1
    with pytest.raises(ValueError, match="bad batch"):
        next(it)
    produced = []

    def many():
        for i in range(1000):
            produced.append(i)
            yield i

    it = prefetch(many(), 3)
    assert [next(it) for _ in range(5)] == [0, 1, 2, 3, 4]
    it.close()  # joins the producer thread
    assert len(produced) < 1000
    assert list(prefetch(iter(range(5)), 0)) == list(range(5))


def test_steady_rate_leaves_each_epochs_first_tenth_out():
    clock = EpochClock(steps_per_epoch=20)
    for i in range(20):
        clock.add_step(wait_s=1.0 if i < 2 else 0.0, compute_s=0.5, samples=100)
    rec = clock.record(1)
    assert rec["samples"] == 2000 and rec["data_wait_s"] == 2.0 and rec["compute_s"] == 10.0
    assert rec["samples_per_s"] == pytest.approx(2000 / 12.0)
    assert rec["steady_samples"] == 1800 and rec["steady_s"] == pytest.approx(9.0)
    t = summarize(3.5, [rec, rec])
    assert t["ray_start_s"] == 3.5 and t["steady_samples_per_s"] == pytest.approx(200.0)


def test_read_split_keeps_file_order(prepared):
    ctx = _ctx(prepared)
    table = read_split(ctx.spec.train_dirs[0], ["label"])
    parts = sorted((prepared / "train").glob("*.parquet"))
    expect = pa.concat_tables([pq.read_table(p, columns=["label"]) for p in parts])
    assert table.column("label").to_pylist() == expect.column("label").to_pylist()


def test_cached_batches_equal_collating_the_taken_rows(prepared):
    """The cached split is collated once and each batch selected by rows (``RowTaker``): every
    batch is exactly what collating those rows of the table gives."""
    ctx = _ctx(prepared, 0, 1, "batch_size=64")
    feed = CachedTrainFeed(ctx)
    table = read_split(ctx.spec.train_dirs[0], ctx.spec.columns)
    batches = list(feed.batches(1, 0))
    assert feed._rows is not None  # the ranking task's batches are row selections
    for got, rows in zip(batches, _rows(feed, 1), strict=True):
        want = ctx.task.collate(table.take(pa.array(rows)), ctx.fs, ctx.cfg)
        for x, y in (
            (got.dense, want.dense),
            (got.labels, want.labels),
            (got.wide.values, want.wide.values),
            (got.wide.offsets, want.wide.offsets),
            (got.deep.values, want.deep.values),
            (got.deep.offsets, want.deep.offsets),
        ):
            assert torch.equal(x, y)
