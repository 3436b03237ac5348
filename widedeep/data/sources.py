"""Input discovery and streaming readers: Parquet, CSV, Criteo TSV, MovieLens layouts.

Why our own read units instead of ``ray.data.read_*``: ``prepare`` needs, for every row, the
file it came from (errors name the file), its position in that file (the seeded random split is
a hash of (file, row), so it does not depend on how Ray groups rows into blocks), a count of
unparseable rows (``--on-bad-rows skip``), and side tables joined on (MovieLens). A *read unit*
is a file, or a range of row groups of a Parquet file; the Ray Data pipeline maps over units,
and each task streams its unit in chunks of ``chunk_rows`` rows, so memory is bounded by the
chunk, not the file.

Paths may be local files, directories (read recursively, hidden and ``_``-prefixed files
skipped), globs (``data/*.parquet``), or any URI pyarrow's filesystems understand
(``s3://``, ``gs://``, ``hdfs://``).
"""

from __future__ import annotations

import csv
import fnmatch
import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from widedeep.errors import DataError
from widedeep.paths import Location

FORMATS = ("parquet", "csv", "criteo", "movielens")
CRITEO_COLUMNS = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
_GLOB = re.compile(r"[*?\[]")


@dataclass(frozen=True)
class ReadUnit:
    """A piece of input one task reads: a whole file or row groups of a Parquet file."""

    index: int
    path: str
    format: str
    file_index: int
    row_offset: int = 0
    row_groups: tuple[int, ...] | None = None
    rows: int | None = None

    def to_item(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "path": self.path,
            "format": self.format,
            "file_index": self.file_index,
            "row_offset": self.row_offset,
            "row_groups": list(self.row_groups) if self.row_groups is not None else None,
            "rows": self.rows,
        }

    @classmethod
    def from_item(cls, d: dict[str, Any]) -> ReadUnit:
        rg = d.get("row_groups")
        return cls(
            int(d["index"]),
            str(d["path"]),
            str(d["format"]),
            int(d["file_index"]),
            int(d["row_offset"]),
            tuple(int(x) for x in rg) if rg is not None else None,
            None if d.get("rows") is None else int(d["rows"]),
        )


def filesystem(path: str) -> tuple[pafs.FileSystem, str]:
    """(filesystem, path on it) for a local path or a URI (``widedeep.paths.Location``)."""
    loc = Location.of(path, DataError)
    return loc.fs, loc.path


def _visible(p: str) -> bool:
    base = p.rsplit("/", 1)[-1]
    return not (base.startswith(".") or base.startswith("_"))


def expand_paths(inputs: list[str]) -> list[str]:
    """Files named by inputs (files, directories, globs, URIs), sorted within each input."""
    out: list[str] = []
    for inp in inputs:
        loc = Location.of(inp, DataError)
        fs, path = loc.fs, loc.path
        if _GLOB.search(path):
            base = _GLOB.split(path, 1)[0].rsplit("/", 1)[0] or "/"
            infos = fs.get_file_info(pafs.FileSelector(base, recursive=True, allow_not_found=True))
            files = sorted(i.path for i in infos if i.type == pafs.FileType.File and fnmatch.fnmatch(i.path, path))
            if not files:
                raise DataError(f"{inp}: no files match this pattern")
        else:
            info = fs.get_file_info(path)
            if info.type == pafs.FileType.NotFound:
                raise DataError(f"{inp}: no such file or directory")
            if info.type == pafs.FileType.Directory:
                infos = fs.get_file_info(pafs.FileSelector(path, recursive=True))
                files = sorted(i.path for i in infos if i.type == pafs.FileType.File and _visible(i.path[len(path) :]))
                if not files:
                    raise DataError(f"{inp}: directory has no files")
            else:
                files = [path]
        # as strings that keep the input's scheme and query options (Ray tasks resolve them again)
        out.extend(str(Location(fs, f, loc.prefix, loc.query)) for f in files)
    return out


def detect_format(paths: list[str], inputs: list[str]) -> str:
    """auto-detection: MovieLens directories by their file names, else by extension."""
    names = {p.rsplit("/", 1)[-1] for p in paths}
    if names & {"u.data", "ratings.dat"} or {"ratings.csv", "movies.csv"} <= names:
        return "movielens"
    exts = {_ext(p) for p in paths}
    if exts <= {"parquet", "pq"}:
        return "parquet"
    if exts <= {"csv", "csv.gz", "csv.bz2"}:
        return "csv"
    raise DataError(
        f"cannot tell the format of {inputs} (extensions {sorted(exts)}); pass --format or set format: in the spec"
    )


