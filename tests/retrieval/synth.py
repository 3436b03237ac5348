"""A small synthetic app-store-like interaction log, prepared in-process (test helper).

Users and apps belong to latent segments; impressions are drawn by app popularity, mostly
within the user's segment; an impression is installed (label 1) with a probability that rises
when the user's segment matches the app's category and with the app's quality. Each user's
rows are ordered in time and split 80/10/10 per user (the per-user time split), then prepared
with the real FeatureSpace fit + transform.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from widedeep.features import parse_spec
from widedeep.features.fit import fit_tables

SPEC = {
    "name": "synthetic-appstore",
    "label": {"condition": "installed == 1"},
    "user_key": "user",
    "item_key": "app",
    "features": [
        {"name": "user_id", "column": "user", "kind": "categorical", "side": "user", "dim": 16},
        {"name": "country", "kind": "categorical", "side": "user", "dim": 8},
        {"name": "app_id", "column": "app", "kind": "categorical", "side": "item", "dim": 16},
        {"name": "category", "kind": "categorical", "side": "item", "dim": 8},
        {"name": "country_x_category", "kind": "crossed", "inputs": ["country", "category"], "hash_buckets": 512},
    ],
}


def make_log(
    n_users: int = 400, n_items: int = 300, rows_per_user: int = 40, n_segments: int = 8, seed: int = 0
) -> pa.Table:
    rng = np.random.default_rng(seed)
    user_seg = rng.integers(0, n_segments, n_users)
    item_cat = rng.integers(0, n_segments, n_items)
    quality = rng.normal(0, 1.0, n_items)
    affinity = rng.normal(0, 1.0, (n_segments, n_segments)) + 2.0 * np.eye(n_segments)
    pop = rng.zipf(1.6, n_items).astype(float).clip(1, 200) ** 0.7
    pop = pop / pop.sum()
    users, items, labels, times = [], [], [], []
    for u in range(n_users):
        p = pop * np.where(item_cat == user_seg[u], 2.0, 1.0)
        p = p / p.sum()
        its = rng.choice(n_items, size=rows_per_user, replace=False, p=p)
        logit = -1.5 + 1.2 * affinity[user_seg[u], item_cat[its]] + 1.2 * quality[its]
        lab = rng.random(rows_per_user) < 1 / (1 + np.exp(-logit))
        users += [u] * rows_per_user
        items += its.tolist()
        labels += lab.astype(int).tolist()
        times += sorted(rng.integers(0, 10**6, rows_per_user).tolist())
    users_a, items_a = np.array(users), np.array(items)
    return pa.table(
        {
            "user": pa.array([f"u{u}" for u in users_a]),
            "country": pa.array([f"c{s}" for s in user_seg[users_a]]),  # the user's segment, observed
            "app": pa.array([f"a{i}" for i in items_a]),
            "category": pa.array([f"k{c}" for c in item_cat[items_a]]),
            "installed": pa.array(labels, pa.int64()),
            "ts": pa.array(times, pa.int64()),
        }
    )


def per_user_time_split(t: pa.Table, fractions=(0.8, 0.1, 0.1)) -> dict[str, pa.Table]:
    users = np.asarray(t.column("user").to_numpy(zero_copy_only=False))
    ts = t.column("ts").to_numpy()
    order = np.lexsort((ts, users))
    _, start, counts = np.unique(users[order], return_index=True, return_counts=True)
    rank = np.arange(len(order)) - np.repeat(start, counts)
    n = np.repeat(counts, counts)
    frac = rank / n
    split = np.where(frac < fractions[0], 0, np.where(frac < fractions[0] + fractions[1], 1, 2))
    out = {}
    for i, name in enumerate(("train", "valid", "test")):
        out[name] = t.take(pa.array(order[split == i]))
    return out


def prepare(out: Path, spec: dict | None = None, keep_time: bool = False, **kw) -> Path:
    """Write a prepared directory (feature_space.json, {train,valid,test}/part-0.parquet) of
    ``spec`` (default ``SPEC``); ``keep_time``: keep the time as a ``timestamp`` column, as the
    user-time split of ``widedeep prepare`` does."""
    spec_ = parse_spec(spec or SPEC)
    splits = per_user_time_split(make_log(**kw))
    fs = fit_tables(spec_, [splits["train"]])
    out.mkdir(parents=True, exist_ok=True)
    fs.save(out / "feature_space.json")
    for name, t in splits.items():
        (out / name).mkdir(exist_ok=True)
        prepared = fs.transform(t)
        if keep_time:
            prepared = prepared.append_column("timestamp", t.column("ts"))
        pq.write_table(prepared, out / name / "part-00000.parquet")
    (out / "manifest.json").write_text(json.dumps({"synthetic": True}))
    return out
