"""One request through retrieval and ranking, in process: the code every deployment runs.

Stages (each deployment runs some of them; the fused Ingress runs all)::

    prepare   raw user/context fields -> FeatureSpace transform (the training code path) of the
              query-side features, merged over the known user's row of the bundle's user table;
              query crosses; the query's share of every score (``QueryPart``); the user vector
    retrieve  user vector -> top-N catalog rows (popularity for cold users), minus seen/excluded,
              merged with the item-to-item source queried with the user's liked items when the
              bundle carries one (``CandidateGenerator``, as offline evaluation)
    rank      candidate rows -> item-side ids from the catalog + pair crosses (``add_crosses``)
              + the candidate scores (``widedeep.retrieval.candidate_scores``, from the bundle's
              statistics) -> ``CandidateScorer`` (batched across requests) -> top-k

Only ids move between stages: a 1-row Arrow table of the query's prepared columns and int32
catalog rows, never raw item features or JSON dicts.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa

from widedeep.errors import CheckpointError, DataError, ServingError
from widedeep.features.spec import CrossedFeature, HistoryFeature, cross_components, feature_column
from widedeep.model.two_tower import HISTORY_COLUMN
from widedeep.retrieval.candidate_scores import candidate_score_features
from widedeep.retrieval.candidates import RANKER_TERMS, final_scores
from widedeep.retrieval.interactions import CSR
from widedeep.serve.bundle import ServingBundle
from widedeep.serve.scoring import QUERY_SIDES, QueryPart

_COLUMN_RE = re.compile(r"column '([^']+)'")
PRECOMPUTE_MAX_FLOATS = 128 * 2**20  # 512 MiB of float32 item x first-layer activations
TRANSFORM_CACHE = 4096  # transformed query-side rows kept per replica (the transform is a pure function)


def _hashable(v: Any) -> Any:
    # type-tagged, so 1, 1.0, True and "1" stay distinct keys
    return tuple((type(x).__name__, x) for x in v) if isinstance(v, list) else (type(v).__name__, v)


class RequestError(ServingError):
    """A request the bundle cannot serve as given; ``field`` is its dotted path (``user.age``)."""

    def __init__(self, field: str, message: str, status: int = 422) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
        self.status = status

    def __reduce__(self) -> tuple[Any, tuple[str, str, int]]:
        # rebuilt with its fields when it crosses a replica boundary (chain pipeline)
        return (RequestError, (self.field, self.message, self.status))


@dataclass
class Query:
    """A prepared request: everything the later stages need, all ids."""

    user_key: str | None
    known_user: bool
    row: pa.Table  # 1 row: query-side prepared columns (+ query crosses)
    part: QueryPart
    vector: np.ndarray | None  # None: cold start (popularity)
    oov: dict[str, tuple[int, int]]  # feature -> (oov ids, ids) of what the request transformed


def _sub_space(fs: Any, features: Sequence[Any]) -> Any:
    """A FeatureSpace restricted to ``features`` (same fitted states, same transform code)."""
    spec = dataclasses.replace(fs.spec, features=tuple(features))
    return type(fs)(spec, {f.name: fs.states[f.name] for f in features if f.name in fs.states})


class RecommendPipeline:
    """The stages above over one loaded bundle.

    Args:
        bundle: a verified ``ServingBundle``.

    Example::

        p = RecommendPipeline(load_bundle("BUNDLE"))
        items = p.recommend({"user_id": "u1"}, {"device": "ios"}, k=10, n=100)
    """

    def __init__(self, bundle: ServingBundle) -> None:
        self.bundle = bundle
        fs = self.fs = bundle.fs
        base = [f for f in fs.features if not isinstance(f, CrossedFeature) and not isinstance(f, HistoryFeature)]
        crosses = [f for f in fs.features if isinstance(f, CrossedFeature)]
        self.query_base = [f for f in base if f.side in QUERY_SIDES]
        self.raw_of = {f.name: feature_column(f) for f in self.query_base}
        self.user_fields = sorted({self.raw_of[f.name] for f in self.query_base if f.side == "user"})
        self.context_fields = sorted({self.raw_of[f.name] for f in self.query_base if f.side == "context"})
        self.user_key_field = fs.spec.user_key
        q_cross = [f for f in crosses if fs.feature_side(f.name) in QUERY_SIDES]
        pair = [f for f in crosses if fs.feature_side(f.name) == "pair"]
        self.query_cross_space = _sub_space(fs, self.query_base + q_cross) if q_cross else None
        self.pair_space = _sub_space(fs, base + pair) if pair else None
        self.pair_names = [f.name for f in pair]
        self.pair_inputs = sorted({i for f in pair for i in cross_components(f)})
        # the history crosses' user side: the user's liked columns, from the bundle's user table
        # (the history features' deep input reads them from the query row too)
        self.liked_names = fs.liked_columns
        # the candidate scores: from the same liked column and each candidate's id, as offline
        self.score_names = [f.name for f in candidate_score_features(fs)]
        self.tower_history = HISTORY_COLUMN in bundle.user_tower.columns()
        ordering = bundle.manifest.get("ordering") or {}
        self.rerank_blend = float(ordering.get("rerank_blend", 0.0))  # older bundles: the ranker alone
        self.temperature = float(ordering.get("temperature", 1.0))
        self.ranker_term = ordering.get("ranker_term", "log_sigmoid")  # older bundles: log sigmoid
        if self.ranker_term not in RANKER_TERMS:
            raise CheckpointError(
                f"bundle manifest: ordering.ranker_term must be one of {list(RANKER_TERMS)}, got {self.ranker_term!r}"
            )
        self._spaces: dict[frozenset[str], Any] = {}
        self._transformed: dict[tuple[Any, ...], tuple[pa.Table, Any]] = {}
        self.item_columns = bundle.ranker.candidate_columns()
        # item shares of the score precomputed once per catalog (bounded memory: else per request)
        hidden = max(bundle.ranker.hidden_dim, 1)
        self.precomputed = len(bundle.item_keys) * hidden <= PRECOMPUTE_MAX_FLOATS
        if self.precomputed:
            bundle.ranker.attach_catalog(bundle.items)
        computed = {*self.pair_names, *self.score_names}
        missing = [c for c in self.item_columns if c not in bundle.items.column_names and c not in computed]
        if missing:
            raise ServingError(f"{bundle.path}: items.parquet lacks the ranker's item column(s) {missing}")

    @property
    def version(self) -> str:
        return self.bundle.version

    # -- prepare -------------------------------------------------------------------------------
    def _space_for(self, names: frozenset[str]) -> Any:
        sp = self._spaces.get(names)
        if sp is None:
            sp = _sub_space(self.fs, [f for f in self.query_base if f.name in names])
            if len(self._spaces) < 256:
                self._spaces[names] = sp
        return sp

    def _check_fields(self, values: Mapping[str, Any], allowed: list[str], where: str, extra: str | None) -> None:
        for name in values:
            if name not in allowed and name != extra:
                raise RequestError(
                    f"{where}.{name}", f"unknown field; {where} fields are {allowed + ([extra] if extra else [])}"
                )

    def prepare(self, user: Mapping[str, Any], context: Mapping[str, Any]) -> Query:
        """Raw request fields -> ``Query`` (raises ``RequestError`` naming the field)."""
        self._check_fields(user, self.user_fields, "user", self.user_key_field)
        self._check_fields(context, self.context_fields, "context", None)
        b = self.bundle
        key = user.get(self.user_key_field) if self.user_key_field else None
        key_s = None if key is None else str(key)
        urow = b.user_rows.get(key_s) if key_s is not None else None
        # known user: request fields override the user table; the rest comes from the table
        todo = [f for f in self.query_base if f.side == "context" or urow is None or self.raw_of[f.name] in user]
        names = frozenset(f.name for f in todo)
        values: tuple[Any, ...] | None = tuple(
            (c, _hashable(user.get(c, context.get(c)))) for c in sorted({self.raw_of[f.name] for f in todo})
        )
        try:
            cached = self._transformed.get((names, values))
        except TypeError:  # an unhashable value: transform it (and fail on it) uncached
            cached, values = None, None
        if cached is None:
            cached = self._transform(todo, names, user, context)
            if values is not None:
                if len(self._transformed) >= TRANSFORM_CACHE:
                    self._transformed.pop(next(iter(self._transformed)))
                self._transformed[(names, values)] = cached
        out, info = cached
        return self._finish_query(out, info, key_s, urow, bool([c for c in user if c != self.user_key_field]))

    def _transform(
        self, todo: list[Any], names: frozenset[str], user: Mapping[str, Any], context: Mapping[str, Any]
    ) -> tuple[pa.Table, Any]:
        raw: dict[str, pa.Array] = {}
        where = {**{c: f"context.{c}" for c in context}, **{c: f"user.{c}" for c in user}}
        for f in todo:
            col = self.raw_of[f.name]
            if col in raw:
                continue
            v = user.get(col, context.get(col))
            try:
                raw[col] = pa.array([v]) if v is not None else pa.nulls(1)
            except (pa.ArrowInvalid, pa.ArrowTypeError) as e:
                raise RequestError(
                    where.get(col, col), f"cannot be read as one value or a list of values of one type: {e}"
                ) from None
        space = self._space_for(names)
        try:
            return space.transform_checked(pa.table(raw) if raw else pa.table({"_": [0]}), require_label=False)
        except DataError as e:
            m = _COLUMN_RE.search(str(e))
            field = where.get(m.group(1), m.group(1)) if m else "user"
            raise RequestError(field, re.sub(r" \(use --on-bad-rows[^)]*\)", "", str(e))) from None

    def _finish_query(self, out: pa.Table, info: Any, key_s: str | None, urow: int | None, given_user: bool) -> Query:
        b = self.bundle
        cols: dict[str, Any] = {}
        for f in self.query_base:
            if f.name in out.column_names:
                cols[f.name] = out.column(f.name)
            else:
                assert b.users is not None and urow is not None
                cols[f.name] = b.users.column(f.name).slice(urow, 1)
        for name in self.liked_names:  # an unknown user has no history: empty lists
            users = b.users
            known = urow is not None and users is not None and name in users.column_names
            cols[name] = users.column(name).slice(urow, 1) if known else pa.array([[]], pa.list_(pa.int64()))
        row = pa.table(cols)
        if self.query_cross_space is not None:
            row = self.query_cross_space.add_crosses(row)
        part = b.ranker.query_part(row)
        placeable = urow is not None or given_user
        vector = b.user_tower.embed(self._tower_row(row, urow))[0] if placeable else None
        oov = {name: (info.oov.get(name, 0), n) for name, n in info.values.items()}
        return Query(key_s, urow is not None, row, part, vector, oov)

    def _tower_row(self, row: pa.Table, urow: int | None) -> pa.Table:
        """The user tower's input: the query row, plus the user's history from the bundle when the
        tower pools one (an unknown user has none: an empty bag pools to zeros)."""
        if not self.tower_history:
            return row
        users = self.bundle.users
        if urow is not None and users is not None and HISTORY_COLUMN in users.column_names:
            return row.append_column(HISTORY_COLUMN, users.column(HISTORY_COLUMN).slice(urow, 1))
        return row.append_column(HISTORY_COLUMN, pa.array([[]], pa.list_(pa.int64())))

    # -- retrieve ------------------------------------------------------------------------------
    def exclude_rows(self, item_ids: Sequence[Any]) -> np.ndarray:
        """Catalog rows of excluded item ids (ids not in the catalog can never be returned anyway)."""
        rows = self.bundle.item_rows
        return np.asarray([rows[s] for s in map(str, item_ids) if s in rows], dtype=np.int64)

    def retrieve(self, q: Query, n: int, exclude: np.ndarray | None = None) -> np.ndarray:
        """Top-``n`` candidate rows (int32), the user's seen items and ``exclude`` removed."""
        return self.retrieve_many([q], n, [exclude])[0]

    def retrieve_many(
        self, queries: Sequence[Query], n: int, excludes: Sequence[np.ndarray | None]
    ) -> list[np.ndarray]:
        """``retrieve`` for a batch: one index search for all users (the item matrix is read once)."""
        return [rows for rows, _ in self.retrieve_scored(queries, n, excludes)]

    def retrieve_scored(
        self, queries: Sequence[Query], n: int, excludes: Sequence[np.ndarray | None]
    ) -> list[tuple[np.ndarray, np.ndarray | None]]:
        """``(rows int32, retrieval logits or None for a cold user)`` per query (one index search)."""
        b = self.bundle
        lists = []
        for q, ex in zip(queries, excludes, strict=False):
            parts = [] if ex is None else [ex]
            if q.user_key is not None and q.user_key in b.seen:
                parts.append(b.seen[q.user_key])
            lists.append(np.unique(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64))
        indptr = np.zeros(len(lists) + 1, dtype=np.int64)
        np.cumsum([len(x) for x in lists], out=indptr[1:])
        indices = np.concatenate(lists).astype(np.int64) if lists else np.zeros(0, np.int64)
        cold = np.array([q.vector is None for q in queries])
        dim = b.user_tower.spec.output_dim
        vecs = np.stack([np.zeros(dim, np.float32) if q.vector is None else q.vector for q in queries]).astype(
            np.float32
        )
        rows, scores = b.generator.candidates_batch(
            None if cold.all() else vecs,
            n,
            CSR(indptr, indices, len(b.item_keys)),
            cold=cold,
            recent=self._liked(queries),
        )
        out = []
        for r, sc, c in zip(rows, scores, cold, strict=False):
            keep = r >= 0
            out.append((r[keep].astype(np.int32), None if c else (sc[keep] / self.temperature).astype(np.float32)))
        return out

    def _liked(self, queries: Sequence[Query]) -> CSR | None:
        """Each query's positive catalog rows (the item-to-item source's input; unknown users: none)."""
        b = self.bundle
        if b.generator.neighbors is None:
            return None
        lists = [
            b.liked.get(q.user_key, np.zeros(0, np.int64)) if q.user_key is not None else np.zeros(0, np.int64)
            for q in queries
        ]
        indptr = np.zeros(len(lists) + 1, dtype=np.int64)
        np.cumsum([len(x) for x in lists], out=indptr[1:])
        return CSR(indptr, np.concatenate(lists).astype(np.int64), len(b.item_keys))

    def final_order(self, logits: np.ndarray, retrieval_logits: np.ndarray | None) -> np.ndarray | None:
        """The re-ranked order's key (``final_scores``, as offline evaluation), None: the ranker alone."""
        if not self.rerank_blend or retrieval_logits is None:
            return None
        return final_scores(logits, retrieval_logits, self.rerank_blend, self.ranker_term)

    def serve_batch(
        self, jobs: Sequence[tuple[Query, np.ndarray | None, np.ndarray | None]], n: int
    ) -> tuple[list[tuple[np.ndarray, np.ndarray, np.ndarray | None]], float, float]:
        """Retrieve (jobs without rows) and score a batch of requests:
        ``([(rows, logits, order key or None)], retrieve_ms, rank_ms)``.

        ``jobs``: ``(query, candidate rows or None to retrieve, excluded rows)``; retrieved jobs get
        the offline evaluation's order key (``final_order``), caller-given rows the ranker's.
        """
        t0 = time.perf_counter()
        todo = [i for i, (_, rows, _) in enumerate(jobs) if rows is None]
        all_rows: list[np.ndarray | None] = [rows for _, rows, _ in jobs]
        retrieval: list[np.ndarray | None] = [None] * len(jobs)
        if todo:
            scored = self.retrieve_scored([jobs[i][0] for i in todo], n, [jobs[i][2] for i in todo])
            for i, (rows, rl) in zip(todo, scored, strict=False):
                all_rows[i], retrieval[i] = rows, rl
        t1 = time.perf_counter()
        logits = self.score([(q.part, q.row, r) for (q, _, _), r in zip(jobs, all_rows, strict=False)])
        keys = [self.final_order(lg, rl) for lg, rl in zip(logits, retrieval, strict=False)]
        t2 = time.perf_counter()
        return list(zip(all_rows, logits, keys, strict=False)), (t1 - t0) * 1e3, (t2 - t1) * 1e3  # type: ignore[arg-type]

    # -- rank ----------------------------------------------------------------------------------
    def item_rows(self, item_ids: Sequence[Any], field: str = "items") -> np.ndarray:
        """Catalog rows of the given ids, in order; an unknown id is a ``RequestError``."""
        rows = self.bundle.item_rows
        out = np.empty(len(item_ids), dtype=np.int32)
        for i, s in enumerate(map(str, item_ids)):
            r = rows.get(s)
            if r is None:
                raise RequestError(f"{field}[{i}]", f"unknown item {item_ids[i]!r} (not in the bundle's catalog)")
            out[i] = r
        return out

    def candidate_table(self, q_row: pa.Table, rows: np.ndarray, only_pairs: bool = False) -> pa.Table:
        """Item-side ids of ``rows`` from the catalog plus the pair crosses with the query's ids
        (``only_pairs``: just the pair crosses, for the precomputed-catalog path)."""
        idx = pa.array(rows.astype(np.int64, copy=False))
        items = self.bundle.items
        computed = {*self.pair_names, *self.score_names}
        cols = {} if only_pairs else {c: items.column(c).take(idx) for c in self.item_columns if c not in computed}
        if self.pair_space is not None:
            zeros = pa.array(np.zeros(len(rows), dtype=np.int64))
            comps = {
                c: (cols[c] if c in cols else items.column(c).take(idx))
                if c in items.column_names
                else q_row.column(c).take(zeros)
                for c in self.pair_inputs
            }
            crossed = self.pair_space.add_crosses(pa.table(comps))
            for name in self.pair_names:
                cols[name] = crossed.column(name)
            if self.score_names:
                stats = self.bundle.candidate_stats
                assert stats is not None  # load_bundle refuses a bundle without them
                cols |= stats.columns(self.fs, crossed)
        return pa.table(cols)

    def score(self, queries: Sequence[tuple[QueryPart, pa.Table, np.ndarray]]) -> list[np.ndarray]:
        """Logits for a batch of ``(query part, query row, candidate rows)``: one MLP call for all."""
        ranker = self.bundle.ranker
        if self.precomputed:
            pairs = [
                self.candidate_table(row, rows, only_pairs=True) if self.pair_space is not None else None
                for _, row, rows in queries
            ]
            return ranker.score_rows([p for p, _, _ in queries], [rows for _, _, rows in queries], pairs)
        tables = [self.candidate_table(row, rows) for _, row, rows in queries]
        return ranker.score([p for p, _, _ in queries], tables)

    def top_k(
        self, rows: np.ndarray, logits: np.ndarray, k: int, key: np.ndarray | None = None
    ) -> list[tuple[Any, float]]:
        """The ``k`` best of ``rows`` by ``key`` (``final_order``; default the ranker's logits), each
        with the ranker's score (probability for binary tasks)."""
        order = np.argsort(-(logits if key is None else key), kind="stable")[:k]
        scores = self.bundle.ranker.predict(logits[order])
        keys = self.bundle.item_keys[rows[order]]
        return [(k_.item() if hasattr(k_, "item") else k_, float(s)) for k_, s in zip(keys, scores, strict=False)]

    def recommend(
        self, user: Mapping[str, Any], context: Mapping[str, Any], k: int, n: int, exclude: Sequence[Any] = ()
    ) -> list[tuple[Any, float]]:
        """The whole request in one call (the in-process reference the benchmark times)."""
        q = self.prepare(user, context)
        ((rows, logits, key),), _, _ = self.serve_batch([(q, None, self.exclude_rows(exclude) if exclude else None)], n)
        return self.top_k(rows, logits, k, key)

    def rank(self, user: Mapping[str, Any], context: Mapping[str, Any], items: Sequence[Any]) -> list[float]:
        q = self.prepare(user, context)
        rows = self.item_rows(items)
        (logits,) = self.score([(q.part, q.row, rows)])
        return [float(x) for x in self.bundle.ranker.predict(logits)]
