"""``widedeep prepare``: raw logs -> FeatureSpace + sharded Parquet of model inputs, on Ray Data.

Pipeline (each pass is one Ray Data ``map_batches`` over read units, see ``sources.py``)::

    pass 0 (time splits only): collect time cut-offs (global sketch, or per-user (user, time))
    pass 1 (fit):    read unit -> assign split -> partial statistics of the TRAIN rows
                     -> driver merges them (no shuffle) -> FeatureSpace
    pass 2 (write):  read unit -> assign split -> FeatureSpace.transform (Arrow/NumPy)
                     -> DIR/{train,valid,test}/part-UUUUU-KKKK.parquet + per-shard statistics

Why tasks write their own shards rather than ``Dataset.write_parquet``: the three splits come
out of one pass over the input (three ``filter`` + ``write_parquet`` would read it three
times), file names are deterministic (``part-<unit>-<k>``), and each task returns exactly the
statistics the manifest needs (rows, label sum, OOV counts, skipped rows).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from widedeep.data.sources import ReadUnit, filesystem, ignored_columns, plan_units, read_unit
from widedeep.data.split import SPLITS, SplitSpec, Splitter, parse_split, time_values, user_cutoffs
from widedeep.errors import DataError, WidedeepError
from widedeep.features import sketch
from widedeep.features.extend import extend_space
from widedeep.features.fit import Accumulator, _from_ipc, _ipc, partial_stats
from widedeep.features.space import FeatureSpace
from widedeep.features.spec import FeatureSpec, parse_spec

log = logging.getLogger(__name__)

MANIFEST_KIND = "widedeep.prepared"
_TIME_BITS = 40  # time sketch: exact for integer timestamps below 2**41


@dataclass(frozen=True)
class PrepareOptions:
    """Knobs of one ``prepare`` run (CLI flags map 1:1)."""

    inputs: list[str]
    out: str
    split: str = "random:0.8,0.1,0.1"
    seed: int = 0
    format: str = "auto"
    on_bad_rows: str = "error"
    shard_rows: int = 1_000_000
    row_group_rows: int = 65_536
    chunk_rows: int = 131_072
    unit_rows: int = 1_000_000
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.on_bad_rows not in ("error", "skip"):
            raise DataError(f"--on-bad-rows must be error or skip, got {self.on_bad_rows!r}")
        for k in ("shard_rows", "row_group_rows", "chunk_rows", "unit_rows"):
            if getattr(self, k) <= 0:
                raise DataError(f"{k}: must be > 0")


def needed_columns(spec: FeatureSpec, split: SplitSpec) -> list[str]:
    from widedeep.features.spec import feature_column

    cols: list[str] = []
    for c in (
        [feature_column(f) for f in spec.features] + [spec.label.source, spec.user_key, spec.item_key] + split.columns
    ):
        if c and c not in cols:
            cols.append(c)
    return cols


def dictionary_columns(spec: FeatureSpec, split: SplitSpec) -> list[str]:
    """Raw columns read only by categorical / multivalent features (never keys, label, split)."""
    from widedeep.features.spec import CategoricalFeature, MultivalentFeature, feature_column

    other = {spec.label.source, spec.user_key, spec.item_key, *split.columns}
    other |= {feature_column(f) for f in spec.features if not isinstance(f, (CategoricalFeature, MultivalentFeature))}
    cols = [feature_column(f) for f in spec.features if isinstance(f, CategoricalFeature)]
    return [c for c in cols if c and c not in other]


def unwrap_error(e: BaseException) -> WidedeepError | None:
    """The widedeep error inside a Ray task / Ray Data wrapper, if any."""
    seen: set[int] = set()
    stack: list[BaseException | None] = [e]
    while stack:
        cur = stack.pop()
        if cur is None or id(cur) in seen:
            continue
        seen.add(id(cur))
        if isinstance(cur, WidedeepError) and type(cur).__module__ == "widedeep.errors":
            return cur
        stack.extend([getattr(cur, "cause", None), cur.__cause__, cur.__context__])
    return None


def _units_dataset(units: list[ReadUnit]):
    import ray.data

    return ray.data.from_items([u.to_item() for u in units], override_num_blocks=max(1, len(units)))


def iter_task_batches(ds: Any) -> Iterator[pa.Table]:
    """Iterate a dataset's output batches on the driver, re-raising our errors cleanly (a task's
    ``error`` row, or a widedeep error wrapped by Ray, comes back as itself with its message)."""
    try:
        for batch in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
            raise_task_error(batch)
            yield batch
    except WidedeepError:
        raise
    except Exception as e:
        inner = unwrap_error(e)
        if inner is not None:
            raise type(inner)(str(inner)) from None
        raise


# ------------------------------------------------------------------ tasks (run in Ray workers)


def _errors_as_rows(fn):
    """Return a task's widedeep error as an ``error`` row instead of raising it.

    Why: an exception crossing Ray Data arrives wrapped (RayTaskError(UserCodeException)) with
    its cause flattened into traceback text; the driver re-raises the original class and
    message, prefixed with the file being read, so the user sees one clean line.
    """

    def wrapped(batch: pa.Table, **kw: Any) -> pa.Table:
        try:
            return fn(batch, **kw)
        except WidedeepError as e:
            where = batch.column("path")[0].as_py() if batch.num_rows else ""
            msg = str(e) if (not where or where in str(e)) else f"{where}: {e}"
            blob = json.dumps({"error": type(e).__name__, "message": msg}).encode()
            return pa.table({"key": pa.array(["error"]), "blob": pa.array([blob], pa.binary())})

    wrapped.__name__ = fn.__name__
    return wrapped


def raise_task_error(batch: pa.Table) -> None:
    """Re-raise an ``error`` row produced by ``_errors_as_rows``."""
    if "key" not in batch.column_names:
        return
    keys = batch.column("key").to_pylist()
    if "error" in keys:
        import widedeep.errors as errors

        d = json.loads(batch.column("blob")[keys.index("error")].as_py())
        cls = getattr(errors, d["error"], DataError)
        raise cls(d["message"])


@_errors_as_rows
def _time_task(batch: pa.Table, split: SplitSpec, chunk_rows: int, on_bad_rows: str) -> pa.Table:
    keys, blobs = [], []
    for item in batch.to_pylist():
        unit = ReadUnit.from_item(item)
        for chunk, _ in read_unit(unit, split.columns, chunk_rows, on_bad_rows):
            t = time_values(chunk, split.time_column or "", unit.path)
            if split.mode == "time":
                k, c = sketch.sketch_keys(t, _TIME_BITS)
                piece = pa.table({"key": pa.array(k, pa.int64()), "count": pa.array(c.astype(np.int64))})
            else:
                ucol = split.user_column or ""
                if ucol not in chunk.column_names:
                    raise DataError(f"{unit.path}: missing split user column {ucol!r}")
                piece = pa.table({"user": pa.compute.cast(chunk.column(ucol), pa.string()), "time": pa.array(t)})
            keys.append(split.mode)
            blobs.append(_ipc(piece))
    return pa.table({"key": pa.array(keys, pa.string()), "blob": pa.array(blobs, pa.binary())})


@_errors_as_rows
def _fit_task(
    batch: pa.Table,
    spec_doc: dict,
    splitter: Splitter,
    columns: list[str],
    chunk_rows: int,
    on_bad_rows: str,
    dict_columns: list[str],
) -> pa.Table:
    spec = parse_spec(spec_doc)
    outs = []
    for item in batch.to_pylist():
        unit = ReadUnit.from_item(item)
        row, n_read, bad_parse = unit.row_offset, 0, 0
        t_task, t_stats = time.perf_counter(), 0.0
        for chunk, bad in read_unit(unit, columns, chunk_rows, on_bad_rows, dict_columns):
            t0 = time.perf_counter()
            assign = splitter.assign(chunk, unit.file_index, row, unit.path)
            row += chunk.num_rows
            n_read += chunk.num_rows
            bad_parse += bad
            train = chunk.filter(pa.array(assign == 0))
            if train.num_rows:
                outs.append(partial_stats(spec, train, on_bad_rows, where=unit.path))
            t_stats += time.perf_counter() - t0
        task_s = time.perf_counter() - t_task
        read = pa.table({"n": [n_read], "bad_parse": [bad_parse], "task_s": [task_s], "stats_s": [t_stats]})
        outs.append(pa.table({"key": pa.array(["read"]), "blob": pa.array([_ipc(read)], pa.binary())}))
    return pa.concat_tables(outs)


class _ShardWriter:
    """Writes one split's rows of one unit into part files of at most ``shard_rows`` rows."""

    def __init__(self, fs: pafs.FileSystem, root: str, split: str, unit: int, shard_rows: int, row_group_rows: int):
        self.fs, self.dir, self.unit = fs, f"{root}/{split}", unit
        self.shard_rows, self.row_group_rows = shard_rows, row_group_rows
        self.k, self.rows, self.writer, self.files = 0, 0, None, []

    def write(self, t: pa.Table) -> None:
        while t.num_rows:
            if self.writer is None:
                path = f"{self.dir}/part-{self.unit:05d}-{self.k:04d}.parquet"
                self.writer = pq.ParquetWriter(path, t.schema, filesystem=self.fs, compression="snappy")
                self.files.append([path, 0])
            take = min(t.num_rows, self.shard_rows - self.rows)
            self.writer.write_table(t.slice(0, take), row_group_size=self.row_group_rows)
            self.rows += take
            self.files[-1][1] += take
            t = t.slice(take)
            if self.rows >= self.shard_rows:
                self.close()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer, self.rows, self.k = None, 0, self.k + 1


