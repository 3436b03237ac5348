"""The prepare benchmark and its pandas baseline (one implementation, used by the CLI).

Why a pandas baseline: "is Ray Data worth it on this machine?" is answered only by a plain
single-process implementation of the same work measured in the same run: fit (vocabulary with
min_count, quantile boundaries) on the training rows, transform every row into ids / CDF
values, and write Parquet.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from widedeep.data.generate import criteo_like_table
from widedeep.paths import platform_path


class PeakRSS:
    """Samples the resident memory of this process and all its descendants (Ray's workers)."""

    def __init__(self, interval: float = 0.2):
        self.interval, self.peak_self, self.peak_tree = interval, 0, 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        import psutil

        me = psutil.Process()
        while not self._stop.is_set():
            try:
                own = me.memory_info().rss
                tree = own
                for c in me.children(recursive=True):
                    try:
                        tree += c.memory_info().rss
                    except psutil.Error:
                        pass
                self.peak_self, self.peak_tree = max(self.peak_self, own), max(self.peak_tree, tree)
            except psutil.Error:
                pass
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRSS:
        self._t.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._t.join()


def generate_criteo_parquet(out: Path, rows: int, cardinality: int, shard_rows: int, seed: int = 0) -> float:
    """Write Criteo-shaped Parquet shards; returns seconds."""
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for k, start in enumerate(range(0, rows, shard_rows)):
        n = min(shard_rows, rows - start)
        pq.write_table(
            criteo_like_table(n, start, seed, cardinality), out / f"part-{k:05d}.parquet", row_group_size=65_536
        )
    return time.perf_counter() - t0


def pandas_prepare(inp: Path, out: Path, spec_path: Path) -> float:
    """Single-process pandas: fit on the train rows (80 %), transform all, write one Parquet file."""
    import pandas as pd

    from widedeep.features import load_spec
    from widedeep.features.spec import CategoricalFeature, CrossedFeature, NumericFeature

    spec = load_spec(spec_path)
    t0 = time.perf_counter()
    df = pd.read_parquet(inp)
    rng = np.random.default_rng(0)
    train = df[rng.random(len(df)) < 0.8]
    res = {}
    for f in spec.features:
        if isinstance(f, CategoricalFeature):
            vc = train[f.name].value_counts()
            vc = vc[vc >= f.min_count]
            vocab = pd.Index(vc.index)
            ids = vocab.get_indexer(df[f.name])
            res[f.name] = np.where(ids < 0, len(vocab), ids).astype(np.int64)
        elif isinstance(f, NumericFeature):
            x = np.log1p(np.clip(df[f.name].to_numpy(dtype=np.float64, na_value=0.0), 0, 1e12))
            xt = np.log1p(np.clip(train[f.name].to_numpy(dtype=np.float64, na_value=0.0), 0, 1e12))
            b = np.unique(np.quantile(xt, np.arange(1, f.n_quantiles) / f.n_quantiles))
            res[f.name] = (np.searchsorted(b, x, side="right") / len(b)).astype(np.float32)
        elif isinstance(f, CrossedFeature):
            key = res[f.inputs[0]].astype(np.uint64)
            for i in f.inputs[1:]:
                key = pd.util.hash_array(key * np.uint64(1_000_003) + res[i].astype(np.uint64))
            res[f.name] = (key % np.uint64(f.hash_buckets)).astype(np.int64)
    res["label"] = df["label"].to_numpy(dtype=np.float32)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(res).to_parquet(out / "part-0.parquet", index=False)
    return time.perf_counter() - t0


def _warm(batch: dict) -> dict:
    import widedeep.data.prepare  # noqa: F401  (the imports every prepare task pays once)

    return batch


def _warm_workers() -> None:
    """Start Ray's worker processes and import widedeep in them, as a long-lived cluster would have."""
    import ray
    import ray.data

    n = max(1, int(ray.cluster_resources().get("CPU", 1)))
    ray.data.range(n, override_num_blocks=n).map_batches(_warm, batch_size=1).materialize()


def run_prepare_bench(work: Path, rows: int, cardinality: int, shard_rows: int, pandas: bool = True) -> dict[str, Any]:
    from widedeep.data.prepare import PrepareOptions, prepare
    from widedeep.features import load_spec
    from widedeep.ray_runtime import ensure_ray

    spec_path = platform_path("specs", "criteo.yaml")
    spec = load_spec(spec_path)
    raw = work / "raw"
    lines = []
    with PeakRSS():
        gen_s = generate_criteo_parquet(raw, rows, cardinality, shard_rows)
    lines.append(f"generate: {rows:,} Criteo-shaped rows in {gen_s:.1f}s = {rows / gen_s:,.0f} rows/s (1 process)")
    ensure_ray()  # started before timing: Ray start-up is not preparation work
    t_w = time.perf_counter()
    _warm_workers()
    lines.append(
        f"ray: local instance + worker processes warmed in {time.perf_counter() - t_w:.1f}s (not counted below)"
    )
    opts = PrepareOptions(inputs=[str(raw)], out=str(work / "prepared"), format="parquet", unit_rows=shard_rows)
    with PeakRSS() as mem:
        t0 = time.perf_counter()
        m = prepare(spec, opts)
        prep_s = time.perf_counter() - t0
    res: dict[str, Any] = {
        "rows": rows,
        "cardinality": cardinality,
        "cpus": os.cpu_count(),
        "generate_rows_per_s": rows / gen_s,
        "prepare_rows_per_s": rows / prep_s,
        "prepare_s": prep_s,
        "fit_s": m["_timing"]["fit_s"],
        "transform_write_s": m["_timing"]["write_s"],
        "peak_rss_driver_mb": mem.peak_self / 2**20,
        "peak_rss_tree_mb": mem.peak_tree / 2**20,
    }
    lines.append(
        f"prepare (Ray Data: fit {res['fit_s']:.1f}s + transform/write {res['transform_write_s']:.1f}s): "
        f"{prep_s:.1f}s = {res['prepare_rows_per_s']:,.0f} rows/s; "
        f"peak RSS driver {res['peak_rss_driver_mb']:.0f} MiB, "
        f"driver+Ray workers {res['peak_rss_tree_mb']:.0f} MiB"
    )
    if pandas:
        with PeakRSS() as mem_pd:
            pd_s = pandas_prepare(raw, work / "pandas", spec_path)
        res["pandas_rows_per_s"] = rows / pd_s
        res["pandas_s"] = pd_s
        res["pandas_peak_rss_mb"] = mem_pd.peak_self / 2**20
        res["speedup_vs_pandas"] = res["prepare_rows_per_s"] / res["pandas_rows_per_s"]
        lines.append(
            f"pandas baseline (1 process, same fit + transform + write): {pd_s:.1f}s = "
            f"{res['pandas_rows_per_s']:,.0f} rows/s; peak RSS {res['pandas_peak_rss_mb']:.0f} MiB"
        )
        lines.append(f"speedup vs pandas: {res['speedup_vs_pandas']:.2f}x (targets: >= 200k rows/s and >= 2x)")
    res["_lines"] = lines
    return res
