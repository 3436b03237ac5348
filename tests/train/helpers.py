"""Small prepared-data directories for the training tests, built with the public FeatureSpace
API (fit on the train split, the one ``transform``) so the tests need no Ray Data pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from tests.conftest import ROOT
from widedeep.features import load_spec
from widedeep.features.fit import fit_tables


def make_prepared(
    raw: pa.Table, out: Path, spec_path: Path, *, seed: int = 0, fractions=(0.8, 0.1, 0.1), files: int = 2
) -> Path:
    """Random split of ``raw`` -> ``out/{feature_space.json, train, valid, test}``.

    The layout ``widedeep prepare`` writes.
    """
    spec = load_spec(spec_path)
    perm = np.random.default_rng(seed).permutation(raw.num_rows)
    n = raw.num_rows
    a, b = int(fractions[0] * n), int((fractions[0] + fractions[1]) * n)
    splits = {"train": perm[:a], "valid": perm[a:b], "test": perm[b:]}
    fs = fit_tables(spec, [raw.take(splits["train"])])
    out.mkdir(parents=True, exist_ok=True)
    (out / "feature_space.json").write_text(fs.to_json())
    for name, idx in splits.items():
        (out / name).mkdir(exist_ok=True)
        t = fs.transform(raw.take(np.sort(idx)))
        bounds = np.linspace(0, t.num_rows, files + 1).astype(int)
        for i in range(files):
            pq.write_table(t.slice(bounds[i], bounds[i + 1] - bounds[i]), out / name / f"part-{i:05d}.parquet")
    return out


def adult_prepared(adult_path: Path, out: Path, rows: int, seed: int = 0) -> Path:
    raw = pq.read_table(adult_path)
    raw = raw.take(np.random.default_rng(123).permutation(raw.num_rows)[:rows])
    return make_prepared(raw, out, ROOT / "platform" / "specs" / "adult.yaml", seed=seed)


def fit_in_process(data: Path, overrides: list[str], epochs: int, batch_size: int = 256):
    """Train the real model + optimizers in this process on a prepared dir; return test metrics.

    For model-level checks (the paper's ablation ordering) where Ray's start-up would dominate.
    """
    import pyarrow.dataset as pads
    import torch

    from widedeep.features import FeatureSpace
    from widedeep.train.config import load_train_config
    from widedeep.train.pointwise_metrics import binary_metrics
    from widedeep.train.tasks import get_task

    fs = FeatureSpace.load(str(data / "feature_space.json"))
    cfg = load_train_config(None, [f"data={data}", *overrides])
    task = get_task("ranking")
    cols = task.required_columns(fs, cfg)
    train = pads.dataset(str(data / "train")).to_table(columns=cols)
    test = pads.dataset(str(data / "test")).to_table(columns=cols)
    torch.manual_seed(cfg.seed)
    model = task.build_model(fs, cfg)
    opt = cfg.optim.dense.build([p for p in model.parameters() if p.requires_grad])
    for _ in range(epochs):
        for s in range(0, train.num_rows, batch_size):
            loss = task.loss(model, task.collate(train.slice(s, batch_size), fs, cfg), cfg)
            opt.zero_grad()
            loss.backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        out = task.eval_outputs(model, task.collate(test, fs, cfg), cfg)
    return binary_metrics(out["labels"], out["outputs"])
