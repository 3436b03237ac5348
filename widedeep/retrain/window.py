"""The new window's data, and the same rows as the other model's FeatureSpace sees them.

``prepare_window`` runs ``widedeep prepare`` on the window's raw files with the serving
FeatureSpace extended (existing ids kept, new values get new ids per the spec). ``remap_split``
writes a prepared split's rows as another FeatureSpace of the same spec would have prepared them
(``widedeep.features.extend.remap_ids``): the serving model scores the window through it (its
new values become the serving model's OOV id, exactly what serving would do), and the candidate
scores the serving model's own held-out slice.
"""

from __future__ import annotations

import logging
from typing import Any

import pyarrow.parquet as pq

from widedeep.data.prepare import PrepareOptions, prepare
from widedeep.errors import DataError
from widedeep.features import FeatureSpace
from widedeep.features.extend import remap_ids
from widedeep.paths import FS_ERRORS, Location, short_error
from widedeep.retrieval.data import parquet_files

log = logging.getLogger(__name__)


def prepare_window(
    serving_fs: FeatureSpace, inputs: list[str], out: str, split: str, on_bad_rows: str = "error"
) -> dict[str, Any]:
    """Prepare the window at ``inputs`` into ``out`` with ``serving_fs`` extended; the manifest."""
    opts = PrepareOptions(inputs=list(inputs), out=out, split=split, on_bad_rows=on_bad_rows)
    return prepare(serving_fs.spec, opts, extend=serving_fs)


def remap_split(src: str | Location, source: FeatureSpace, target: FeatureSpace, out: str | Location) -> Location:
    """Write every shard of the prepared split ``src`` (ids of ``source``) as ``target`` ids to ``out``."""
    src_loc, out_loc = Location.of(src), Location.of(out)
    files = parquet_files(src_loc)
    if not files:
        raise DataError(f"{src_loc}: no prepared Parquet shards")
    out_loc.fs.create_dir(out_loc.path, recursive=True)
    rows = 0
    for f in files:
        try:
            table = pq.read_table(f.path, filesystem=f.fs)
            pq.write_table(remap_ids(table, source, target), (out_loc / f.name).path, filesystem=out_loc.fs)
        except FS_ERRORS as e:
            raise DataError(f"{f}: cannot remap prepared rows ({short_error(e)})") from None
        rows += table.num_rows
    log.info("remapped %d rows of %s to FeatureSpace %s -> %s", rows, src_loc, target.content_hash[:12], out_loc)
    return out_loc


def remap_prepared(
    src_root: str | Location,
    source: FeatureSpace,
    target: FeatureSpace,
    out_root: str | Location,
    splits: tuple[str, ...],
) -> Location:
    """``remap_split`` of several splits, plus ``target``'s ``feature_space.json``: a prepared
    directory of ``target`` (what evaluation and top-K read)."""
    src, out = Location.of(src_root), Location.of(out_root)
    out.fs.create_dir(out.path, recursive=True)
    for s in splits:
        remap_split(src / s, source, target, out / s)
    with out.fs.open_output_stream((out / "feature_space.json").path) as f:
        f.write(target.to_json().encode("utf-8"))
    return out