def _write_splits(
    prepared: pa.Table, assign: np.ndarray, writers: list[_ShardWriter], stats: list[dict[str, Any]], fs: FeatureSpace
) -> None:
    """Write each split's rows of a prepared chunk (in their order) and add up its statistics.

    One stable gather groups the rows by split (each split is then a zero-copy slice), and the
    out-of-vocabulary counts of every split come from one pass over each id column: a chunk is
    not filtered and scanned once per split."""
    counts = np.bincount(assign, minlength=len(SPLITS))
    order = np.argsort(assign, kind="stable")
    grouped = prepared.take(pa.array(order))
    label = np.asarray(grouped.column("label").to_numpy(), dtype=np.float64)
    _count_oov(stats, prepared, assign, fs)
    start = 0
    for s, n in enumerate(counts.tolist()):
        if n:
            writers[s].write(grouped.slice(start, n))
            stats[s]["rows"] += n
            stats[s]["label_sum"] += float(label[start : start + n].sum())
        start += n


def _count_oov(stats: list[dict[str, Any]], prepared: pa.Table, assign: np.ndarray, fspace: FeatureSpace) -> None:
    """Add each split's out-of-vocabulary and value counts per vocabulary feature (splits that
    have rows in this chunk only, as if each split's rows were counted on their own)."""
    present = np.bincount(assign, minlength=len(SPLITS)) > 0
    for name, state in fspace.states.items():
        oov = state.get("oov_id")
        if oov is None:
            continue
        col = prepared.column(name)
        col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
        owner = assign
        if pa.types.is_list(col.type):
            lengths = np.asarray(pc.list_value_length(col).to_numpy(zero_copy_only=False), dtype=np.int64)
            owner = np.repeat(assign, lengths)
            col = pc.list_flatten(col)
        ids = np.asarray(col.to_numpy(zero_copy_only=False), dtype=np.int64)
        oov_n = np.bincount(owner[ids == oov], minlength=len(SPLITS))
        val_n = np.bincount(owner, minlength=len(SPLITS))
        for s in np.flatnonzero(present).tolist():
            st = stats[s]
            st["oov"][name] = st["oov"].get(name, 0) + int(oov_n[s])
            st["values"][name] = st["values"].get(name, 0) + int(val_n[s])


