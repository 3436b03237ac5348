"""FeatureSpace: the fitted spec, as a versioned JSON document, and the one transform.

Why one object: training data (Ray Data ``map_batches``) and a serving request go through the
same ``transform``, so there is no train/serve skew. The document is plain JSON (no pickle):
the normalised spec, per feature its fitted state (vocabulary in id order with counts and the
OOV id, hash buckets, quantile boundaries, mean / std), and a content hash.

Id conventions (every id column is int64, local to its feature, ``0 <= id < num_rows``):

- vocabulary categorical / multivalent: ids ``0 .. V-1`` in vocabulary order (count desc, then
  value), ``V`` = the out-of-vocabulary id (rare, unseen and missing values); ``num_rows = V + 1``.
- ``hash_buckets: N``: ``stable_hash(value) % N`` (see ``hashing.py``), missing -> ``N``;
  ``num_rows = N + 1``.
- bucketized: ``i`` = number of boundaries ``<= x``, missing -> ``len(b) + 1``; ``num_rows = len(b) + 2``.
- crossed: ``combine_ids(component ids) % hash_buckets``; ``num_rows = hash_buckets``. A history
  cross (``CrossedFeature.history``) is not a prepared column: ``transform`` leaves it out and
  ``add_crosses`` computes it once the rows carry their history column (``widedeep.retrieval.liked``).
- candidate score (``CandidateScoreFeature``): ``i`` = number of boundaries ``<=`` the score;
  ``num_rows = len(b) + 1``. Not a prepared column either: ``widedeep.retrieval.candidate_scores``
  computes it from the history column and the candidate's id.
- history feature (``HistoryFeature``): the ids of its ``history`` feature, read from the liked
  column ``liked_column(history)`` itself (its deep table's column); ``num_rows`` = that feature's.
  Not a prepared column: ``widedeep.retrieval.liked`` computes the liked column.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from widedeep.errors import DataError, FeatureSpecError
from widedeep.features import hashing
from widedeep.features.columns import Problems, column_or_nulls, combine, to_float, to_string_lists, to_strings
from widedeep.features.spec import (
    BucketizedFeature,
    CrossedFeature,
    Feature,
    FeatureSpec,
    HistoryFeature,
    MultivalentFeature,
    NumericFeature,
    VocabularyFeature,
    cross_components,
    feature_column,
    is_computed,
    is_history_cross,
    liked_column,
    parse_condition,
    spec_from_dict,
)
from widedeep.paths import FS_ERRORS, Location

SCHEMA_VERSION = 1
DOC_KIND = "widedeep.feature_space"


@dataclass(frozen=True)
class TableInfo:
    """One embedding (deep) or linear (wide, dim 1) table of the model."""

    name: str
    column: str
    num_rows: int
    dim: int
    pooling: str
    multivalent: bool
    side: str


@dataclass
class TransformInfo:
    """What ``transform_checked`` saw: rows skipped (by reason) and OOV counts per feature."""

    rows_in: int
    rows_out: int
    skipped: dict[str, int]
    oov: dict[str, int]
    values: dict[str, int]
    kept: np.ndarray | None = None  # bool mask of input rows in the output (None: all)


class _VocabIndex:
    """Vocabulary look-up by sorted 64-bit stable hashes + verification of the string.

    Why not ``pc.index_in``: it rebuilds a hash table of the whole vocabulary on every call
    (~28 ms per 100k rows against a 200k vocabulary, per column). Here the vocabulary's hashes
    are sorted once per process; a batch costs one hash pass, a ``searchsorted`` and one string
    comparison to rule out collisions.
    """

    def __init__(self, vocab: list[str]):
        self.vocab = pa.array(vocab, type=pa.string())
        self.oov = len(vocab)
        h = hashing.hash_strings(self.vocab)
        self.order = np.argsort(h, kind="stable")
        self.sorted = h[self.order]
        self.collide = bool(len(h) > 1 and (np.diff(self.sorted) == 0).any())

    def lookup(self, values: pa.Array) -> np.ndarray:
        """int64 ids of ``values`` (nulls and unknown values -> the OOV id).

        The batch is dictionary-encoded first (Arrow C++), so only its distinct values are
        hashed and searched: real columns repeat values heavily.
        """
        n = len(values)
        if self.oov == 0 or n == 0:
            return np.full(n, self.oov, dtype=np.int64)
        enc = values if pa.types.is_dictionary(values.type) else pc.dictionary_encode(values)
        dict_ids = np.append(self._lookup_distinct(enc.dictionary), self.oov)
        idx = enc.indices
        if idx.null_count:
            idx = pc.fill_null(idx, len(enc.dictionary))
        return dict_ids[np.asarray(idx.to_numpy(zero_copy_only=False), dtype=np.int64)]

    def _lookup_distinct(self, values: pa.Array) -> np.ndarray:
        if self.collide:  # never seen in practice; exact fallback
            ids = pc.index_in(values, value_set=self.vocab)
            return np.asarray(pc.fill_null(ids, self.oov).to_numpy(zero_copy_only=False), dtype=np.int64)
        h = hashing.hash_strings(values)
        # the queries searched in sorted order: each search starts near the last one in cache
        # (measured 4.4x faster than searching random hashes: 11 vs 50 ms for 100k against 200k)
        by_hash = np.argsort(h)
        pos = np.empty(len(h), dtype=np.intp)
        pos[by_hash] = np.searchsorted(self.sorted, h[by_hash])
        np.minimum(pos, len(self.sorted) - 1, out=pos)
        hit = self.sorted[pos] == h
        cand = self.order[pos].astype(np.int64)
        same = pc.equal(self.vocab.take(pa.array(cand)), values)
        same = np.asarray(pc.fill_null(same, False), dtype=bool)
        return np.where(hit & same, cand, self.oov)


def hash_values(values: pa.Array) -> np.ndarray:
    """Stable hashes of a string array via its distinct values (nulls hash like "")."""
    enc = values if pa.types.is_dictionary(values.type) else pc.dictionary_encode(values)
    h = np.append(hashing.hash_strings(enc.dictionary), hashing.hash_strings([""]))
    idx = enc.indices
    if idx.null_count:
        idx = pc.fill_null(idx, len(enc.dictionary))
    return h[np.asarray(idx.to_numpy(zero_copy_only=False), dtype=np.int64)]


def _canonical(doc: dict[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)


class FeatureSpace:
    """A fitted FeatureSpec. Build with ``widedeep.features.fit`` or load with ``FeatureSpace.load``."""

    def __init__(self, spec: FeatureSpec, states: dict[str, dict[str, Any]], fit_info: dict[str, Any] | None = None):
        self.spec = spec
        self.states = states
        self.fit_info = dict(fit_info or {})
        self._features = {f.name: f for f in spec.features}
        for f in spec.features:
            if not isinstance(f, NumericFeature) and f.name not in states:
                raise FeatureSpecError(f"feature_space: no fitted state for feature {f.name!r}")

    # ----- document -----
    def to_dict(self) -> dict[str, Any]:
        return {
            "kind": DOC_KIND,
            "schema_version": SCHEMA_VERSION,
            "spec": self.spec.to_dict(),
            "spec_hash": self.spec.hash,
            "features": {name: self.states[name] for name in sorted(self.states)},
            "fit": self.fit_info,
        }

    @cached_property
    def content_hash(self) -> str:
        """sha256 hex of the canonical document (sorted keys, no whitespace)."""
        return hashlib.sha256(_canonical(self.to_dict()).encode("utf-8")).hexdigest()

    def to_json(self) -> str:
        """The canonical file text: deterministic, with the content hash included.

        One line per top-level key and per feature, each line encoded compactly: readable and
        diffable feature by feature, and written by ``json``'s C encoder (an ``indent`` makes
        ``json`` fall back to its pure-Python encoder, which took seconds of ``widedeep prepare``'s
        driver time for Criteo-sized vocabularies, between its fit and write passes)."""
        doc = self.to_dict()
        doc["content_hash"] = self.content_hash

        def enc(v: Any) -> str:
            return json.dumps(v, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)

        lines = []
        for key in sorted(doc):
            if key == "features":
                feats = doc[key]
                body = ",\n".join(f"  {enc(name)}: {enc(feats[name])}" for name in sorted(feats))
                lines.append(f" {enc(key)}: {{\n{body}\n }}" if feats else f" {enc(key)}: {{}}")
            else:
                lines.append(f" {enc(key)}: {enc(doc[key])}")
        return "{\n" + ",\n".join(lines) + "\n}\n"

    def save(self, path: str | Path) -> None:
        Path(path).write_text(self.to_json(), encoding="utf-8")

    @classmethod
    def from_json(cls, text: str, source: str = "feature_space.json") -> FeatureSpace:
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise FeatureSpecError(f"{source}: not valid JSON: {e}") from None
        if not isinstance(doc, dict) or doc.get("kind") != DOC_KIND:
            raise FeatureSpecError(
                f"{source}: not a widedeep feature space (kind={doc.get('kind') if isinstance(doc, dict) else None!r})"
            )
        if doc.get("schema_version") != SCHEMA_VERSION:
            raise FeatureSpecError(
                f"{source}: schema_version {doc.get('schema_version')!r}; this widedeep reads {SCHEMA_VERSION}"
            )
        stored = doc.pop("content_hash", None)
        fs = cls(spec_from_dict(doc["spec"]), doc["features"], doc.get("fit"))
        if stored is not None and stored != fs.content_hash:
            raise FeatureSpecError(
                f"{source}: content_hash {stored} does not match the document ({fs.content_hash}); "
                "the file was edited or corrupted"
            )
        return fs

    @classmethod
    def load(cls, path_or_uri: str | Path | Location) -> FeatureSpace:
        """The feature space in a ``feature_space.json`` file, or in a directory holding one (path or URI)."""
        loc = Location.of(path_or_uri, FeatureSpecError)
        if not loc.path.endswith(".json"):
            loc = loc / "feature_space.json"
        try:
            text = loc.read_text()
        except FS_ERRORS as e:
            raise FeatureSpecError(f"{loc}: cannot read feature space: {e}") from None
        return cls.from_json(text, source=str(loc))

    # ----- schema -----
    @property
    def task(self) -> str:
        return self.spec.label.task

    @property
    def user_key(self) -> str | None:
        return "user_key" if self.spec.user_key else None

    @property
    def item_key(self) -> str | None:
        return "item_key" if self.spec.item_key else None

    @property
    def features(self) -> tuple[Feature, ...]:
        return self.spec.features

    def feature(self, name: str) -> Feature:
        try:
            return self._features[name]
        except KeyError:
            raise KeyError(f"no feature named {name!r}; features: {list(self._features)}") from None

    def num_rows(self, name: str) -> int:
        f = self._features.get(name)
        if isinstance(f, HistoryFeature):  # ids of its history feature: one id space (and one size)
            return self.num_rows(f.history)
        return int(self.states[name]["num_rows"])

    def feature_side(self, name: str) -> str:
        f = self.feature(name)
        if not isinstance(f, CrossedFeature):
            return f.side
        sides = {self.feature_side(i) for i in f.inputs} | ({"user"} if f.history else set())
        if len(sides) == 1:
            return sides.pop()
        if "item" in sides or "pair" in sides:
            return "pair"
        return "context"

    def vocabulary(self, name: str) -> list:
        st = self.states.get(name, {})
        if "vocab" not in st:
            raise KeyError(f"feature {name!r} has no fitted vocabulary")
        return list(st["vocab"])

    def oov_id(self, name: str) -> int | None:
        st = self.states.get(name, {})
        return st.get("oov_id")

    def _tables(self, prefix: str, side_attr: str) -> list[TableInfo]:
        out = []
        for f in self.spec.features:
            if isinstance(f, NumericFeature) or not getattr(f, side_attr):
                continue
            multi = self.is_multivalent(f.name)
            dim = 1 if side_attr == "wide" else f.dim
            pooling = getattr(f, "combiner", "sum") if multi else "sum"
            # a history feature reads the liked column itself: the history crosses' very values
            column = liked_column(f.history) if isinstance(f, HistoryFeature) else f.name
            out.append(
                TableInfo(
                    f"{prefix}/{f.name}", column, self.num_rows(f.name), dim, pooling, multi, self.feature_side(f.name)
                )
            )
        return out

    @property
    def wide_tables(self) -> list[TableInfo]:
        return self._tables("wide", "wide")

    @property
    def deep_tables(self) -> list[TableInfo]:
        return self._tables("deep", "deep")

    @property
    def dense_columns(self) -> list[str]:
        return [f.name for f in self.spec.features if isinstance(f, NumericFeature)]

    def is_multivalent(self, name: str) -> bool:
        f = self.feature(name)
        if isinstance(f, (MultivalentFeature, HistoryFeature)):
            return True
        if isinstance(f, CrossedFeature):
            return f.history is not None or any(self.is_multivalent(i) for i in f.inputs)
        return False

    def raw_input_columns(self, side: str | None = None) -> list[str]:
        """Raw columns the transform reads (feature inputs; with side=None also label and keys)."""
        cols: list[str] = []
        for f in self.spec.features:
            c = feature_column(f)
            if c is None or (side is not None and f.side != side):
                continue
            if c not in cols:
                cols.append(c)
        if side is None:
            for c in (self.spec.label.source, self.spec.user_key, self.spec.item_key):
                if c and c not in cols:
                    cols.append(c)
        return cols

    def output_schema(self, require_label: bool = True) -> pa.Schema:
        fields = []
        for f in self.spec.features:
            if is_computed(f):
                continue  # not a prepared column (see the module doc)
            if isinstance(f, NumericFeature):
                fields.append(pa.field(f.name, pa.float32()))
            elif self.is_multivalent(f.name):
                fields.append(pa.field(f.name, pa.list_(pa.int64())))
            else:
                fields.append(pa.field(f.name, pa.int64()))
        if require_label:
            fields.append(pa.field("label", pa.float32()))
        return pa.schema(fields)

    # ----- transform -----
    @cached_property
    def _indexes(self) -> dict[str, _VocabIndex]:
        return {name: _VocabIndex(st["vocab"]) for name, st in self.states.items() if "vocab" in st}

    def with_lookup_indexes(self) -> FeatureSpace:
        """This space (``self``) with its vocabulary look-up indexes built now: a pickled copy
        carries them, so the tasks it is shipped to do not each hash and sort every vocabulary
        again (Criteo-shaped, 26 vocabularies of up to 200k values)."""
        self._indexes  # noqa: B018 - built and cached on the object
        return self

    def transform(
        self, table: pa.Table, *, require_label: bool = True, sides: tuple[str, ...] | list[str] | None = None
    ) -> pa.Table:
        """Raw columns -> prepared columns (ids, float32 numerics, float32 label, raw keys).

        ``sides`` (e.g. ``("user", "context")`` for a request without item fields) limits the
        output to those sides' base features and the crosses computable from them.
        Raises ``DataError`` naming the column and value for any row it cannot convert.
        """
        out, _ = self.transform_checked(table, require_label=require_label, on_bad_rows="error", sides=sides)
        return out

    def transform_records(
        self,
        records: list[dict[str, Any]],
        *,
        require_label: bool = False,
        sides: tuple[str, ...] | list[str] | None = None,
    ) -> pa.Table:
        """Transform raw records (dicts of raw column values): serving and tests."""
        return self.transform(records_to_table(records), require_label=require_label, sides=sides)

    def transform_checked(
        self,
        table: pa.Table,
        *,
        require_label: bool = True,
        on_bad_rows: str = "error",
        where: str = "",
        passthrough: tuple[str, ...] = (),
        sides: tuple[str, ...] | list[str] | None = None,
    ) -> tuple[pa.Table, TransformInfo]:
        """``transform`` that can skip bad rows (``on_bad_rows="skip"``) and reports counts.

        ``passthrough``: raw columns copied unchanged to the output (e.g. a split's time column).
        """
        n = table.num_rows
        problems = Problems(n)
        raw: dict[str, Any] = {}
        feats = self._selected(sides)
        for f in feats:
            if isinstance(f, CrossedFeature):
                continue
            col = column_or_nulls(table, feature_column(f), f.optional, f"feature {f.name!r}")
            if isinstance(f, (NumericFeature, BucketizedFeature)):
                x = to_float(col, feature_column(f), problems)
                raw[f.name] = self._numeric_pre(f, x, problems) if isinstance(f, NumericFeature) else x
            elif isinstance(f, MultivalentFeature):
                raw[f.name] = to_string_lists(col, feature_column(f), f.separator)
            else:
                raw[f.name] = to_strings(col, feature_column(f))
        label = None
        if require_label:
            label = label_values(self.spec, table, problems)
        if problems.any:
            if on_bad_rows != "skip":
                problems.raise_if_any(where)
            keep = ~problems.mask
            table = table.filter(pa.array(keep))
            raw = {k: _filter_raw(v, keep) for k, v in raw.items()}
            if label is not None:
                label = label[keep]
        cols: dict[str, pa.Array] = {}
        oov: dict[str, int] = {}
        nvals: dict[str, int] = {}
        for f in feats:
            if isinstance(f, CrossedFeature):
                continue
            st = self.states.get(f.name)
            v = raw[f.name]
            if isinstance(f, NumericFeature):
                cols[f.name] = pa.array(self._numeric_finish(f, st, v[0], v[1], where), type=pa.float32())
            elif isinstance(f, BucketizedFeature):
                b = np.asarray(st["boundaries"], dtype=np.float64)
                ids = np.searchsorted(b, v, side="right").astype(np.int64)
                cols[f.name] = pa.array(np.where(np.isnan(v), st["missing_id"], ids))
            elif isinstance(f, MultivalentFeature):
                values, offsets = v
                ids = self._encode_values(f, st, values)
                cols[f.name] = pa.ListArray.from_arrays(pa.array(offsets.astype(np.int32)), pa.array(ids))
                if "oov_id" in st:
                    oov[f.name] = int((ids == st["oov_id"]).sum())
                nvals[f.name] = len(ids)
            else:
                ids = self._encode_values(f, st, v)
                cols[f.name] = pa.array(ids)
                if "oov_id" in st:
                    oov[f.name] = int((ids == st["oov_id"]).sum())
                nvals[f.name] = len(ids)
        base = pa.table(cols) if cols else pa.table({"__n": pa.nulls(table.num_rows)}).drop_columns(["__n"])
        crossed = self.add_crosses(base, only=[f.name for f in feats if isinstance(f, CrossedFeature)])
        out_cols = {}
        for f in feats:
            out_cols[f.name] = crossed.column(f.name)
        if label is not None:
            out_cols["label"] = pa.array(label, type=pa.float32())
        for role, src in (("user_key", self.spec.user_key), ("item_key", self.spec.item_key)):
            if src is None:
                continue
            if src in table.column_names:
                out_cols[role] = combine(table.column(src))
            elif require_label:
                raise DataError(f"{where + ': ' if where else ''}missing column {src!r} (the spec's {role})")
        for c in passthrough:
            if c not in out_cols:
                out_cols[c] = combine(table.column(c))
        out = pa.table(out_cols)
        info = TransformInfo(
            n,
            out.num_rows,
            dict(problems.counts) if problems.any else {},
            oov,
            nvals,
            ~problems.mask if problems.any else None,
        )
        return out, info

    def _encode_values(self, f: VocabularyFeature, st: dict[str, Any], values: pa.Array) -> np.ndarray:
        if "hash_buckets" in st:
            ids = hashing.bucket(hash_values(values), st["hash_buckets"])
            if values.null_count:
                ids = np.where(np.asarray(values.is_null()), st["missing_id"], ids)
            return ids
        return self._indexes[f.name].lookup(values)

    @staticmethod
    def _numeric_pre(f: NumericFeature, x: np.ndarray, problems: Problems) -> tuple[np.ndarray, np.ndarray]:
        """(value after clip / log1p, missing mask); reports infinities / log1p domain errors."""
        return numeric_pre(f, x, problems)

    @staticmethod
    def _numeric_finish(
        f: NumericFeature, st: dict[str, Any], v: np.ndarray, missing: np.ndarray, where: str
    ) -> np.ndarray:
        v = v.copy()
        inf = np.isinf(v)
        if f.infinity == "missing":
            missing = missing | inf
        elif inf.any():  # "clip": to the training range ("error" rows were already reported)
            v[v == np.inf] = st["max"]
            v[v == -np.inf] = st["min"]
        v[missing] = st["fill"]
        if f.normalize == "cdf":
            b = np.asarray(st["boundaries"], dtype=np.float64)
            if len(b) == 0:
                return np.zeros_like(v)
            return np.searchsorted(b, v, side="right") / float(len(b))
        if f.normalize == "standard":
            return (v - st["mean"]) / (st["std"] if st["std"] > 0 else 1.0)
        return v

    @property
    def history_crosses(self) -> list[CrossedFeature]:
        """The history crosses (``CrossedFeature.history``), in spec order."""
        return [f for f in self.spec.features if isinstance(f, CrossedFeature) and f.history is not None]

    @property
    def liked_columns(self) -> list[str]:
        """The liked columns the rows need (``widedeep.retrieval.liked``): the history crosses'
        user side, which the history features read too (computed, never prepared)."""
        return sorted({liked_column(f.history) for f in self.history_crosses})

    def _selected(self, sides: tuple[str, ...] | list[str] | None) -> list[Feature]:
        """The features ``transform`` outputs: of ``sides``, never a history cross or a candidate
        score (no raw column)."""
        if sides is None:
            return [f for f in self.spec.features if not is_computed(f)]
        bad = set(sides) - {"user", "item", "context", "pair"}
        if bad:
            raise DataError(f"sides: unknown side(s) {sorted(bad)}; expected user, item, context")
        base = [
            f
            for f in self.spec.features
            if not isinstance(f, CrossedFeature) and not is_computed(f) and f.side in sides
        ]
        names = {f.name for f in base}
        crosses = [
            f
            for f in self.spec.features
            if isinstance(f, CrossedFeature) and not is_history_cross(f) and set(f.inputs) <= names
        ]
        return [f for f in self.spec.features if f in base or f in crosses]

    def add_crosses(self, ids: pa.Table, only: list[str] | None = None) -> pa.Table:
        """Append every crossed feature, computed from its components' id columns in ``ids``.

        Components may come from different sources (a request's user ids, a candidate's item
        ids), which is why crosses never look at raw values. A multivalent component makes the
        cross a list: the cartesian product of the row's component ids. A history cross reads the
        row's history column (``liked_column``, most recent first) and keeps at most ``max_pairs``
        pairs per row, those of the most recent history values.
        """
        out = ids
        for f in self.spec.features:
            if not isinstance(f, CrossedFeature) or (only is not None and f.name not in only):
                continue
            names = cross_components(f)
            missing = [i for i in names if i not in out.column_names]
            if missing:
                raise DataError(f"cross {f.name!r}: component id column(s) {missing} missing; have {out.column_names}")
            comps = [combine(out.column(i)) for i in names]
            arr = cross_ids(comps, f.hash_buckets)
            if f.history is not None:
                arr = _first_per_row(arr, f.max_pairs)
            if f.name in out.column_names:
                out = out.drop_columns([f.name])
            out = out.append_column(f.name, arr)
        return out


def records_to_table(records: list[dict[str, Any]]) -> pa.Table:
    """Records -> table; a column mixing types (``8`` and ``"7"``) becomes strings, as a
    categorical would read it, instead of failing Arrow's type inference."""
    if not records:
        raise DataError("no records to transform")
    keys: list[str] = []
    for r in records:
        if not isinstance(r, dict):
            raise DataError(f"a record must be a mapping of column -> value, got {type(r).__name__}")
        keys.extend(k for k in r if k not in keys)
    cols = {}
    for k in keys:
        vals = [r.get(k) for r in records]
        try:
            cols[k] = pa.array(vals)
        except (pa.ArrowInvalid, pa.ArrowTypeError):
            if any(isinstance(v, (list, tuple, dict)) for v in vals):
                raise DataError(
                    f"column {k!r}: values of mixed or unsupported types {sorted({type(v).__name__ for v in vals})}"
                ) from None
            cols[k] = pa.array([None if v is None else str(v) for v in vals], pa.string())
    return pa.table(cols)


def _filter_raw(v: Any, keep: np.ndarray) -> Any:
    if isinstance(v, tuple) and isinstance(v[0], np.ndarray):  # numeric: (value, missing)
        return (v[0][keep], v[1][keep])
    if isinstance(v, tuple):  # multivalent: (values, offsets)
        values, offsets = v
        lens = np.diff(offsets)[keep]
        starts = offsets[:-1][keep]
        idx = np.repeat(starts, lens) + (np.arange(lens.sum()) - np.repeat(np.cumsum(lens) - lens, lens))
        return values.take(pa.array(idx.astype(np.int64))), np.concatenate([[0], np.cumsum(lens)]).astype(np.int64)
    if isinstance(v, np.ndarray):
        return v[keep]
    return v.filter(pa.array(keep))


def numeric_pre(f: NumericFeature, x: np.ndarray, problems: Problems) -> tuple[np.ndarray, np.ndarray]:
    """Missing mask, infinity policy ("error"), clip and log1p, shared by fit and transform."""
    col = feature_column(f)
    missing = np.isnan(x) & ~problems.mask  # unparseable values were reported already
    inf = np.isinf(x)
    if f.infinity == "error" and inf.any():
        problems.add(inf, f"column {col!r}: infinite value", float(x[inf][0]))
    if f.missing == "error" and missing.any():
        problems.add(missing, f"column {col!r}: missing value", None)
    v = x
    if f.clip is not None:
        v = np.clip(v, f.clip[0], f.clip[1])
    if f.log1p:
        bad = (v <= -1) & ~missing
        if bad.any():
            problems.add(bad, f"column {col!r}: log1p of a value <= -1", float(v[bad][0]))
            v = np.where(bad, 0.0, v)
        v = np.log1p(v)
    return v, missing


def label_values(spec: FeatureSpec, table: pa.Table, problems: Problems) -> np.ndarray:
    """float64 label per row; reports nulls and values outside the declared set."""
    lab = spec.label
    src = lab.source
    if src not in table.column_names:
        raise DataError(f"missing label column {src!r}; input has: {', '.join(table.column_names)}")
    col = combine(table.column(src))
    null = np.asarray(col.is_null(), dtype=bool) if col.null_count else np.zeros(len(col), dtype=bool)
    if null.any():
        problems.add(null, f"label column {src!r}: missing value", None)
    if lab.values is not None:
        allowed = pa.array([_fmt(v) for v in lab.values], type=pa.string())
        s = to_strings(col, src)
        inset = np.asarray(pc.fill_null(pc.is_in(s, value_set=allowed), True), dtype=bool)
        if not inset.all():
            problems.add(
                ~inset,
                f"label column {src!r}: value outside the declared set {lab.values}",
                s[int(np.argmin(inset))].as_py(),
            )
    if lab.task == "regression":
        y = to_float(col, src, problems)
        return np.nan_to_num(y, nan=0.0)
    if lab.condition is not None:
        _, op, value = parse_condition(lab.condition)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or op == "in":
            s = to_strings(col, src)
            if op == "in":
                r = pc.is_in(s, value_set=pa.array([_fmt(v) for v in value], type=pa.string()))
            else:
                r = _compare(s, op, pa.scalar(_fmt(value), pa.string()))
            return np.asarray(pc.fill_null(r, False), dtype=np.float64)
        x = to_float(col, src, problems)
        with np.errstate(invalid="ignore"):
            res = {
                "==": x == value,
                "!=": x != value,
                ">=": x >= value,
                "<=": x <= value,
                ">": x > value,
                "<": x < value,
            }[op]
        return res.astype(np.float64)
    if lab.values is not None:  # [negative, positive]
        s = to_strings(col, src)
        return np.asarray(pc.fill_null(pc.equal(s, _fmt(lab.values[1])), False), dtype=np.float64)
    x = to_float(col, src, problems)
    bad = ~np.isnan(x) & (x != 0) & (x != 1)
    if bad.any():
        problems.add(bad, f"label column {src!r}: binary label outside {{0, 1}}", float(x[bad][0]))
    return np.nan_to_num(x, nan=0.0)


def _fmt(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def _compare(s: pa.Array, op: str, value: pa.Scalar) -> pa.Array:
    fn = {
        "==": pc.equal,
        "!=": pc.not_equal,
        ">=": pc.greater_equal,
        "<=": pc.less_equal,
        ">": pc.greater,
        "<": pc.less,
    }[op]
    return fn(s, value)


def _jagged(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(int64 values, int64 offsets[n+1]) of an int64 or list<int64> column."""
    arr = combine(arr)
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type):
        if arr.null_count:
            arr = pc.if_else(pc.is_null(arr), pa.scalar([], type=arr.type), arr)
            arr = combine(arr)
        offsets = np.asarray(arr.offsets, dtype=np.int64)
        values = np.asarray(
            arr.values.slice(int(offsets[0]), int(offsets[-1] - offsets[0])).to_numpy(zero_copy_only=False),
            dtype=np.int64,
        )
        return values, offsets - offsets[0]
    return np.asarray(arr.to_numpy(zero_copy_only=False), dtype=np.int64), np.arange(len(arr) + 1, dtype=np.int64)


def _first_per_row(arr: pa.Array, cap: int) -> pa.Array:
    """The first ``cap`` values of each list of ``arr`` (list<int64>)."""
    values, offsets = _jagged(arr)
    lens = np.minimum(np.diff(offsets), cap)
    if int(lens.sum()) == len(values):
        return arr
    new = np.zeros(len(lens) + 1, dtype=np.int64)
    np.cumsum(lens, out=new[1:])
    row = np.repeat(np.arange(len(lens)), lens)
    keep = offsets[row] + np.arange(int(new[-1])) - new[row]
    return pa.ListArray.from_arrays(pa.array(new.astype(np.int32)), pa.array(values[keep], type=pa.int64()))


def cross_ids(comps: list[pa.Array], buckets: int) -> pa.Array:
    """Hashed cross of aligned id columns (int64 or list<int64>); see ``hashing.combine_ids``."""
    if all(pa.types.is_integer(c.type) for c in comps):
        vals = [np.asarray(c.to_numpy(zero_copy_only=False), dtype=np.int64) for c in comps]
        return pa.array(hashing.bucket(hashing.combine_ids(vals), buckets))
    n = len(comps[0])
    tuples, offs = None, None
    for c in comps:
        v, o = _jagged(c)
        if tuples is None:
            tuples, offs = [v], o
            continue
        lc, ln = np.diff(offs), np.diff(o)
        new_lens = lc * ln
        new_offs = np.concatenate([[0], np.cumsum(new_lens)]).astype(np.int64)
        row = np.repeat(np.arange(n), new_lens)
        k = np.arange(int(new_offs[-1])) - new_offs[row]
        i, j = k // np.maximum(ln[row], 1), k % np.maximum(ln[row], 1)
        tuples = [t[offs[row] + i] for t in tuples] + [v[o[row] + j]]
        offs = new_offs
    ids = hashing.bucket(hashing.combine_ids(tuples), buckets) if len(tuples[0]) else np.zeros(0, np.int64)
    return pa.ListArray.from_arrays(pa.array(offs.astype(np.int32)), pa.array(ids, type=pa.int64()))
