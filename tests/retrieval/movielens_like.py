"""A MovieLens-100k-shaped folder with a planted signal (test helper; real MovieLens is not in the repo).

``u.data`` (user TAB item TAB rating TAB timestamp), ``u.user`` (id|age|gender|occupation|zip) and
``u.item`` (id|title|release|video|url|19 genre flags), exactly the published layout. Users have
a taste over genres (partly set by age and gender); which movies they rate follows popularity
and taste, the rating follows taste, the movie's quality and noise.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

OCCUPATIONS = ["student", "engineer", "educator", "writer", "other", "programmer", "artist", "none"]


def write_ml100k(
    out: Path, n_users: int = 300, n_items: int = 400, per_user: tuple[int, int] = (30, 90), seed: int = 0
) -> Path:
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    g = 19
    genres = np.zeros((n_items, g), dtype=int)
    for i in range(n_items):
        genres[i, rng.choice(np.arange(1, g), size=rng.integers(1, 4), replace=False)] = 1
    quality = rng.normal(0, 0.7, n_items)
    pop = np.exp(rng.normal(0, 1.2, n_items))
    years = rng.integers(1950, 1999, n_items)
    age = rng.integers(15, 70, n_users)
    gender = rng.choice(["M", "F"], n_users)
    occ = rng.choice(OCCUPATIONS, n_users)
    base = rng.normal(0, 1, (2, 5, g))  # taste by gender x age band
    taste = 0.8 * base[(gender == "F").astype(int), np.minimum((age - 15) // 11, 4)] + 0.8 * rng.normal(
        0, 1, (n_users, g)
    )
    lines = []
    t = 880_000_000
    for u in range(n_users):
        m = int(rng.integers(*per_user))
        aff = (genres @ taste[u]) / np.maximum(genres.sum(1), 1)
        p = pop * np.exp(1.2 * aff)
        its = rng.choice(n_items, size=m, replace=False, p=p / p.sum())
        r = 3.2 + 0.9 * aff[its] + quality[its] + rng.normal(0, 0.8, m)
        r = np.clip(np.rint(r), 1, 5).astype(int)
        ts = t + np.sort(rng.integers(0, 10**7, m))
        lines += [f"{u + 1}\t{i + 1}\t{rr}\t{tt}" for i, rr, tt in zip(its, r, ts, strict=True)]
    (out / "u.data").write_text("\n".join(lines) + "\n")
    (out / "u.user").write_text("".join(f"{u + 1}|{age[u]}|{gender[u]}|{occ[u]}|{10000 + u}\n" for u in range(n_users)))
    rows = []
    for i in range(n_items):
        flags = "|".join(str(x) for x in genres[i])
        rows.append(f"{i + 1}|Movie {i + 1} ({years[i]})|01-Jan-{years[i]}||http://example.org/{i + 1}|{flags}")
    (out / "u.item").write_text("\n".join(rows) + "\n", encoding="latin1")
    return out