@_errors_as_rows
def _write_task(
    batch: pa.Table, fspace: FeatureSpace, splitter: Splitter, columns: list[str], out: str, opts: dict[str, Any]
) -> pa.Table:
    # ``fspace`` arrives pickled with its look-up indexes already built by the driver
    # (``FeatureSpace.with_lookup_indexes``): no task parses the JSON or rebuilds them, a fixed
    # cost per task that grows with the vocabularies (profiled on a Criteo-shaped 250k-row unit:
    # about a fifth of the task)
    ofs, root = filesystem(out)
    keep_time = splitter.spec.time_column if splitter.spec.mode != "random" else None
    rows_meta: list[dict[str, Any]] = []
    for item in batch.to_pylist():
        unit = ReadUnit.from_item(item)
        writers = [_ShardWriter(ofs, root, s, unit.index, opts["shard_rows"], opts["row_group_rows"]) for s in SPLITS]
        stats = [{"rows": 0, "label_sum": 0.0, "skipped_rows": 0, "oov": {}, "values": {}} for _ in SPLITS]
        reasons: dict[str, int] = {}
        row, bad_parse = unit.row_offset, 0
        timing = {"task_s": time.perf_counter(), "transform_s": 0.0, "write_s": 0.0}
        for chunk, bad in read_unit(unit, columns, opts["chunk_rows"], opts["on_bad_rows"], opts["dict_columns"]):
            bad_parse += bad
            t0 = time.perf_counter()
            assign = splitter.assign(chunk, unit.file_index, row, unit.path)
            row += chunk.num_rows
            # one transform per chunk; the (much smaller) prepared rows are then split three ways
            prepared, info = fspace.transform_checked(
                chunk,
                require_label=True,
                on_bad_rows=opts["on_bad_rows"],
                where=unit.path,
                passthrough=(keep_time,) if keep_time else (),
            )
            if info.kept is not None:
                for s in range(3):
                    stats[s]["skipped_rows"] += int((assign[~info.kept] == s).sum())
                assign = assign[info.kept]
                for k, v in info.skipped.items():
                    reasons[k] = reasons.get(k, 0) + v
            t1 = time.perf_counter()
            timing["transform_s"] += t1 - t0
            _write_splits(prepared, assign, writers, stats, fspace)
            timing["write_s"] += time.perf_counter() - t1
        for w in writers:
            w.close()
        timing["task_s"] = time.perf_counter() - timing["task_s"]
        for s, name in enumerate(SPLITS):
            first = s == 0
            rows_meta.append(
                {
                    "unit": unit.index,
                    "split": name,
                    "files": writers[s].files,
                    "stats": stats[s],
                    "bad_parse": bad_parse if first else 0,
                    "reasons": reasons if first else {},
                    "timing": timing if first else {},
                }
            )
    blobs = [json.dumps(r, sort_keys=True).encode() for r in rows_meta]
    return pa.table({"key": pa.array(["meta"] * len(blobs)), "blob": pa.array(blobs, pa.binary())})


