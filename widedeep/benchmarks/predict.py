"""``widedeep bench predict``: Ray Data batch scoring against the same job in one process.

The data: ``rows`` generated Criteo-shaped rows (13 integer, 26 categorical columns;
``widedeep.data.generate.criteo_like_table``) in Parquet shards; the model: a Wide & Deep ranker
on ``platform/specs/criteo.yaml`` with its FeatureSpace fitted on the first ``fit_rows`` rows,
saved as a checkpoint (weights as initialised: scoring cost does not depend on their values).

Contenders, on the same rows in the same run, writing the same outputs:

* ``ray``: ``widedeep.batch.predict.predict`` (actor pool, one torch thread per actor);
* ``inprocess``: ``predict_in_process``: the same reader, transform, model and batch size, in this
  process, under ``torch.no_grad`` with torch's default threads; what one would run without Ray.

Also printed: the model's own scoring rate on already-prepared batches of the same size (no
reading, transform or writing), the ceiling of one process. ``ray_over_inprocess`` is the ratio
of the two end-to-end rates.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class PredictBenchConfig:
    """What ``widedeep bench predict`` measures (its flags)."""

    rows: int = 2_000_000
    cardinality: int = 200_000
    shard_rows: int = 250_000
    fit_rows: int = 200_000
    batch_size: int = 8192
    hidden: tuple[int, ...] = (256, 128)
    workers: int = 0
    model_only_rows: int = 262_144


def build_checkpoint(work: Path, cfg: PredictBenchConfig) -> Path:
    """A ranking checkpoint on the Criteo spec (FeatureSpace fitted on generated rows)."""
    import torch

    from widedeep.data.generate import criteo_like_table
    from widedeep.features import load_spec
    from widedeep.features.fit import fit_tables
    from widedeep.model.checkpoint import save_checkpoint
    from widedeep.model.wide_deep import ModelConfig, WideAndDeep

    torch.manual_seed(0)
    fs = fit_tables(load_spec(ROOT / "platform" / "specs" / "criteo.yaml"), [criteo_like_table(cfg.fit_rows, 0, 1)])
    model = WideAndDeep(fs, ModelConfig(hidden=list(cfg.hidden)), seed=0).eval()
    return save_checkpoint(
        work / "checkpoint",
        model=model,
        optimizer=None,
        feature_space=fs,
        config={"task": "ranking", "model": {"hidden": list(cfg.hidden)}},
        metrics={},
        task="ranking",
        state={"epoch": 0},
    )


def model_only_rate(checkpoint: Path, raw_dir: Path, cfg: PredictBenchConfig) -> float:
    """Rows/s of the model alone (collate + forward, no_grad) on prepared batches of ``batch_size``."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    from widedeep.batch.scorers import CheckpointScorer

    scorer = CheckpointScorer(str(checkpoint))
    ds = pads.dataset(str(raw_dir), format="parquet")
    batches = []
    for rb in ds.to_batches(batch_size=cfg.batch_size):
        batches.append(scorer.fs.transform(pa.Table.from_batches([rb]), require_label=False))
        if sum(b.num_rows for b in batches) >= cfg.model_only_rows:
            break
    scorer.scores(batches[0])  # warm-up
    t0 = time.perf_counter()
    n = sum(len(scorer.scores(b)) for b in batches)
    return n / (time.perf_counter() - t0)


def _warm(batch: dict) -> dict:
    import torch  # noqa: F401

    import widedeep.batch.predict  # noqa: F401  (what every predict actor imports once)

    return batch


def warm_ray() -> None:
    """Start Ray's worker processes with torch and widedeep imported, as a long-lived cluster has them."""
    import ray
    import ray.data

    n = max(1, int(ray.cluster_resources().get("CPU", 1)))
    ray.data.range(n, override_num_blocks=n).map_batches(_warm, batch_size=1).materialize()


def run_predict_bench(work: Path, cfg: PredictBenchConfig) -> dict[str, Any]:
    """Generate, build the model, run both contenders; the figures (and ``_lines`` to print)."""
    import pyarrow.parquet as pq

    from widedeep.batch.predict import PredictOptions, predict, predict_in_process
    from widedeep.data.bench import generate_criteo_parquet
    from widedeep.ray_runtime import ensure_ray

    lines: list[str] = []
    raw = work / "raw"
    gen_s = generate_criteo_parquet(raw, cfg.rows, cfg.cardinality, cfg.shard_rows)
    ck = build_checkpoint(work, cfg)
    lines.append(f"data: {cfg.rows:,} Criteo-shaped rows in {gen_s:.1f}s; model: Wide & Deep {list(cfg.hidden)}")
    ensure_ray()
    t_w = time.perf_counter()
    warm_ray()
    lines.append(f"ray: worker processes warmed in {time.perf_counter() - t_w:.1f}s (not counted)")

    def opts(out: str) -> PredictOptions:
        return PredictOptions(
            inputs=[str(raw)],
            model=str(ck),
            out=str(work / out),
            keys=("label",),
            format="parquet",
            batch_size=cfg.batch_size,
            unit_rows=min(cfg.shard_rows, 131_072),
            workers=cfg.workers,
        )

    t0 = time.perf_counter()
    m_ray = predict(opts("ray"))
    ray_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    m_in = predict_in_process(opts("inprocess"))
    in_s = time.perf_counter() - t0
    model_rate = model_only_rate(ck, raw, cfg)
    for m, name in ((m_ray, "ray"), (m_in, "inprocess")):
        if m["rows_written"] != cfg.rows:
            raise RuntimeError(f"{name}: wrote {m['rows_written']} rows of {cfg.rows}")
    a = pq.read_table(work / "ray", columns=["score"]).column("score").to_numpy()
    b = pq.read_table(work / "inprocess", columns=["score"]).column("score").to_numpy()
    max_diff = float(np.max(np.abs(a - b)))
    res: dict[str, Any] = {
        "rows": cfg.rows,
        "batch_size": cfg.batch_size,
        "cpus": os.cpu_count(),
        "ray_rows_per_s": cfg.rows / ray_s,
        "ray_s": ray_s,
        "inprocess_rows_per_s": cfg.rows / in_s,
        "inprocess_s": in_s,
        "model_only_rows_per_s": model_rate,
        "ray_over_inprocess": (cfg.rows / ray_s) / (cfg.rows / in_s),
        "max_abs_score_difference": max_diff,
    }
    lines.append(
        f"predict on Ray Data (actor pool, read + transform + score + write): {ray_s:.1f}s = "
        f"{res['ray_rows_per_s']:,.0f} rows/s"
    )
    lines.append(
        f"in-process contender (same reader, transform, model, batch {cfg.batch_size}, no_grad, writes): "
        f"{in_s:.1f}s = {res['inprocess_rows_per_s']:,.0f} rows/s"
    )
    lines.append(f"model alone on prepared batches (collate + forward, 1 process): {model_rate:,.0f} rows/s")
    lines.append(f"ray_over_inprocess: {res['ray_over_inprocess']:.2f} (target >= 0.8); scores equal to {max_diff:.1e}")
    res["_lines"] = lines
    return res