def _ext(p: str) -> str:
    base = p.rsplit("/", 1)[-1].lower()
    for e in ("csv.gz", "csv.bz2", "parquet", "pq", "csv", "tsv", "txt", "dat", "data"):
        if base.endswith("." + e):
            return e
    return base.rsplit(".", 1)[-1] if "." in base else ""


def plan_units(inputs: list[str], fmt: str = "auto", unit_rows: int = 1_000_000) -> tuple[str, list[ReadUnit]]:
    """Expand inputs and cut them into read units (Parquet by row groups, other formats per file)."""
    paths = expand_paths(inputs)
    if fmt == "auto":
        fmt = detect_format(paths, inputs)
    if fmt not in FORMATS:
        raise DataError(f"unknown input format {fmt!r}; expected one of {FORMATS}")
    units: list[ReadUnit] = []
    if fmt == "movielens":
        ratings = movielens_ratings_file(paths)
        return fmt, [ReadUnit(0, ratings, fmt, 0)]
    for fi, p in enumerate(paths):
        if fmt != "parquet":
            units.append(ReadUnit(len(units), p, fmt, fi))
            continue
        fs, rel = filesystem(p)
        try:
            md = pq.ParquetFile(rel, filesystem=fs).metadata
        except (pa.ArrowInvalid, OSError) as e:
            raise DataError(f"{p}: not a readable Parquet file: {e}") from None
        start, acc, groups = 0, 0, []
        for g in range(md.num_row_groups):
            groups.append(g)
            acc += md.row_group(g).num_rows
            if acc >= unit_rows:
                units.append(ReadUnit(len(units), p, fmt, fi, start, tuple(groups), acc))
                start += acc
                acc, groups = 0, []
        if groups or md.num_row_groups == 0:
            units.append(ReadUnit(len(units), p, fmt, fi, start, tuple(groups), acc))
    return fmt, units


# ---------------------------------------------------------------- readers


class BadRowCounter:
    """``invalid_row_handler`` for pyarrow's CSV reader: skip (and count) or fail with the row."""

    def __init__(self, path: str, on_bad_rows: str):
        self.path, self.mode, self.count, self.first = path, on_bad_rows, 0, None

    def __call__(self, row: Any) -> str:
        if self.mode == "skip":
            self.count += 1
            self.first = self.first or row.text
            return "skip"
        return "error"


def read_unit(
    unit: ReadUnit,
    columns: list[str] | None,
    chunk_rows: int,
    on_bad_rows: str = "error",
    dictionary_columns: list[str] | None = None,
) -> Iterator[tuple[pa.Table, int]]:
    """Stream (chunk, bad rows skipped while parsing it) from a unit.

    ``columns``: the raw columns wanted (those absent from the file are simply not returned;
    the transform reports a missing required column by name). ``dictionary_columns``: Parquet
    columns to read dictionary-encoded (categoricals: ~4x cheaper to read, and the vocabulary
    look-up then works on the distinct values only).
    """
    try:
        if unit.format == "parquet":
            yield from _read_parquet(unit, columns, chunk_rows, dictionary_columns)
        elif unit.format == "csv":
            yield from _read_csv(unit, columns, chunk_rows, on_bad_rows)
        elif unit.format == "criteo":
            yield from _read_criteo(unit, columns, chunk_rows, on_bad_rows)
        elif unit.format == "movielens":
            yield from _read_movielens(unit, columns, chunk_rows, on_bad_rows)
        else:
            raise DataError(f"{unit.path}: unknown format {unit.format!r}")
    except DataError:
        raise
    except (pa.ArrowInvalid, pa.ArrowTypeError, OSError, UnicodeDecodeError) as e:
        raise DataError(f"{unit.path}: {e}") from None


def _read_parquet(
    unit: ReadUnit, columns: list[str] | None, chunk_rows: int, dictionary_columns: list[str] | None
) -> Iterator[tuple[pa.Table, int]]:
    fs, rel = filesystem(unit.path)
    f = pq.ParquetFile(rel, filesystem=fs)
    names = f.schema_arrow.names
    if dictionary_columns:
        types = {fld.name: fld.type for fld in f.schema_arrow}
        dcols = [
            c
            for c in dictionary_columns
            if c in types and (pa.types.is_string(types[c]) or pa.types.is_large_string(types[c]))
        ]
        if dcols:
            f = pq.ParquetFile(rel, filesystem=fs, read_dictionary=dcols)
    cols = None if columns is None else [c for c in columns if c in names]
    groups = list(unit.row_groups) if unit.row_groups is not None else None
    if groups == []:
        return
    for rb in f.iter_batches(batch_size=chunk_rows, row_groups=groups, columns=cols, use_threads=False):
        yield pa.Table.from_batches([rb]), 0