# ------------------------------------------------------------------ driver


def prepare(spec: FeatureSpec, opts: PrepareOptions, extend: FeatureSpace | None = None) -> dict[str, Any]:
    """Run the whole preparation; returns the manifest (also written to ``OUT/manifest.json``).

    ``extend``: a serving FeatureSpace to extend instead of fitting a new one (``widedeep retrain``,
    see ``widedeep.features.extend``): its ids are kept, the window's new values get new ids.
    """
    from widedeep import __version__
    from widedeep.ray_runtime import ensure_ray

    split = parse_split(opts.split)
    fmt = opts.format if opts.format != "auto" else spec.format
    fmt, units = plan_units(opts.inputs, fmt, opts.unit_rows)
    columns = needed_columns(spec, split)
    log.info("prepare: %d input unit(s) of format %s; split %s; columns %s", len(units), fmt, opts.split, columns)
    ignored = ignored_columns(units)
    for ig in ignored:
        log.warning("%s: ignoring columns %s (%s)", ig["file"], ig["columns"], ig["reason"])
    ensure_ray()
    t0 = time.perf_counter()
    ofs, root = _clear_output(opts.out)
    splitter = _time_pass(split, units, opts)
    fspace, read_rows, bad_parse = _fit_pass(spec, split, splitter, units, columns, opts, extend)
    t_fit = time.perf_counter() - t0
    log.info(
        "fit: %d rows read, %d train rows, %.1fs (%.0f rows/s)",
        read_rows,
        fspace.fit_info["train_rows"],
        t_fit,
        read_rows / max(t_fit, 1e-9),
    )
    fs_json = fspace.to_json()
    with ofs.open_output_stream(f"{root}/feature_space.json") as f:
        f.write(fs_json.encode("utf-8"))
    t1 = time.perf_counter()
    # the tasks get the space exactly as written (parsed back once here), look-up indexes built
    written = FeatureSpace.from_json(fs_json).with_lookup_indexes()
    metas = _write_pass(written, dictionary_columns(spec, split), splitter, units, columns, opts)
    t_write = time.perf_counter() - t1
    manifest = _manifest(spec, fspace, opts, fmt, metas, read_rows, bad_parse, __version__)
    manifest["ignored_columns"] = ignored
    total = time.perf_counter() - t0
    manifest_text = json.dumps(manifest, sort_keys=True, indent=1) + "\n"
    with ofs.open_output_stream(f"{root}/manifest.json") as f:
        f.write(manifest_text.encode("utf-8"))
    log.info(
        "prepare: %d rows in %.1fs (fit %.1fs, transform+write %.1fs): %.0f rows/s -> %s",
        read_rows,
        total,
        t_fit,
        t_write,
        read_rows / max(total, 1e-9),
        opts.out,
    )
    manifest["_timing"] = {"fit_s": t_fit, "write_s": t_write, "total_s": total}
    return manifest


