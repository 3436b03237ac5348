"""Synthetic data: app-store impression logs with a planted signal, and Criteo-shaped rows.

App store (``widedeep generate``), the generator's model
-------------------------------------------------------
Fixed "world" (drawn from ``seed``, held in memory: O(users * installed + items)):

- apps ``j = 0..I-1``: a category ``c_j`` (20 categories), a latent vector
  ``v_j = 0.9 * centroid[c_j] + 0.3 * noise`` (dim 8), a popularity ``b_j ~ N(0, 1)``, a price
  tier and a size in MB (numeric).
- users ``i = 0..U-1``: demographics (age group, gender, country), a latent taste
  ``u_i = 0.9 * (g[age,gender] + h[country]) + 0.3 * noise``, and a list of 3..15 installed
  apps drawn without replacement with probability proportional to ``exp(u_i . v_j * 2 + b_j)``.
- planted pairs: ``P = I // 4`` (trigger app, companion app) pairs, triggers and companions
  uniformly at random: "users who have X install Y", specific crosses only memorisation learns.

Each impression row (streamed in chunks seeded by their first row, so any N fits in constant
memory; the output depends on seed, sizes and the chunk/shard sizes): user uniform and app by
Gumbel-max over 32 popularity-sampled candidates scored by ``u . v``; except, with probability
0.3, the app is the companion of a random planted pair and the user (half the time) one who
installed its trigger, so that only the cross tells planted rows from the others (the shown app
alone does not). Hour 0..23; position 0..9; timestamp increasing with the row index.

Days (the production loop's windows): ``day=d`` writes the ``d``-th window of the same world
(its timestamps continue where day ``d-1`` of as many rows ended; its rows are seeded by the day
too). With ``drift > 0`` the world changes from day to day: a ``drift`` fraction of the apps is
released only on days 1..3 (new ids the serving vocabulary has never seen), and app popularity
moves by ``drift * d`` standard deviations of a per-app trend, so the mix of shown apps (their
category, price and size) shifts. ``drift=0, day=0`` is the single window written before days
existed, row for row. ``poison`` writes a corrupted window on purpose (``flip-labels``: every
label inverted; ``scale:COLUMN:FACTOR``: a numeric column multiplied, a units bug) for the
retraining gate's tests.

Label ``installed ~ Bernoulli(sigmoid(z))`` with::

    z = -3.2 + 2.2 * (u . v) / s + 0.4 * b_j - 0.12 * position + 0.3 * cos(2 pi hour / 24)
        + 3.0 * [some installed app of the user is the trigger of a pair whose companion is j]

(``s`` = the world's standard deviation of ``u . v``). The ``u . v`` term is smooth and
generalizes through demographics, installed-app and category embeddings (the deep part's job);
the planted term is a specific (installed app x impression app) cross that only a memorizing
wide cross learns. The generator writes ``_generator.json`` with the oracle AUCs of the full
logit, the logit without the planted term, and the logit without the latent term.

Criteo-shaped rows (``criteo_like_table``): 13 integer columns, 26 hashed categoricals (8-hex
tokens drawn from a Zipf-like law over ``cardinality`` values), a 0/1 label; for benchmarks.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from widedeep.features.hashing import hash_ints
from widedeep.paths import Location

log = logging.getLogger(__name__)

N_CATEGORIES = 20
LATENT_DIM = 8
AGES = ["18-24", "25-34", "35-44", "45-54", "55-64", "65+"]
GENDERS = ["f", "m"]
COUNTRIES = ["US", "IN", "BR", "DE", "JP", "GB", "FR", "MX", "ID", "NG"]
PRICES = ["free", "paid", "freemium"]
PLANT_BOOST = 3.0
RELEASE_DAYS = 3  # with drift, new apps are released on days 1..RELEASE_DAYS
POISONS = ("flip-labels", "scale:COLUMN:FACTOR")


@dataclass
class World:
    """The fixed users / apps / planted pairs of one seed."""

    users: int
    items: int
    u: np.ndarray
    v: np.ndarray
    pop: np.ndarray
    cat: np.ndarray
    price: np.ndarray
    size_mb: np.ndarray
    age: np.ndarray
    gender: np.ndarray
    country: np.ndarray
    inst_offsets: np.ndarray
    inst_values: np.ndarray
    companion: np.ndarray  # companion[j] = companion app of trigger j, or -1
    uv_scale: float
    triggers: np.ndarray  # planted pairs (triggers[p], companion[triggers[p]])
    holder_offsets: np.ndarray  # users who installed app j: holder_values[holder_offsets[j]:holder_offsets[j+1]]
    holder_values: np.ndarray


def make_world(users: int, items: int, seed: int) -> World:
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0]))
    cat = rng.integers(0, N_CATEGORIES, items)
    centroids = rng.normal(0, 1, (N_CATEGORIES, LATENT_DIM)) / np.sqrt(LATENT_DIM)
    v = 0.9 * centroids[cat] + 0.3 * rng.normal(0, 1, (items, LATENT_DIM)) / np.sqrt(LATENT_DIM)
    pop = rng.normal(0, 1, items)
    age = rng.integers(0, len(AGES), users)
    gender = rng.integers(0, len(GENDERS), users)
    country = rng.integers(0, len(COUNTRIES), users)
    g = rng.normal(0, 1, (len(AGES), len(GENDERS), LATENT_DIM)) / np.sqrt(LATENT_DIM)
    h = rng.normal(0, 1, (len(COUNTRIES), LATENT_DIM)) / np.sqrt(LATENT_DIM)
    u = 0.9 * (g[age, gender] + h[country]) + 0.3 * rng.normal(0, 1, (users, LATENT_DIM)) / np.sqrt(LATENT_DIM)
    # scale so that u.v has a useful spread
    u *= 3.0
    n_inst = rng.integers(3, 16, users)
    offsets = np.concatenate([[0], np.cumsum(n_inst)]).astype(np.int64)
    values = np.empty(int(offsets[-1]), dtype=np.int64)
    for s in range(0, users, 4096):  # Gumbel top-k per user, in blocks
        e = min(users, s + 4096)
        scores = 2.0 * (u[s:e] @ v.T) / 3.0 + pop[None, :] + rng.gumbel(size=(e - s, items))
        top = np.argsort(-scores, axis=1)
        for i in range(s, e):
            values[offsets[i] : offsets[i + 1]] = top[i - s, : n_inst[i]]
    companion = np.full(items, -1, dtype=np.int64)
    n_pairs = max(1, items // 4)
    triggers = rng.choice(items, size=n_pairs, replace=False)
    for t in triggers:
        c = int(rng.integers(0, items))
        while c == t:
            c = int(rng.integers(0, items))
        companion[t] = c
    owner = np.repeat(np.arange(users), n_inst)
    order = np.argsort(values, kind="stable")
    holder_offsets = np.concatenate([[0], np.cumsum(np.bincount(values, minlength=items))]).astype(np.int64)
    sample = rng.integers(0, users, 20000), rng.integers(0, items, 20000)
    uv_scale = float(np.std(np.einsum("nd,nd->n", u[sample[0]], v[sample[1]]))) or 1.0
    return World(
        users,
        items,
        u,
        v,
        pop,
        cat,
        rng.integers(0, len(PRICES), items),
        np.round(np.exp(rng.normal(3, 1, items)), 1),
        age,
        gender,
        country,
        offsets,
        values,
        companion,
        uv_scale,
        np.sort(triggers),
        holder_offsets,
        owner[order],
    )


@dataclass(frozen=True)
class Day:
    """Which window of the world a chunk belongs to (see the module docstring)."""

    index: int = 0
    drift: float = 0.0
    rows: int = 0  # rows of every day: day d's timestamps start after d * rows rows

    def __post_init__(self) -> None:
        if self.index < 0:
            raise ValueError(f"day: must be >= 0, got {self.index}")
        if not 0.0 <= self.drift < 1.0:
            raise ValueError(f"drift: must be in [0, 1), got {self.drift}")


def day_popularity(world: World, day: Day, seed: int) -> np.ndarray:
    """Log-popularity of every app on ``day`` (-inf: not released yet); the world's own without drift."""
    if day.drift == 0.0:
        return world.pop
    rng = np.random.default_rng(np.random.SeedSequence([seed, 3]))  # its own stream: the world is unchanged
    released = np.zeros(world.items, dtype=np.int64)
    late = rng.random(world.items) < day.drift
    released[late] = rng.integers(1, RELEASE_DAYS + 1, int(late.sum()))
    trend = rng.normal(0, 1, world.items)
    pop = world.pop + day.drift * day.index * trend
    return np.where(released <= day.index, pop, -np.inf)