def _open_stream(path: str):
    fs, rel = filesystem(path)
    compression = "detect" if rel.endswith((".gz", ".bz2")) else None
    return fs.open_input_stream(rel, compression=compression)


def _read_csv(
    unit: ReadUnit, columns: list[str] | None, chunk_rows: int, on_bad_rows: str
) -> Iterator[tuple[pa.Table, int]]:
    # Header first: a projection naming an absent column would fail inside Arrow.
    with _open_stream(unit.path) as s:
        head = s.read(1 << 20).decode("utf-8", errors="replace")
    if not head.strip():
        return
    names = next(csv.reader([head.splitlines()[0]]))
    cols = names if columns is None else [c for c in columns if c in names]
    counter = BadRowCounter(unit.path, on_bad_rows)
    ro = pacsv.ReadOptions(block_size=max(1 << 20, chunk_rows * 64))
    po = pacsv.ParseOptions(invalid_row_handler=counter)
    # Every column as a string: types are decided by the spec, and a stray "abc" in a numeric
    # column becomes a reported bad row instead of a mid-file type-inference failure.
    co = pacsv.ConvertOptions(
        include_columns=cols, column_types={c: pa.string() for c in cols}, strings_can_be_null=True
    )
    yield from _stream_csv(unit.path, ro, po, co, counter)


def _stream_csv(path: str, ro, po, co, counter: BadRowCounter) -> Iterator[tuple[pa.Table, int]]:
    with _open_stream(path) as s:
        try:
            reader = pacsv.open_csv(s, read_options=ro, parse_options=po, convert_options=co)
        except pa.ArrowInvalid as e:
            if "Empty CSV file" in str(e):
                return
            raise DataError(f"{path}: {_csv_msg(e)} (use --on-bad-rows skip to drop unparseable rows)") from None
        seen = 0
        while True:
            try:
                rb = reader.read_next_batch()
            except StopIteration:
                break
            except pa.ArrowInvalid as e:
                raise DataError(f"{path}: {_csv_msg(e)} (use --on-bad-rows skip to drop unparseable rows)") from None
            bad = counter.count - seen
            seen = counter.count
            yield pa.Table.from_batches([rb]), bad


def _csv_msg(e: Exception) -> str:
    return str(e).replace("\n", " ")


def _read_criteo(
    unit: ReadUnit, columns: list[str] | None, chunk_rows: int, on_bad_rows: str
) -> Iterator[tuple[pa.Table, int]]:
    cols = CRITEO_COLUMNS if columns is None else [c for c in CRITEO_COLUMNS if c in columns]
    counter = BadRowCounter(unit.path, on_bad_rows)
    ro = pacsv.ReadOptions(column_names=CRITEO_COLUMNS, block_size=max(1 << 20, chunk_rows * 128))
    po = pacsv.ParseOptions(delimiter="\t", quote_char=False, invalid_row_handler=counter)
    types = {c: (pa.string() if c.startswith("C") else pa.int64()) for c in CRITEO_COLUMNS}
    co = pacsv.ConvertOptions(include_columns=cols, column_types=types, strings_can_be_null=True)
    yield from _stream_csv(unit.path, ro, po, co, counter)


# ---------------------------------------------------------------- MovieLens

ML100K_GENRES = [
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
# The uniform columns every MovieLens layout is read into (absent ones are null).
MOVIELENS_SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("movie_id", pa.int64()),
        ("rating", pa.float64()),
        ("timestamp", pa.int64()),
        ("gender", pa.string()),
        ("age", pa.int64()),
        ("occupation", pa.string()),
        ("zip_code", pa.string()),
        ("title", pa.string()),
        ("year", pa.int64()),
        ("genres", pa.list_(pa.string())),
    ]
)


def movielens_ratings_file(paths: list[str]) -> str:
    by = {p.rsplit("/", 1)[-1]: p for p in paths}
    for name in ("u.data", "ratings.dat", "ratings.csv"):
        if name in by:
            return by[name]
    raise DataError(f"no MovieLens ratings file (u.data, ratings.dat or ratings.csv) among {sorted(by)}")


def _sibling(path: str, name: str) -> str:
    return path.rsplit("/", 1)[0] + "/" + name


def _exists(path: str) -> bool:
    fs, rel = filesystem(path)
    return fs.get_file_info(rel).type == pafs.FileType.File