def _clear_output(out: str) -> tuple[pafs.FileSystem, str]:
    """Create ``OUT/{train,valid,test}`` and delete their old shards: a rerun into the same
    directory must not leave stale shards behind."""
    ofs, root = filesystem(out)
    for s in SPLITS:
        ofs.create_dir(f"{root}/{s}", recursive=True)
        old = [i.path for i in ofs.get_file_info(pafs.FileSelector(f"{root}/{s}")) if i.path.endswith(".parquet")]
        for p in old:
            ofs.delete_file(p)
    return ofs, root


def _time_pass(split: SplitSpec, units: list[ReadUnit], opts: PrepareOptions) -> Splitter:
    """Pass 0 (time splits only): the global time cut-offs, or every user's; the splitter."""
    if split.mode == "random":
        return Splitter(split, opts.seed)
    ds = _units_dataset(units).map_batches(
        _time_task,
        batch_size=1,
        batch_format="pyarrow",
        fn_kwargs={"split": split, "chunk_rows": opts.chunk_rows, "on_bad_rows": opts.on_bad_rows},
    )
    pieces = [_from_ipc(b) for batch in iter_task_batches(ds) for b in batch.column("blob").to_pylist()]
    if split.mode == "time":
        k, c = sketch.merge([(p.column("key").to_numpy(), p.column("count").to_numpy()) for p in pieces])
        if not len(k):
            raise DataError(f"input is empty: {opts.inputs}")
        fr = split.fractions
        cuts = sketch.quantiles(k, c, np.array([fr[0], fr[0] + fr[1]]), _TIME_BITS)
        log.info("time split cut-offs on %s: valid from %s, test from %s", split.time_column, cuts[0], cuts[1])
        return Splitter(split, opts.seed, time_cuts=(float(cuts[0]), float(cuts[1])))
    if not pieces or sum(p.num_rows for p in pieces) == 0:
        raise DataError(f"input is empty: {opts.inputs}")
    t = pa.concat_tables(pieces)
    splitter = Splitter(
        split, opts.seed, users=user_cutoffs(t.column("user"), t.column("time").to_numpy(), split.fractions)
    )
    log.info("user-time split: cut-offs for %d users", len(splitter.users.users))  # type: ignore[union-attr]
    return splitter


def _fit_pass(
    spec: FeatureSpec,
    split: SplitSpec,
    splitter: Splitter,
    units: list[ReadUnit],
    columns: list[str],
    opts: PrepareOptions,
    extend: FeatureSpace | None,
) -> tuple[FeatureSpace, int, int]:
    """Pass 1: statistics of the train rows, merged on the driver -> (FeatureSpace, rows read,
    unparseable rows)."""
    acc = Accumulator(spec)
    ds = _units_dataset(units).map_batches(
        _fit_task,
        batch_size=1,
        batch_format="pyarrow",
        fn_kwargs={
            "spec_doc": spec.to_dict(),
            "splitter": splitter,
            "columns": columns,
            "chunk_rows": opts.chunk_rows,
            "on_bad_rows": opts.on_bad_rows,
            "dict_columns": dictionary_columns(spec, split),
        },
    )
    t_merge = 0.0
    for batch in iter_task_batches(ds):
        tm = time.perf_counter()
        acc.add(batch)
        t_merge += time.perf_counter() - tm
    read_rows = int(acc._sum("read", "n"))
    log.info(
        "fit tasks: %.1fs in tasks (%.1fs statistics, rest reading); driver merge %.1fs",
        acc._sum("read", "task_s"),
        acc._sum("read", "stats_s"),
        t_merge,
    )
    if read_rows == 0:
        raise DataError(f"input is empty: no rows in {opts.inputs}")
    fspace = acc.finish()
    if extend is not None:
        fspace = extend_space(extend, fspace)
        log.info(
            "extended the serving FeatureSpace %s: new values %s",
            extend.content_hash[:12],
            fspace.fit_info["window"]["new_values"] or "none",
        )
    return fspace, read_rows, int(acc._sum("read", "bad_parse"))


