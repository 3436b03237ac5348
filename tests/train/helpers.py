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
    """Random split of ``raw`` -> ``out/{feature_space.json, train, valid, test}`` (contracts §1)."""
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
