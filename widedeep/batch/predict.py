"""``widedeep predict``: score the rows of Parquet / CSV / Criteo / MovieLens inputs with a
checkpoint or a bundle, on Ray Data, into Parquet of the key columns asked for plus ``score``.

Pipeline::

    inputs -> read units (``widedeep.data.sources.plan_units``: Parquet by row groups, other files whole)
           -> Ray Data ``map_batches`` over an actor pool (``PredictWorker``; CPU or GPU): each actor
              loads the model once, streams its unit in chunks of ``batch_size`` rows
              (``read_unit``), runs the one transform (``FeatureSpace.transform_checked``), scores
              the chunk and appends it to ``OUT/part-<unit>.parquet``
           -> one small stats row per chunk back to the driver: progress, then ``OUT/_predict.json``

Why the same read units and bad-row handling as ``prepare``: a row ``prepare`` would reject is
rejected here for the same reason, with the same message naming the file, column and value;
``--on-bad-rows skip`` drops and counts it (``_predict.json``: ``skipped_rows``). Memory is
bounded by a chunk per actor, not by the input. Why actors write their own files rather than
``Dataset.write_parquet``: the driver gets exact per-unit row and skip counts in the same pass,
and file names are deterministic (a rerun replaces them). ``predict_in_process`` runs the same
per-unit code in this process: the benchmark's contender.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from widedeep.batch.scorers import load_scorer
from widedeep.data.prepare import iter_task_batches
from widedeep.data.sources import ReadUnit, filesystem, plan_units, read_unit
from widedeep.errors import DataError, WidedeepError
from widedeep.features.spec import CategoricalFeature, feature_column

log = logging.getLogger(__name__)

MANIFEST = "_predict.json"  # "_" first: directory readers (ours, pyarrow's, Ray's) skip it
MANIFEST_KIND = "widedeep.predictions"
SCORE = "score"


@dataclass(frozen=True)
class PredictOptions:
    """Knobs of one ``predict`` run (CLI flags map 1:1)."""

    inputs: list[str]
    model: str
    out: str
    keys: tuple[str, ...] = ()
    format: str = "auto"
    on_bad_rows: str = "error"
    batch_size: int = 8192
    unit_rows: int = 131_072
    workers: int = 0  # 0: as many as the cluster's CPUs (GPUs) allow, at most one per unit
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0

    def __post_init__(self) -> None:
        if self.on_bad_rows not in ("error", "skip"):
            raise DataError(f"--on-bad-rows must be error or skip, got {self.on_bad_rows!r}")
        for k in ("batch_size", "unit_rows", "cpus_per_worker"):
            if getattr(self, k) <= 0:
                raise DataError(f"{k}: must be > 0, got {getattr(self, k)}")
        if self.workers < 0 or self.gpus_per_worker < 0:
            raise DataError("workers and gpus_per_worker must be >= 0")
        if SCORE in self.keys:
            raise DataError(f"--keys: {SCORE!r} is the output's score column; it cannot also be a key column")

    @property
    def device(self) -> str:
        return "cuda" if self.gpus_per_worker > 0 else "cpu"


class UnitScorer:
    """Reads, transforms, scores and writes read units; one per actor (or one in process)."""

    def __init__(self, opts: PredictOptions) -> None:
        self.opts = opts
        self.scorer = load_scorer(opts.model, opts.device)
        self.fs = self.scorer.fs
        feats = self.fs.raw_input_columns(side=None)
        self.columns = list(dict.fromkeys([*feats, *opts.keys]))
        other = {feature_column(f) for f in self.fs.features if not isinstance(f, CategoricalFeature)}
        other |= set(opts.keys)
        cats = [feature_column(f) for f in self.fs.features if isinstance(f, CategoricalFeature)]
        self.dictionary_columns = [c for c in cats if c and c not in other]

    def score_chunk(self, chunk: pa.Table, where: str) -> tuple[pa.Table, dict[str, int]]:
        """Key columns + ``score`` of the chunk's good rows, and the rows skipped by reason."""
        missing = [k for k in self.opts.keys if k not in chunk.column_names]
        if missing:
            raise DataError(f"{where}: key column(s) {missing} not in the input (columns: {chunk.column_names})")
        prepared, info = self.fs.transform_checked(
            chunk, require_label=False, on_bad_rows=self.opts.on_bad_rows, where=where
        )
        keys = chunk.select(list(self.opts.keys))
        if info.kept is not None:
            keys = keys.filter(pa.array(info.kept))
        scores = pa.array(self.scorer.scores(prepared), pa.float32())
        return keys.append_column(SCORE, scores), dict(info.skipped)

    def run_unit(self, unit: ReadUnit) -> Iterator[dict[str, Any]]:
        """Stream one unit into ``OUT/part-<unit>.parquet``; a stats dict per chunk."""
        ofs, root = filesystem(self.opts.out)
        path = f"{root}/part-{unit.index:05d}.parquet"
        writer = None
        try:
            for chunk, bad in read_unit(
                unit, self.columns, self.opts.batch_size, self.opts.on_bad_rows, self.dictionary_columns
            ):
                t0 = time.perf_counter()
                scored, skipped = self.score_chunk(chunk, unit.path)
                if bad:
                    skipped["unparseable row"] = bad
                if writer is None:
                    writer = pq.ParquetWriter(path, scored.schema, filesystem=ofs, compression="snappy")
                writer.write_table(scored)
                yield {
                    "unit": unit.index,
                    "file": path.rsplit("/", 1)[-1],
                    "rows_read": chunk.num_rows + bad,
                    "rows_written": scored.num_rows,
                    "skipped": skipped,
                    "seconds": time.perf_counter() - t0,
                }
        finally:
            if writer is not None:
                writer.close()