def _split_lines(path: str, sep: str, ncols: int, encoding: str = "latin1") -> list[pa.Array]:
    """Read a ``sep``-delimited file with no quoting (MovieLens ``::``, ``|``) into string columns."""
    with _open_stream(path) as s:
        t = pacsv.read_csv(
            s,
            read_options=pacsv.ReadOptions(column_names=["line"], encoding=encoding),
            parse_options=pacsv.ParseOptions(delimiter="\x01", quote_char=False),
            convert_options=pacsv.ConvertOptions(column_types={"line": pa.string()}),
        )
    parts = pc.split_pattern(t.column("line").combine_chunks(), pattern=sep)
    lens = np.asarray(pc.list_value_length(parts))
    bad = np.nonzero(lens != ncols)[0]
    if len(bad):
        raise DataError(
            f"{path}: line {int(bad[0]) + 1} has {int(lens[bad[0]])} fields, expected {ncols}: "
            f"{t.column('line')[int(bad[0])].as_py()!r}"
        )
    return [pc.list_element(parts, i) for i in range(ncols)]


def _year(title: pa.Array) -> pa.Array:
    m = pc.extract_regex(title, r"\((?P<y>\d{4})\)\s*$")
    return pc.cast(pc.struct_field(m, [0]), pa.int64())


def movielens_sides(ratings_path: str) -> tuple[pa.Table | None, pa.Table]:
    """(users or None, movies) side tables of a MovieLens directory, in uniform columns.

    Read again for every read unit of the ratings file: the side files are small next to a unit
    of ratings (ML-25M's movies.csv is 62k lines), so no cache is kept.
    """
    name = ratings_path.rsplit("/", 1)[-1]
    users = None
    if name == "u.data":
        uu = _split_lines(_sibling(ratings_path, "u.user"), "|", 5)
        users = pa.table(
            {
                "user_id": pc.cast(uu[0], pa.int64()),
                "age": pc.cast(uu[1], pa.int64()),
                "gender": uu[2],
                "occupation": uu[3],
                "zip_code": uu[4],
            }
        )
        it = _split_lines(_sibling(ratings_path, "u.item"), "|", 24)
        flags = np.stack([np.asarray(pc.equal(it[5 + g], "1")) for g in range(19)], axis=1)
        genres = pa.array([[ML100K_GENRES[g] for g in np.nonzero(row)[0]] for row in flags], pa.list_(pa.string()))
        movies = pa.table({"movie_id": pc.cast(it[0], pa.int64()), "title": it[1], "genres": genres})
    elif name == "ratings.dat":
        uu = _split_lines(_sibling(ratings_path, "users.dat"), "::", 5)
        users = pa.table(
            {
                "user_id": pc.cast(uu[0], pa.int64()),
                "gender": uu[1],
                "age": pc.cast(uu[2], pa.int64()),
                "occupation": uu[3],
                "zip_code": uu[4],
            }
        )
        mv = _split_lines(_sibling(ratings_path, "movies.dat"), "::", 3)
        movies = pa.table(
            {"movie_id": pc.cast(mv[0], pa.int64()), "title": mv[1], "genres": pc.split_pattern(mv[2], "|")}
        )
    else:
        with _open_stream(_sibling(ratings_path, "movies.csv")) as s:
            mv = pacsv.read_csv(
                s,
                convert_options=pacsv.ConvertOptions(
                    column_types={"movieId": pa.int64(), "title": pa.string(), "genres": pa.string()}
                ),
            )
        g = pc.split_pattern(mv.column("genres").combine_chunks(), "|")
        g = pc.if_else(
            pc.equal(mv.column("genres").combine_chunks(), "(no genres listed)"),
            pa.scalar([], pa.list_(pa.string())),
            g,
        )
        movies = pa.table(
            {"movie_id": mv.column("movieId"), "title": pc.utf8_trim_whitespace(mv.column("title")), "genres": g}
        )
    movies = movies.append_column("year", _year(movies.column("title").combine_chunks()))
    return users, movies


ML_RATINGS_CSV = ("userId", "movieId", "rating", "timestamp")


def csv_header(path: str) -> list[str]:
    """The column names on the first line of a CSV file (``[]`` for an empty file)."""
    with _open_stream(path) as s:
        head = s.read(1 << 20).decode("utf-8", errors="replace")
    return next(csv.reader([head.splitlines()[0]])) if head.strip() else []


