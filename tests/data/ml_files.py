"""Tiny MovieLens folders in each published layout, written by tests (not shipped data)."""

from __future__ import annotations

from pathlib import Path

# (user, movie, rating, timestamp)
RATINGS = [
    (1, 10, 5, 100),
    (1, 20, 3, 200),
    (1, 30, 4, 300),
    (1, 10, 2, 400),
    (1, 20, 5, 500),
    (2, 10, 4, 110),
    (2, 30, 1, 210),
    (2, 20, 4, 310),
    (2, 30, 5, 410),
    (2, 10, 3, 510),
    (3, 20, 5, 120),
    (3, 10, 4, 220),
    (3, 30, 2, 320),
    (3, 20, 1, 420),
    (3, 30, 4, 520),
]
USERS = {1: (24, "M", "technician", "85711"), 2: (53, "F", "writer", "94043"), 3: (31, "M", "educator", "32067")}
MOVIES = {
    10: ("Toy Story (1995)", ["Animation", "Comedy"]),
    20: ("Heat (1995)", ["Action", "Thriller"]),
    30: ("Amélie (2001)", ["Comedy", "Romance"]),
}
GENRES_100K = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]


def write_ml100k(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "u.data").write_text("".join(f"{u}\t{m}\t{r}\t{t}\n" for u, m, r, t in RATINGS))
    (d / "u.user").write_text("".join(f"{u}|{a}|{g}|{o}|{z}\n" for u, (a, g, o, z) in USERS.items()))
    lines = []
    for m, (title, genres) in MOVIES.items():
        flags = "|".join("1" if g in genres else "0" for g in GENRES_100K)
        lines.append(f"{m}|{title}|01-Jan-1995||http://example.org/{m}|{flags}\n")
    (d / "u.item").write_bytes("".join(lines).encode("latin-1"))
    return d


def write_ml1m(d: Path) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    (d / "ratings.dat").write_text("".join(f"{u}::{m}::{r}::{t}\n" for u, m, r, t in RATINGS))
    occ = {"technician": 17, "writer": 20, "educator": 2}
    age_code = {24: 18, 53: 50, 31: 25}
    users = "".join(f"{u}::{g}::{age_code[a]}::{occ[o]}::{z}\n" for u, (a, g, o, z) in USERS.items())
    (d / "users.dat").write_text(users)
    movies = "".join(f"{m}::{t}::{'|'.join(g)}\n" for m, (t, g) in MOVIES.items())
    (d / "movies.dat").write_bytes(movies.encode("latin-1"))
    return d


def write_mllatest(d: Path, header: str = "userId,movieId,rating,timestamp", cells: dict | None = None) -> Path:
    """ml-latest layout. ``header``: the ratings.csv header (a spreadsheet's ``...,timestamp,,,,``
    adds unnamed columns, written empty in every row); ``cells``: ``{(row, column): text}`` to fill
    some of those extra columns (0-based data row, 1-based column)."""
    d.mkdir(parents=True, exist_ok=True)
    extra = header.count(",") - 3
    lines = []
    for i, (u, m, r, t) in enumerate(RATINGS):
        more = [(cells or {}).get((i, c), "") for c in range(5, 5 + extra)]
        lines.append(",".join([str(u), str(m), f"{r}.0", str(t), *more]) + "\n")
    (d / "ratings.csv").write_text(header + "\n" + "".join(lines))
    rows = [f'{m},"{t}",{"|".join(g)}\n' for m, (t, g) in MOVIES.items()]
    (d / "movies.csv").write_text(
        "movieId,title,genres\n" + "".join(rows) + '40,"Untitled",(no genres listed)\n', encoding="utf-8"
    )
    return d