def _chunk(
    world: World, start: int, n: int, seed: int, day: Day | None = None, pop: np.ndarray | None = None
) -> tuple[pa.Table, dict[str, np.ndarray]]:
    day = day or Day()
    key = [seed, 1, start] if day.index == 0 else [seed, 1, start, day.index]
    rng = np.random.default_rng(np.random.SeedSequence(key))
    w = world
    pop = w.pop if pop is None else pop
    users = rng.integers(0, w.users, n)
    # candidate apps from popularity, picked by taste (Gumbel-max)
    p = np.exp(pop - pop[np.isfinite(pop)].max())
    p /= p.sum()
    cands = rng.choice(w.items, size=(n, 32), p=p)
    sc = np.einsum("nd,nkd->nk", w.u[users], w.v[cands]) + rng.gumbel(size=(n, 32))
    app = cands[np.arange(n), np.argmax(sc, axis=1)]
    # companion impressions: a random planted pair's companion, shown half the time to a user who
    # installed its trigger and half the time to anyone, so that only the (installed app x shown
    # app) cross separates the two, not the shown app alone
    comp_rows = np.nonzero(rng.random(n) < 0.3)[0]
    triggers = w.triggers[np.isfinite(pop[w.companion[w.triggers]])]  # pairs whose companion is released
    triggers = triggers if len(triggers) else w.triggers
    pair_trig = triggers[rng.integers(0, len(triggers), len(comp_rows))]
    app[comp_rows] = w.companion[pair_trig]
    holder = rng.random(len(comp_rows)) < 0.5
    cnt = w.holder_offsets[pair_trig + 1] - w.holder_offsets[pair_trig]
    ok = holder & (cnt > 0)
    pick_at = w.holder_offsets[pair_trig[ok]] + (rng.random(int(ok.sum())) * cnt[ok]).astype(np.int64)
    users[comp_rows[ok]] = w.holder_values[pick_at]
    lens = w.inst_offsets[users + 1] - w.inst_offsets[users]
    flat_users = np.repeat(np.arange(n), lens)
    starts = np.repeat(w.inst_offsets[users], lens)
    pos_in = np.arange(int(lens.sum())) - np.repeat(np.cumsum(lens) - lens, lens)
    inst = w.inst_values[starts + pos_in]
    comp = w.companion[inst]
    has = comp >= 0
    planted = np.zeros(n, dtype=bool)
    if has.any():
        hit = comp[has] == app[flat_users[has]]
        planted[np.unique(flat_users[has][hit])] = True
    hour = rng.integers(0, 24, n)
    position = rng.integers(0, 10, n)
    uv = np.einsum("nd,nd->n", w.u[users], w.v[app]) / w.uv_scale
    z_latent = 2.2 * uv
    z_plant = PLANT_BOOST * planted
    z_rest = -3.2 + 0.4 * w.pop[app] - 0.12 * position + 0.3 * np.cos(2 * np.pi * hour / 24)
    z = z_latent + z_plant + z_rest
    label = (rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.int64)
    inst_offsets = pa.array(np.concatenate([[0], np.cumsum(lens)]).astype(np.int32))
    inst_list = pa.ListArray.from_arrays(inst_offsets, pa.array(inst))
    t = pa.table(
        {
            "user_id": pa.array(users, pa.int64()),
            "user_age": pa.array(np.array(AGES)[w.age[users]]),
            "user_gender": pa.array(np.array(GENDERS)[w.gender[users]]),
            "user_country": pa.array(np.array(COUNTRIES)[w.country[users]]),
            "installed_apps": inst_list,
            "app_id": pa.array(app, pa.int64()),
            "app_category": pa.array(np.char.add("cat", w.cat[app].astype(str))),
            "app_price": pa.array(np.array(PRICES)[w.price[app]]),
            "app_size_mb": pa.array(w.size_mb[app]),
            "hour": pa.array(hour, pa.int64()),
            "position": pa.array(position, pa.int64()),
            "timestamp": pa.array(1_700_000_000 + (day.index * day.rows + start + np.arange(n)) * 7, pa.int64()),
            "installed": pa.array(label),
        }
    )
    return t, {"z": z, "z_no_plant": z - z_plant, "z_no_latent": z - z_latent, "label": label}