class PredictWorker:
    """The Ray Data actor: a ``UnitScorer`` built once; each input row is a read unit.

    A widedeep error comes back as an ``error`` row (``widedeep.data.prepare.raise_task_error``
    re-raises it on the driver with its class and message) instead of a wrapped Ray exception.
    """

    def __init__(self, opts: PredictOptions) -> None:
        import torch

        torch.set_num_threads(max(1, int(opts.cpus_per_worker)))  # the actor's share of the node
        self.units = UnitScorer(opts)

    def __call__(self, batch: pa.Table) -> Iterator[pa.Table]:
        for item in batch.to_pylist():
            unit = ReadUnit.from_item(item)
            try:
                for stats in self.units.run_unit(unit):
                    yield _row("chunk", stats)
            except WidedeepError as e:
                msg = str(e) if unit.path in str(e) else f"{unit.path}: {e}"
                yield _row("error", {"error": type(e).__name__, "message": msg})
                return


def _row(key: str, doc: dict[str, Any]) -> pa.Table:
    return pa.table({"key": pa.array([key]), "blob": pa.array([json.dumps(doc).encode()], pa.binary())})


def _clear_outputs(out: str) -> None:
    """Create ``out``; remove the part files of an earlier run (a rerun must not mix outputs)."""
    import pyarrow.fs as pafs

    ofs, root = filesystem(out)
    ofs.create_dir(root, recursive=True)
    for info in ofs.get_file_info(pafs.FileSelector(root)):
        name = info.path.rsplit("/", 1)[-1]
        if name == MANIFEST or (name.startswith("part-") and name.endswith(".parquet")):
            ofs.delete_file(info.path)


class _Progress:
    """Logs rows scored and the rate every ``every_s`` seconds (and at the end)."""

    def __init__(self, units: list[ReadUnit], every_s: float = 5.0) -> None:
        known = [u.rows for u in units]
        self.total = sum(r for r in known if r is not None) if all(r is not None for r in known) else None
        self.t0 = self.last = time.perf_counter()
        self.every_s, self.rows, self.stats = every_s, 0, []

    def add(self, stats: dict[str, Any]) -> None:
        self.stats.append(stats)
        self.rows += stats["rows_read"]
        now = time.perf_counter()
        if now - self.last >= self.every_s:
            self.last = now
            of = f"/{self.total:,}" if self.total else ""
            log.info("predict: %s%s rows, %.0f rows/s", f"{self.rows:,}", of, self.rows / max(now - self.t0, 1e-9))