def _write_pass(
    fspace: FeatureSpace,
    dict_columns: list[str],
    splitter: Splitter,
    units: list[ReadUnit],
    columns: list[str],
    opts: PrepareOptions,
) -> list[dict[str, Any]]:
    """Pass 2: every unit read again, transformed and written as its splits' shards; returns the
    per-(unit, split) metadata the manifest is made of."""
    t1 = time.perf_counter()
    wopts = {
        "shard_rows": opts.shard_rows,
        "row_group_rows": opts.row_group_rows,
        "chunk_rows": opts.chunk_rows,
        "on_bad_rows": opts.on_bad_rows,
        "dict_columns": dict_columns,
    }
    ds = _units_dataset(units).map_batches(
        _write_task,
        batch_size=1,
        batch_format="pyarrow",
        fn_kwargs={
            "fspace": fspace,
            "splitter": splitter,
            "columns": columns,
            "out": opts.out,
            "opts": wopts,
        },
    )
    metas: list[dict[str, Any]] = []
    for batch in iter_task_batches(ds):
        metas.extend(json.loads(m) for m in batch.column("blob").to_pylist())
        rows = sum(m["stats"]["rows"] for m in metas)
        log.info(
            "write: %d/%d units, %d rows, %.0f rows/s",
            len({m["unit"] for m in metas}),
            len(units),
            rows,
            rows / max(time.perf_counter() - t1, 1e-9),
        )
    tt = {k: sum(m.get("timing", {}).get(k, 0.0) for m in metas) for k in ("task_s", "transform_s", "write_s")}
    log.info(
        "write tasks: %.1fs in tasks (%.1fs split+transform, %.1fs Parquet writing, rest reading)",
        tt["task_s"],
        tt["transform_s"],
        tt["write_s"],
    )
    return metas


def _manifest(
    spec: FeatureSpec,
    fspace: FeatureSpace,
    opts: PrepareOptions,
    fmt: str,
    metas: list[dict],
    read_rows: int,
    bad_parse: int,
    version: str,
) -> dict[str, Any]:
    metas = sorted(metas, key=lambda m: (m["unit"], m["split"]))
    splits: dict[str, Any] = {}
    oov_rate: dict[str, dict[str, float]] = {}
    skipped_total: dict[str, int] = {}
    for s in SPLITS:
        ms = [m for m in metas if m["split"] == s]
        files = [f for m in ms for f in m["files"]]
        rows = sum(m["stats"]["rows"] for m in ms)
        lsum = sum(m["stats"]["label_sum"] for m in ms)
        oov: dict[str, int] = {}
        vals: dict[str, int] = {}
        skipped = sum(m["stats"]["skipped_rows"] for m in ms)
        for m in ms:
            for k, v in m.get("reasons", {}).items():
                skipped_total[k] = skipped_total.get(k, 0) + v
            for k, v in m["stats"]["oov"].items():
                oov[k] = oov.get(k, 0) + v
            for k, v in m["stats"]["values"].items():
                vals[k] = vals.get(k, 0) + v
        splits[s] = {
            "rows": rows,
            "shards": len(files),
            "files": [{"path": "/".join(p.rsplit("/", 2)[-2:]), "rows": r} for p, r in files],
            "label_rate": round(lsum / rows, 6) if rows else None,
            "skipped_rows": skipped,
        }
        for k in vals:
            oov_rate.setdefault(k, {})[s] = round(oov.get(k, 0) / vals[k], 6) if vals[k] else 0.0
    if bad_parse:
        skipped_total["unparseable row"] = bad_parse
    return {
        "kind": MANIFEST_KIND,
        "version": 1,
        "widedeep_version": version,
        "spec_name": spec.name,
        "spec_hash": spec.hash,
        "feature_space_hash": fspace.content_hash,
        "inputs": list(opts.inputs),
        "format": fmt,
        "split": opts.split,
        "seed": opts.seed,
        "on_bad_rows": opts.on_bad_rows,
        "shard_rows": opts.shard_rows,
        "row_group_rows": opts.row_group_rows,
        "rows_read": read_rows,
        "rows_written": sum(splits[s]["rows"] for s in SPLITS),
        "skipped_rows": {"total": sum(skipped_total.values()), "by_reason": skipped_total},
        "splits": splits,
        "oov_rate": oov_rate,
        "user_key": spec.user_key,
        "item_key": spec.item_key,
        "time_column": parse_split(opts.split).time_column,
    }
