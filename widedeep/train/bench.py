"""``widedeep bench train``: the Wide & Deep training step against a plain PyTorch W&D, and the
full streaming pipeline, on generated Criteo-shaped data (13 numeric, 26 categorical).

Three figures, measured in the same run on the same machine:

(a) ``model_step``: ``WideAndDeep`` (fused table-batched embedding bags with FTRL / row-wise
    Adagrad in backward, MLP with Adam), one process, in-memory pre-collated batches;
(b) ``plain_torch``: the same architecture written the obvious way — one ``nn.EmbeddingBag`` per
    table and side, the same MLP, one ``torch.optim.Adam`` over everything (dense gradients for
    every table row, every step) — on the same batches;
(c) ``pipeline``: ``widedeep train`` itself (Ray Train, one worker) streaming the prepared
    Parquet through Ray Data and the collate; its steady-state samples/s (from the end of the
    first batch to the end of the epoch, i.e. without Ray start-up) and its end-to-end figure.

The data is generated and prepared in-process with the FeatureSpace API (fit on the train rows,
one transform) so the benchmark needs no earlier step.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from widedeep.train.loop import log

ROOT = Path(__file__).resolve().parents[2]


def prepare_criteo(out: Path, rows: int, valid_rows: int, files: int, seed: int = 0, buckets: int = 0) -> Path:
    """Generated Criteo-shaped raw rows -> a prepared directory (platform/specs/criteo.yaml).

    ``buckets > 0`` hashes every categorical into that many rows instead of fitting a vocabulary
    (what production CTR models do with Criteo's multi-million-value columns): it sets the
    table sizes, which is what the plain baseline's dense gradients + Adam pay for every step.
    """
    import pyarrow.parquet as pq
    import yaml

    from widedeep.data.generate import criteo_like_table
    from widedeep.features import parse_spec
    from widedeep.features.fit import fit_tables

    if (out / "feature_space.json").exists():
        return out
    doc = yaml.safe_load((ROOT / "platform" / "specs" / "criteo.yaml").read_text())
    if buckets:
        for f in doc["features"]:
            if f.get("kind") == "categorical":
                f.pop("min_count", None)
                f["hash_buckets"] = buckets
    spec = parse_spec(doc)
    raw = criteo_like_table(rows + valid_rows, 0, seed)
    train, valid = raw.slice(0, rows), raw.slice(rows)
    fs = fit_tables(spec, [train])
    for name, t in (("train", train), ("valid", valid)):
        (out / name).mkdir(parents=True, exist_ok=True)
        pt = fs.transform(t)
        bounds = np.linspace(0, pt.num_rows, (files if name == "train" else 1) + 1).astype(int)
        for i in range(len(bounds) - 1):
            pq.write_table(
                pt.slice(bounds[i], bounds[i + 1] - bounds[i]),
                out / name / f"part-{i:05d}.parquet",
                row_group_size=16384,
            )
    (out / "feature_space.json").write_text(fs.to_json())
    return out


class PlainWideDeep(nn.Module):
    """The baseline: per-table ``nn.EmbeddingBag`` (dense gradients), same MLP, one Adam."""

    def __init__(self, fs: Any, hidden: list[int]) -> None:
        super().__init__()
        from widedeep.model.mlp import MLP

        self.wide = nn.ModuleList(nn.EmbeddingBag(t.num_rows, 1, mode="sum") for t in fs.wide_tables)
        for e in self.wide:
            nn.init.zeros_(e.weight)
        self.deep = nn.ModuleList(nn.EmbeddingBag(t.num_rows, t.dim, mode=t.pooling) for t in fs.deep_tables)
        for e in self.deep:
            nn.init.normal_(e.weight, 0.0, 0.01)
        self.bias = nn.Parameter(torch.zeros(1))
        self.mlp = MLP(sum(t.dim for t in fs.deep_tables) + len(fs.dense_columns), hidden)

    @staticmethod
    def _per_table(jagged: Any, n_tables: int, b: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        out = []
        for t in range(n_tables):
            offs = jagged.offsets[t * b : (t + 1) * b + 1]
            out.append((jagged.values[offs[0] : offs[-1]], offs[:-1] - offs[0]))
        return out

    def forward(self, batch: Any) -> torch.Tensor:
        b = batch.batch_size
        wide_in = self._per_table(batch.wide, len(self.wide), b)
        wide = sum(e(v, o).squeeze(1) for e, (v, o) in zip(self.wide, wide_in, strict=True))
        deep = [e(v, o) for e, (v, o) in zip(self.deep, self._per_table(batch.deep, len(self.deep), b), strict=False)]
        x = torch.cat([*deep, batch.dense], dim=1)
        return wide + self.bias + self.mlp(x).squeeze(1)


def _time_steps(step: Any, batches: list[Any], warmup: int, steps: int, repeats: int) -> float:
    for i in range(warmup):
        step(batches[i % len(batches)])
    rates = []
    bs = batches[0].batch_size
    for _ in range(repeats):
        t0 = time.perf_counter()
        for i in range(steps):
            step(batches[i % len(batches)])
        rates.append(steps * bs / (time.perf_counter() - t0))
    return statistics.median(rates)


def run_bench(
    *,
    rows: int,
    batch_size: int,
    hidden: list[int],
    steps: int,
    repeats: int,
    warmup: int,
    workdir: str | None,
    pipeline: bool,
    threads: int,
    buckets: int = 0,
) -> dict[str, Any]:
    import pyarrow.dataset as pads

    from widedeep.features import FeatureSpace
    from widedeep.train.config import load_train_config
    from widedeep.train.tasks import get_task

    torch.set_num_threads(threads)
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="widedeep-bench-train-"))
    t0 = time.perf_counter()
    data = prepare_criteo(
        work / f"criteo-{rows}-b{buckets}", rows, max(rows // 20, batch_size), files=8, buckets=buckets
    )
    log(f"prepared data {data} ({time.perf_counter() - t0:.1f}s)")
    fs = FeatureSpace.load(str(data / "feature_space.json"))
    overrides = [
        f"data={data}",
        f"model.hidden={hidden}",
        f"batch_size={batch_size}",
        "epochs=1",
        "early_stopping.enabled=false",
        "shuffle=files",
        "model.validate_ids=false",
        f"eval_batch_size={batch_size * 4}",
        "log_every_steps=20",
        "prefetch_batches=4",
        f"torch_threads={threads}",
    ]
    cfg = load_train_config(None, overrides)
    task = get_task("ranking")
    table = pads.dataset(str(data / "train")).to_table(columns=task.required_columns(fs, cfg))
    n_batches = min(8, table.num_rows // batch_size)
    batches = [task.collate(table.slice(i * batch_size, batch_size), fs, cfg) for i in range(n_batches)]

    torch.manual_seed(0)
    model = task.build_model(fs, cfg)
    opt = cfg.optim.dense.build([p for p in model.parameters() if p.requires_grad])

    def ours(b: Any) -> None:
        loss = task.loss(model, b, cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    a = _time_steps(ours, batches, warmup, steps, repeats)
    log(f"(a) WideAndDeep training step: {a:,.0f} samples/s")

    torch.manual_seed(0)
    plain = PlainWideDeep(fs, hidden)
    popt = torch.optim.Adam(plain.parameters(), lr=cfg.optim.dense.lr)
    bce = nn.BCEWithLogitsLoss()

    def baseline(b: Any) -> None:
        loss = bce(plain(b), b.labels)
        popt.zero_grad(set_to_none=True)
        loss.backward()
        popt.step()

    b_rate = _time_steps(baseline, batches, warmup, steps, repeats)
    log(f"(b) plain PyTorch W&D (per-table nn.EmbeddingBag + Adam): {b_rate:,.0f} samples/s")
    table_rows = sum(t.num_rows for t in fs.deep_tables) + sum(t.num_rows for t in fs.wide_tables)
    report: dict[str, Any] = {
        "config": {
            "rows": rows,
            "batch_size": batch_size,
            "hidden": hidden,
            "threads": threads,
            "tables": {"wide": len(fs.wide_tables), "deep": len(fs.deep_tables)},
            "table_rows_total": table_rows,
            "numeric": len(fs.dense_columns),
            "hash_buckets_per_table": buckets or None,
            "steps": steps,
            "repeats": repeats,
        },
        "model_step_samples_per_s": a,
        "plain_torch_samples_per_s": b_rate,
        "speedup_vs_plain": a / b_rate,
    }
    if pipeline:
        from widedeep.train.driver import run_training

        del batches, table
        pcfg = load_train_config(
            None,
            [
                *overrides,
                "num_workers=1",
                "cpus_per_worker=1",
                f"storage_path={work / 'runs'}",
                f"run_name=bench-{time.strftime('%Y%m%d-%H%M%S')}",
            ],
        )
        summary = run_training(pcfg)
        c = float(summary.get("train_samples_per_s_steady") or 0.0)
        report.update(
            {
                "pipeline_samples_per_s": c,
                "pipeline_end_to_end_samples_per_s": summary.get("train_samples_per_s"),
                "pipeline_wall_seconds": summary.get("wall_seconds"),
                "pipeline_vs_model_step": c / a,
            }
        )
        log(
            f"(c) widedeep train pipeline (1 worker, streaming Parquet): {c:,.0f} samples/s steady "
            f"({summary.get('train_samples_per_s') or 0:,.0f} incl. start-up)"
        )
    return report