def _manifest(opts: PredictOptions, fmt: str, stats: list[dict[str, Any]], seconds: float) -> dict[str, Any]:
    files: dict[str, int] = {}
    skipped: dict[str, int] = {}
    for s in stats:
        files[s["file"]] = files.get(s["file"], 0) + s["rows_written"]
        for k, v in s["skipped"].items():
            skipped[k] = skipped.get(k, 0) + v
    rows_read = sum(s["rows_read"] for s in stats)
    return {
        "kind": MANIFEST_KIND,
        "model": opts.model,
        "inputs": list(opts.inputs),
        "format": fmt,
        "keys": list(opts.keys),
        "score": SCORE,
        "on_bad_rows": opts.on_bad_rows,
        "rows_read": rows_read,
        "rows_written": sum(files.values()),
        "skipped_rows": {"total": sum(skipped.values()), "by_reason": skipped},
        "files": [{"path": f, "rows": n} for f, n in sorted(files.items())],
        "seconds": round(seconds, 3),
        "rows_per_s": round(rows_read / max(seconds, 1e-9), 1),
    }


def _write_manifest(opts: PredictOptions, manifest: dict[str, Any]) -> None:
    ofs, root = filesystem(opts.out)
    with ofs.open_output_stream(f"{root}/{MANIFEST}") as f:
        f.write((json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode())


def _workers(opts: PredictOptions, n_units: int) -> int:
    """The actor pool's size: ``--workers``, else as many as the CPUs (GPUs) fit, one per read unit at most."""
    import ray

    from widedeep.ray_runtime import compute_cpus

    if opts.workers:
        return min(opts.workers, n_units)
    res = ray.cluster_resources()
    if opts.gpus_per_worker > 0:
        fit = int(res.get("GPU", 0) / opts.gpus_per_worker)
        if fit < 1:
            raise DataError(f"--gpus-per-worker {opts.gpus_per_worker}: the Ray cluster has no GPU")
    else:
        fit = int(compute_cpus() / opts.cpus_per_worker)
    return max(1, min(fit, n_units))


def predict(opts: PredictOptions) -> dict[str, Any]:
    """Score every row of ``opts.inputs`` on Ray Data; returns the manifest (also ``OUT/_predict.json``)."""
    import ray.data

    from widedeep.ray_runtime import ensure_ray

    fmt, units = plan_units(opts.inputs, opts.format, opts.unit_rows)
    ensure_ray()
    _clear_outputs(opts.out)
    workers = _workers(opts, len(units))
    log.info("predict: %d read unit(s) of format %s, %d %s worker(s)", len(units), fmt, workers, opts.device)
    t0 = time.perf_counter()
    ds = ray.data.from_items([u.to_item() for u in units], override_num_blocks=max(1, len(units)))
    ds = ds.map_batches(
        PredictWorker,
        fn_constructor_kwargs={"opts": opts},
        batch_size=1,
        batch_format="pyarrow",
        # one unit per actor at a time: a unit is seconds of work, and an actor that starts first
        # must not queue units that idle actors could take (Ray Data's default queues 4)
        compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1),
        num_cpus=opts.cpus_per_worker,
        num_gpus=opts.gpus_per_worker or None,
    )
    progress = _Progress(units)
    for batch in iter_task_batches(ds):
        for blob in batch.column("blob").to_pylist():
            progress.add(json.loads(blob))
    m = _manifest(opts, fmt, progress.stats, time.perf_counter() - t0)
    _write_manifest(opts, m)
    log.info(
        "predict: %s rows scored, %s skipped, in %.1fs (%.0f rows/s) -> %s",
        f"{m['rows_written']:,}",
        f"{m['skipped_rows']['total']:,}",
        m["seconds"],
        m["rows_per_s"],
        opts.out,
    )
    return m


def predict_in_process(opts: PredictOptions) -> dict[str, Any]:
    """The same job without Ray: every unit in this process, one after the other (same reader,
    transform, model, batch size and output files). The benchmark's contender."""
    fmt, units = plan_units(opts.inputs, opts.format, opts.unit_rows)
    _clear_outputs(opts.out)
    t0 = time.perf_counter()
    scorer = UnitScorer(opts)
    stats = [s for u in units for s in scorer.run_unit(u)]
    m = _manifest(opts, fmt, stats, time.perf_counter() - t0)
    _write_manifest(opts, m)
    return m