def auc(y: np.ndarray, s: np.ndarray) -> float:
    """ROC AUC by the rank statistic (ties averaged)."""
    y = np.asarray(y).astype(bool)
    npos, nneg = int(y.sum()), int((~y).sum())
    if npos == 0 or nneg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    ss = np.asarray(s)[order]
    # average ranks of ties
    _, idx, cnt = np.unique(ss, return_index=True, return_counts=True)
    avg = idx + (cnt + 1) / 2.0
    r = np.repeat(avg, cnt)
    ranks[order] = r
    return float((ranks[y].sum() - npos * (npos + 1) / 2) / (npos * nneg))


def parse_poison(poison: str | None) -> tuple[str, str, float] | None:
    """``None``, ``"flip-labels"`` or ``"scale:COLUMN:FACTOR"`` -> ``(kind, column, factor)``."""
    if poison is None:
        return None
    if poison == "flip-labels":
        return ("flip-labels", "installed", -1.0)
    parts = poison.split(":")
    if len(parts) == 3 and parts[0] == "scale":
        try:
            return ("scale", parts[1], float(parts[2]))
        except ValueError:
            pass
    raise ValueError(f"poison: expected one of {list(POISONS)}, got {poison!r}")


def _poisoned(t: pa.Table, poison: tuple[str, str, float] | None) -> pa.Table:
    if poison is None:
        return t
    kind, col, factor = poison
    if col not in t.column_names:
        raise ValueError(f"poison: no column {col!r}; columns are {t.column_names}")
    i = t.column_names.index(col)
    if kind == "flip-labels":
        return t.set_column(i, col, pc.subtract(1, t.column(col)))
    if not pa.types.is_floating(t.schema.field(col).type) and not pa.types.is_integer(t.schema.field(col).type):
        raise ValueError(f"poison: column {col!r} is {t.schema.field(col).type}, not numeric")
    return t.set_column(i, col, pc.multiply(pc.cast(t.column(col), pa.float64()), factor))