def ratings_csv_extra_columns(path: str) -> list[int]:
    """1-based positions of the unnamed columns after ``userId,movieId,rating,timestamp`` in a
    MovieLens ``ratings.csv`` (a file saved by a spreadsheet: ``userId,movieId,rating,timestamp,,,,``).

    They are read and must be empty in every row (``_ratings_csv_chunks`` checks), then ignored;
    ``prepare`` says so in its manifest. Any other header is an error naming the file and columns.
    """
    names = csv_header(path)
    if tuple(names[:4]) != ML_RATINGS_CSV:
        raise DataError(f"{path}: header starts {names[:4]}, a MovieLens ratings.csv starts {list(ML_RATINGS_CSV)}")
    named = [f"{n!r} (column {i})" for i, n in enumerate(names[4:], start=5) if n.strip()]
    if named:
        raise DataError(
            f"{path}: unexpected column(s) {', '.join(named)} after {','.join(ML_RATINGS_CSV)}; "
            "a MovieLens ratings.csv has only these four (unnamed empty trailing columns are ignored)"
        )
    return list(range(5, len(names) + 1))


def _ratings_csv_chunks(path: str, chunk_rows: int, on_bad_rows: str) -> Iterator[tuple[pa.Table, int]]:
    """``ratings.csv`` in uniform column names; trailing unnamed columns must be empty, then dropped."""
    extra = ratings_csv_extra_columns(path)
    spare = [f"_column_{i}" for i in extra]
    counter = BadRowCounter(path, on_bad_rows)
    types: dict[str, pa.DataType] = {"userId": pa.int64(), "movieId": pa.int64(), "rating": pa.float64()}
    types |= {"timestamp": pa.int64(), **{c: pa.string() for c in spare}}
    ro = pacsv.ReadOptions(block_size=max(1 << 20, chunk_rows * 32), column_names=[*ML_RATINGS_CSV, *spare])
    ro.skip_rows = 1
    co = pacsv.ConvertOptions(column_types=types, strings_can_be_null=True)
    row = 0
    for t, bad in _stream_csv(path, ro, pacsv.ParseOptions(invalid_row_handler=counter), co, counter):
        for pos, c in zip(extra, spare, strict=True):
            filled = pc.fill_null(pc.not_equal(pc.utf8_trim_whitespace(t.column(c)), ""), False)
            hit = np.flatnonzero(np.asarray(filled))
            if len(hit):
                value = t.column(c)[int(hit[0])].as_py()
                raise DataError(
                    f"{path}: column {pos} has no name but holds {value!r} (data row {row + int(hit[0]) + 1}); "
                    f"only unnamed columns empty in every row are ignored"
                )
        row += t.num_rows
        yield t.select(list(ML_RATINGS_CSV)).rename_columns(["user_id", "movie_id", "rating", "timestamp"]), bad


def ignored_columns(units: list[ReadUnit]) -> list[dict[str, Any]]:
    """Columns the readers drop after checking them empty (for manifests), per input file."""
    out = []
    for u in units:
        if u.format == "movielens" and u.path.rsplit("/", 1)[-1] == "ratings.csv":
            extra = ratings_csv_extra_columns(u.path)
            if extra:
                out.append({"file": u.path, "columns": extra, "reason": "unnamed and empty in every row"})
    return out


def _read_movielens(
    unit: ReadUnit, columns: list[str] | None, chunk_rows: int, on_bad_rows: str
) -> Iterator[tuple[pa.Table, int]]:
    path = unit.path
    name = path.rsplit("/", 1)[-1]
    users, movies = movielens_sides(path)
    if name == "ratings.csv":
        chunks = _ratings_csv_chunks(path, chunk_rows, on_bad_rows)
    else:
        sep, n = ("\t", 4) if name == "u.data" else ("::", 4)
        cols = _split_lines(path, sep, n)
        whole = pa.table(
            {
                k: pc.cast(c, ty)
                for k, c, ty in zip(
                    ["user_id", "movie_id", "rating", "timestamp"],
                    cols,
                    [pa.int64(), pa.int64(), pa.float64(), pa.int64()],
                    strict=False,
                )
            }
        )
        chunks = ((whole.slice(i, chunk_rows), 0) for i in range(0, whole.num_rows, chunk_rows))
    for t, bad in chunks:
        # left joins by key look-up (Arrow's hash join cannot carry list columns such as genres);
        # rows keep their file order, so the split hash sees stable positions
        joined = {c: t.column(c) for c in t.column_names}
        for side, key in ((users, "user_id"), (movies, "movie_id")):
            if side is None:
                continue
            idx = pc.index_in(t.column(key), value_set=side.column(key).combine_chunks())
            for c in side.column_names:
                if c != key:
                    joined[c] = side.column(c).take(idx)
        out = {}
        for field in MOVIELENS_SCHEMA:
            out[field.name] = joined[field.name] if field.name in joined else pa.nulls(t.num_rows, field.type)
        t = pa.table(out, schema=MOVIELENS_SCHEMA)
        if columns is not None:
            t = t.select([c for c in t.column_names if c in columns])
        yield t, bad