def generate_appstore(
    out: str | Path,
    rows: int,
    users: int = 10_000,
    items: int = 1_000,
    seed: int = 0,
    shard_rows: int = 250_000,
    chunk_rows: int = 50_000,
    day: int = 0,
    drift: float = 0.0,
    poison: str | None = None,
) -> dict:
    """Write ``rows`` impressions as ``OUT/part-*.parquet`` + ``OUT/_generator.json``; constant memory.

    ``day`` / ``drift``: the day-``day`` window of a drifting world; ``poison``: a deliberately
    corrupted window (see the module docstring)."""
    the_day = Day(day, drift, rows)
    bad = parse_poison(poison)
    out = Location.of(out)  # a local directory or a URI (s3://...: a job on a cluster writes to shared storage)
    if out.is_local:
        out.fs.create_dir(out.path, recursive=True)
    for old in out.files(".parquet"):
        if old.name.startswith("part-"):
            old.delete_file()
    t0 = time.perf_counter()
    world = make_world(users, items, seed)
    pop = day_popularity(world, the_day, seed)
    shard, written, writer = 0, 0, None
    in_shard = 0
    oracle = {"label": [], "z": [], "z_no_plant": [], "z_no_latent": []}
    oracle_rows = 0
    pos = 0
    while written < rows:
        n = min(chunk_rows, rows - written, shard_rows - in_shard)
        t, z = _chunk(world, written, n, seed, the_day, pop)
        t = _poisoned(t, bad)
        if writer is None:
            part = out / f"part-{shard:05d}.parquet"
            writer = pq.ParquetWriter(part.path, t.schema, filesystem=part.fs, compression="snappy")
        writer.write_table(t, row_group_size=min(65_536, shard_rows))
        if oracle_rows < 200_000:  # oracle AUCs from the first rows only (constant memory)
            for k in oracle:
                oracle[k].append(z[k])
            oracle_rows += n
        pos += int(pc.sum(t.column("installed")).as_py() or 0)  # as written (a poisoned window's labels)
        written += n
        in_shard += n
        if in_shard >= shard_rows:
            writer.close()
            writer, shard, in_shard = None, shard + 1, 0
        el = time.perf_counter() - t0
        log.info("generate: %d/%d rows (%.0f rows/s)", written, rows, written / max(el, 1e-9))
    if writer is not None:
        writer.close()
        shard += 1
    y = np.concatenate(oracle["label"]) if oracle["label"] else np.zeros(0)
    meta = {
        "kind": "widedeep.generated.appstore",
        "rows": rows,
        "users": users,
        "items": items,
        "seed": seed,
        "day": day,
        "drift": drift,
        "poison": poison,
        "apps_released": int(np.isfinite(pop).sum()),
        "shards": shard,
        "install_rate": round(pos / max(rows, 1), 6),
        "planted_pairs": [[int(a), int(b)] for a, b in enumerate(world.companion) if b >= 0],
        "oracle_auc": {
            "full_logit": round(auc(y, np.concatenate(oracle["z"])), 4) if len(y) else None,
            "without_planted_cross": round(auc(y, np.concatenate(oracle["z_no_plant"])), 4) if len(y) else None,
            "without_latent_taste": round(auc(y, np.concatenate(oracle["z_no_latent"])), 4) if len(y) else None,
        },
        "seconds": round(time.perf_counter() - t0, 3),
    }
    (out / "_generator.json").write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")
    return meta


def criteo_like_table(n: int, start: int, seed: int, cardinality: int = 200_000) -> pa.Table:
    """``n`` Criteo-shaped rows (label, I1..I13, C1..C26); row ``start`` onwards of a seeded stream."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 2, start]))
    cols: dict[str, pa.Array] = {}
    z = rng.normal(-1.2, 1.0, n)
    ints = {}
    for i in range(1, 14):
        x = np.floor(np.exp(rng.normal(1.0 + 0.2 * i, 1.2, n))).astype(np.int64)
        miss = rng.random(n) < 0.05
        ints[f"I{i}"] = pa.array(x, mask=miss)
        z += 0.05 * np.log1p(x) * (1 if i % 2 else -1)
    # Zipf-like ranks over `cardinality` values; tokens are 8-hex strings like Criteo's
    tokens_cache = _hex_tokens(cardinality)
    cats = {}
    for c in range(1, 27):
        r = np.minimum((rng.pareto(1.1, n) * 50).astype(np.int64), cardinality - 1)
        perm_off = (c * 7919) % cardinality
        idx = (r + perm_off) % cardinality
        miss = rng.random(n) < 0.03
        cats[f"C{c}"] = tokens_cache.take(pa.array(idx))
        if miss.any():
            cats[f"C{c}"] = pc.if_else(pa.array(miss), pa.scalar(None, pa.string()), cats[f"C{c}"])
        if c <= 3:
            z += 0.3 * ((idx % 7) == 0)
    cols["label"] = pa.array((rng.random(n) < 1 / (1 + np.exp(-z))).astype(np.int64))
    cols.update(ints)
    cols.update(cats)
    return pa.table(cols)


def _hex_tokens(k: int) -> pa.Array:
    """``k`` distinct 8-hex-digit tokens (Criteo's look), vectorized: a few ms for 200k, so no cache."""
    h = (hash_ints(np.arange(k)) >> np.uint64(32)).astype(np.uint32)
    nibbles = ((h[:, None] >> np.arange(28, -1, -4, dtype=np.uint32)) & 0xF).astype(np.uint8)  # [k, 8], high first
    chars = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)[nibbles]
    offsets = np.arange(k + 1, dtype=np.int32) * 8
    return pa.Array.from_buffers(pa.string(), k, [None, pa.py_buffer(offsets.tobytes()), pa.py_buffer(chars.tobytes())])
