"""Candidate-aware Wide & Deep scoring: one request = one user (+ context) and N candidates.

Why not ``model(batch)`` on N copies of the user's row: every user/context feature would be
looked up N times and multiplied by its columns of the first MLP layer N times, although its
result is the same for every candidate. Wide & Deep is linear up to the first activation, so::

    wide logit(u, i)  = bias + sum_{t in Q} w_t[u]  +  sum_{t in C} w_t[i]
    first layer(u, i) = W1[:, Q] x_Q(u)  +  W1[:, C] x_C(i)  + b1

where ``Q`` are the query-side (user / context) tables and numerics and ``C`` the candidate-side
(item / pair) ones. The ``Q`` terms are computed once per request and broadcast over its
candidates; only the ``C`` terms and the MLP above the first layer run per candidate. Requests
batched together (``@serve.batch``) share one MLP call over all their candidates.

The scorer reads its own safetensors format (``RankerWeights``), extracted from a trained
``WideAndDeep`` by ``extract_ranker``: serving imports neither the training code nor the kernel.
``tests/serve/test_scoring.py`` checks it against ``model(batch)`` on the repeated batch.

Shape letters: ``R`` requests in a batch, ``N`` candidates of one request, ``M`` = sum of N,
``H`` width of the first hidden layer.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from widedeep.errors import CheckpointError
from widedeep.features import TableInfo

QUERY_SIDES = ("user", "context")
CANDIDATE_SIDES = ("item", "pair")
RANKER_FORMAT = "widedeep.ranker/1"
_ACT = {"relu": torch.relu, "gelu": F.gelu, "silu": F.silu, "tanh": torch.tanh}


@dataclass(frozen=True)
class DenseSpec:
    """One normalised numeric column of the MLP input and its side."""

    name: str
    side: str


@dataclass(frozen=True)
class RankerSpec:
    """The structure of a ranker: which tables, which numerics, the MLP; stored as JSON."""

    task: str
    feature_space_hash: str
    wide_tables: list[TableInfo]
    deep_tables: list[TableInfo]
    dense: list[DenseSpec]
    n_linear: int
    activation: str
    has_wide: bool
    has_deep: bool
    numeric_encoding: str = "none"  # WideAndDeep.encode_numerics: none | ple | periodic
    numeric_bins: int = 1
    numeric_linear_wide: bool = False

    def numeric_width(self) -> int:
        enc = self.numeric_encoding
        return 1 if enc == "none" else self.numeric_bins if enc == "ple" else 2 * self.numeric_bins

    def to_json(self) -> str:
        return json.dumps({"format": RANKER_FORMAT, **asdict(self)}, indent=2, sort_keys=True)

    @staticmethod
    def from_json(text: str, where: str = "ranker.json") -> RankerSpec:
        d = json.loads(text)
        if d.pop("format", None) != RANKER_FORMAT:
            raise CheckpointError(f"{where}: not a {RANKER_FORMAT} document")
        d["wide_tables"] = [TableInfo(**t) for t in d["wide_tables"]]
        d["deep_tables"] = [TableInfo(**t) for t in d["deep_tables"]]
        d["dense"] = [DenseSpec(**x) for x in d["dense"]]
        return RankerSpec(**d)


def extract_ranker(model: Any, fs: Any) -> tuple[RankerSpec, dict[str, torch.Tensor]]:
    """Read a trained ``WideAndDeep``'s tables and MLP into ``(spec, tensors)``.

    Relies on the attributes ``widedeep.model.wide_deep`` documents for serving: ``wide_tbe``,
    ``deep_tbe``, ``wide_bias``, ``mlp`` and ``deep_input_layout()`` (deep tables, then numerics).
    """

    def tables(infos: Sequence[Any]) -> list[TableInfo]:
        return [
            TableInfo(t.name, t.column, int(t.num_rows), int(t.dim), t.pooling, bool(t.multivalent), t.side)
            for t in infos
        ]

    tensors: dict[str, torch.Tensor] = {}
    has_wide = model.wide_tbe is not None
    has_deep = model.mlp is not None
    if has_wide:
        tensors["wide.bias"] = model.wide_bias.detach().reshape(1).clone()
        for i in range(len(model.wide_tables)):
            tensors[f"wide.{i}"] = model.wide_tbe.table_weight(i).detach().reshape(-1).clone()
    linears: list[torch.nn.Linear] = []
    if has_deep:
        for i in range(len(model.deep_tables)):
            tensors[f"deep.{i}"] = model.deep_tbe.table_weight(i).detach().clone()
        linears = [m for m in model.mlp.layers if isinstance(m, torch.nn.Linear)]
        if getattr(model, "periodic_freq", None) is not None:
            tensors["numeric.periodic_freq"] = model.periodic_freq.detach().clone()
        for j, lin in enumerate(linears):
            tensors[f"mlp.{j}.weight"] = lin.weight.detach().clone()
            tensors[f"mlp.{j}.bias"] = lin.bias.detach().clone()
    numeric_linear = getattr(model, "numeric_linear", None)
    if numeric_linear is not None:
        tensors["wide.numeric_linear"] = numeric_linear.weight.detach().reshape(-1).clone()
    if has_deep:
        layout = [name for name, _, _ in model.deep_input_layout()]
        expect = [t.name for t in model.deep_tables] + list(model.dense_columns)
        if layout != expect:
            raise CheckpointError(f"ranker: MLP input layout {layout} is not deep tables then numerics {expect}")
    spec = RankerSpec(
        task=str(model.task),
        feature_space_hash=str(fs.content_hash),
        wide_tables=tables(model.wide_tables) if has_wide else [],
        deep_tables=tables(model.deep_tables) if has_deep else [],
        dense=[DenseSpec(c, fs.feature_side(c)) for c in model.dense_columns]
        if has_deep or numeric_linear is not None
        else [],
        n_linear=len(linears),
        activation=str(model.cfg.activation),
        has_wide=has_wide,
        has_deep=has_deep,
        numeric_encoding=str(getattr(model.cfg, "numeric_encoding", "none")),
        numeric_bins=int(getattr(model.cfg, "numeric_bins", 1)),
        numeric_linear_wide=numeric_linear is not None,
    )
    return spec, {k: v.contiguous() for k, v in tensors.items()}


def save_ranker(directory: Path, spec: RankerSpec, tensors: dict[str, torch.Tensor]) -> None:
    save_file(tensors, str(directory / "ranker.safetensors"))
    (directory / "ranker.json").write_text(spec.to_json())


def load_ranker(directory: Path) -> tuple[RankerSpec, dict[str, torch.Tensor]]:
    spec = RankerSpec.from_json((directory / "ranker.json").read_text(), str(directory / "ranker.json"))
    return spec, load_file(str(directory / "ranker.safetensors"))


@dataclass
class QueryPart:
    """What one request contributes to every one of its candidates' scores."""

    wide: torch.Tensor  # scalar: bias + query-side wide weights
    hidden: torch.Tensor  # [H]: W1[:, Q] x_Q + b1 (zeros when the model has no deep part)


def _ids(col: pa.ChunkedArray | pa.Array, multivalent: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(ids int64, bag offsets or None when every row has exactly one id)."""
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_list(arr.type) or pa.types.is_large_list(arr.type) or multivalent:
        lengths = pc.list_value_length(arr).fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64)
        flat = pc.list_flatten(arr).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        offsets = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1], out=offsets[1:])
        return torch.from_numpy(np.array(flat, dtype=np.int64)), torch.from_numpy(offsets)
    return torch.from_numpy(np.array(arr.to_numpy(zero_copy_only=False), dtype=np.int64)), None


def _pool(weight: torch.Tensor, table: pa.Table, t: TableInfo) -> torch.Tensor:
    """Pooled rows ``[B, dim]`` of one table for every row of ``table``."""
    ids, offsets = _ids(table.column(t.column), t.multivalent)
    w = weight if weight.dim() == 2 else weight.unsqueeze(1)
    if offsets is None:
        return F.embedding(ids, w)
    return F.embedding_bag(ids, w, offsets, mode=t.pooling)


class CandidateScorer:
    """Scores candidates for requests, doing user/context work once per request.

    Args:
        spec: the ranker's structure.
        tensors: its weights (``extract_ranker`` / ``load_ranker``).

    Example::

        scorer = CandidateScorer(*load_ranker(bundle_dir))
        q = scorer.query_part(user_row)            # pa.Table, 1 row: user + context columns
        scores = scorer.score([q], [cand_table])   # cand_table: N rows of item + pair columns
    """

    def __init__(self, spec: RankerSpec, tensors: dict[str, torch.Tensor]) -> None:
        self.spec = spec
        self.t = tensors
        self.act = _ACT[spec.activation]
        self.wide_q = [(i, t) for i, t in enumerate(spec.wide_tables) if t.side in QUERY_SIDES]
        self.wide_c = [(i, t) for i, t in enumerate(spec.wide_tables) if t.side not in QUERY_SIDES]
        self.wide_i = [(i, t) for i, t in self.wide_c if t.side != "pair"]
        self.wide_p = [(i, t) for i, t in self.wide_c if t.side == "pair"]
        self.hidden_dim = 0
        self.item_wide: torch.Tensor | None = None  # [n_items] once a catalog is attached
        self.item_hidden: torch.Tensor | None = None  # [n_items, H]
        # numerics: (index among all numerics, name) of each side
        self.dense_q = [(j, d.name) for j, d in enumerate(spec.dense) if d.side in QUERY_SIDES]
        self.dense_c = [(j, d.name) for j, d in enumerate(spec.dense) if d.side not in QUERY_SIDES]
        if spec.has_deep:
            w1 = tensors["mlp.0.weight"]  # [H, in]
            self.hidden_dim = int(w1.shape[0])
            cols_q: list[int] = []
            cols_c: list[int] = []
            cols_i: list[int] = []
            cols_p: list[int] = []
            c = 0
            self.deep_q: list[tuple[int, TableInfo]] = []
            self.deep_c: list[tuple[int, TableInfo]] = []
            for i, t in enumerate(spec.deep_tables):
                (cols_q if t.side in QUERY_SIDES else cols_c).extend(range(c, c + t.dim))
                if t.side not in QUERY_SIDES:
                    (cols_p if t.side == "pair" else cols_i).extend(range(c, c + t.dim))
                (self.deep_q if t.side in QUERY_SIDES else self.deep_c).append((i, t))
                c += t.dim
            width = spec.numeric_width()
            for d in spec.dense:
                (cols_q if d.side in QUERY_SIDES else cols_c).extend(range(c, c + width))
                if d.side not in QUERY_SIDES:
                    cols_i.extend(range(c, c + width))
                c += width
            self.deep_i = [(i, t) for i, t in self.deep_c if t.side != "pair"]
            self.deep_p = [(i, t) for i, t in self.deep_c if t.side == "pair"]
            if c != w1.shape[1]:
                raise CheckpointError(f"ranker: MLP input has {w1.shape[1]} columns, the tables and numerics {c}")
            # transposed slices, so a [B, |Q|] input times W1q gives [B, H]
            self.w1_q = w1[:, cols_q].T.contiguous()
            self.w1_c = w1[:, cols_c].T.contiguous()
            self.w1_i = w1[:, cols_i].T.contiguous()
            self.w1_p = w1[:, cols_p].T.contiguous()
            self.b1 = tensors["mlp.0.bias"]

    # -- columns each side reads -------------------------------------------------------------
    def query_columns(self) -> list[str]:
        cols = [t.column for _, t in self.wide_q]
        if self.spec.has_deep:
            cols += [t.column for _, t in self.deep_q]
        cols += [name for _, name in self.dense_q]
        return list(dict.fromkeys(cols))

    def candidate_columns(self) -> list[str]:
        cols = [t.column for _, t in self.wide_c]
        if self.spec.has_deep:
            cols += [t.column for _, t in self.deep_c]
        cols += [name for _, name in self.dense_c]
        return list(dict.fromkeys(cols))

    # -- the two halves ------------------------------------------------------------------------
    def _wide_sum(self, table: pa.Table, tables: list[tuple[int, TableInfo]], rows: int) -> torch.Tensor:
        out = torch.zeros(rows)
        for i, t in tables:
            out += _pool(self.t[f"wide.{i}"], table, t).reshape(rows)
        return out

    @staticmethod
    def _dense(table: pa.Table, dense: list[tuple[int, str]]) -> torch.Tensor:
        cols = [np.array(table.column(name).to_numpy(), dtype=np.float32) for _, name in dense]
        return torch.from_numpy(np.stack(cols, axis=1)) if cols else torch.zeros(table.num_rows, 0)

    def _encode(self, x: torch.Tensor, dense: list[tuple[int, str]]) -> torch.Tensor:
        """``WideAndDeep.encode_numerics`` for a subset of the numerics (their global indexes)."""
        enc = self.spec.numeric_encoding
        if enc == "none" or not dense:
            return x
        if enc == "ple":
            lo = torch.arange(self.spec.numeric_bins, dtype=torch.float32) / self.spec.numeric_bins
            return ((x.unsqueeze(-1) - lo) * self.spec.numeric_bins).clamp(0.0, 1.0).flatten(1)
        freq = self.t["numeric.periodic_freq"][[j for j, _ in dense]]  # [n, K]
        v = 2 * torch.pi * x.unsqueeze(-1) * freq
        return torch.cat([torch.sin(v), torch.cos(v)], dim=-1).flatten(1)

    def _numeric_wide(self, x: torch.Tensor, dense: list[tuple[int, str]]) -> torch.Tensor:
        """The wide side's linear term on the numerics (on their encoding when there is a deep part)."""
        if not self.spec.numeric_linear_wide or not dense:
            return torch.zeros(x.shape[0])
        w = self.t["wide.numeric_linear"]
        if not self.spec.has_deep:
            return x @ w[[j for j, _ in dense]]
        width = self.spec.numeric_width()
        return self._encode(x, dense) @ w[[j * width + c for j, _ in dense for c in range(width)]]

    def _deep_input(
        self, table: pa.Table, tables: list[tuple[int, TableInfo]], x: torch.Tensor, dense: list[tuple[int, str]]
    ) -> torch.Tensor:
        parts = [_pool(self.t[f"deep.{i}"], table, t) for i, t in tables]
        if dense:
            parts.append(self._encode(x, dense))
        if not parts:
            return torch.zeros(table.num_rows, 0)
        return torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]

    @torch.no_grad()
    def query_part(self, query: pa.Table) -> QueryPart:
        """The request's share of every score, from a 1-row table of user + context columns."""
        wide = torch.zeros(())
        x = self._dense(query, self.dense_q)
        if self.spec.has_wide:
            wide = (self._wide_sum(query, self.wide_q, 1) + self._numeric_wide(x, self.dense_q))[0] + self.t[
                "wide.bias"
            ][0]
        hidden = torch.zeros(self.hidden_dim)
        if self.spec.has_deep:
            hidden = (self._deep_input(query, self.deep_q, x, self.dense_q) @ self.w1_q)[0] + self.b1
        return QueryPart(wide, hidden)

    @torch.no_grad()
    def score(self, queries: Sequence[QueryPart], candidates: Sequence[pa.Table]) -> list[np.ndarray]:
        """Logits of each request's candidates (float32 ``[N]`` per request, in the given order).

        All requests' candidates go through one MLP call (that is what batching buys).
        """
        sizes = [c.num_rows for c in candidates]
        total = sum(sizes)
        if total == 0:
            return [np.zeros(0, dtype=np.float32) for _ in sizes]
        cand = candidates[0] if len(candidates) == 1 else pa.concat_tables(candidates)
        x = self._dense(cand, self.dense_c)
        wide = (
            self._wide_sum(cand, self.wide_c, total) + self._numeric_wide(x, self.dense_c)
            if self.spec.has_wide
            else None
        )
        hidden = self._deep_input(cand, self.deep_c, x, self.dense_c) @ self.w1_c if self.spec.has_deep else None
        return self._finish(queries, sizes, wide, hidden)

    def _upper(self, first: torch.Tensor) -> torch.Tensor:
        """The MLP above its first layer, from first-layer pre-activations ``[B, H]``: logits ``[B]``."""
        h = self.act(first)
        for j in range(1, self.spec.n_linear):
            h = F.linear(h, self.t[f"mlp.{j}.weight"], self.t[f"mlp.{j}.bias"])
            if j < self.spec.n_linear - 1:
                h = self.act(h)
        return h.reshape(first.shape[0])

    def _finish(
        self, queries: Sequence[QueryPart], sizes: list[int], wide: torch.Tensor | None, hidden: torch.Tensor | None
    ) -> list[np.ndarray]:
        """Add each request's query part to its candidates' parts and run the MLP above layer 1."""
        total = sum(sizes)
        seg = torch.tensor(sizes, dtype=torch.int64)
        logit = torch.zeros(total)
        if self.spec.has_wide:
            assert wide is not None
            logit += wide + torch.repeat_interleave(torch.stack([q.wide for q in queries]), seg)
        if self.spec.has_deep:
            assert hidden is not None
            q_hidden = torch.stack([q.hidden for q in queries])  # [R, H]
            logit += self._upper(hidden + torch.repeat_interleave(q_hidden, seg, dim=0))
        out = logit.numpy().astype(np.float32)
        return list(np.split(out, np.cumsum(sizes)[:-1]))

    @torch.no_grad()
    def score_table(self, table: pa.Table) -> np.ndarray:
        """Logits of complete prepared rows, each its own (user, context, item) triple: offline
        scoring (``widedeep predict`` with a bundle). The same split as a request, both halves per row."""
        n = table.num_rows
        xq, xc = self._dense(table, self.dense_q), self._dense(table, self.dense_c)
        logit = torch.zeros(n)
        if self.spec.has_wide:
            logit += self._wide_sum(table, self.wide_q, n) + self._wide_sum(table, self.wide_c, n)
            logit += self._numeric_wide(xq, self.dense_q) + self._numeric_wide(xc, self.dense_c) + self.t["wide.bias"]
        if self.spec.has_deep and n:
            first = self._deep_input(table, self.deep_q, xq, self.dense_q) @ self.w1_q
            first = first + self._deep_input(table, self.deep_c, xc, self.dense_c) @ self.w1_c + self.b1
            logit += self._upper(first)
        return logit.numpy().astype(np.float32)

    # -- catalog fast path ------------------------------------------------------------------------
    def pair_columns(self) -> list[str]:
        cols = [t.column for _, t in self.wide_p]
        if self.spec.has_deep:
            cols += [t.column for _, t in self.deep_p]
        return list(dict.fromkeys(cols))

    @torch.no_grad()
    def attach_catalog(self, items: pa.Table, chunk: int = 65536) -> None:
        """Precompute every catalog item's share of the score once: its item-side wide weights and
        its item-side columns of the first MLP layer (``[n_items, H]``). A request then gathers
        rows instead of looking up and multiplying each candidate's item features."""
        wide_parts, hidden_parts = [], []
        for lo in range(0, max(items.num_rows, 1), chunk):
            part = items.slice(lo, chunk)
            n = part.num_rows
            x = self._dense(part, self.dense_c)
            if self.spec.has_wide:
                wide_parts.append(self._wide_sum(part, self.wide_i, n) + self._numeric_wide(x, self.dense_c))
            if self.spec.has_deep:
                hidden_parts.append(self._deep_input(part, self.deep_i, x, self.dense_c) @ self.w1_i)
        self.item_wide = torch.cat(wide_parts) if wide_parts else None
        self.item_hidden = torch.cat(hidden_parts) if hidden_parts else None

    @torch.no_grad()
    def score_rows(
        self, queries: Sequence[QueryPart], rows: Sequence[np.ndarray], pairs: Sequence[pa.Table | None]
    ) -> list[np.ndarray]:
        """``score`` for catalog rows (after ``attach_catalog``): item parts are gathered, only the
        pair columns (``pairs``, one table per request, or None without pair features) are looked up."""
        sizes = [len(r) for r in rows]
        if sum(sizes) == 0:
            return [np.zeros(0, dtype=np.float32) for _ in sizes]
        idx = torch.from_numpy(np.concatenate(rows).astype(np.int64))
        pair = None
        if self.wide_p or (self.spec.has_deep and self.deep_p):
            tables = [p for p in pairs if p is not None]
            pair = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
        wide = hidden = None
        if self.spec.has_wide:
            assert self.item_wide is not None, "attach_catalog first"
            wide = self.item_wide[idx]
            if self.wide_p:
                wide = wide + self._wide_sum(pair, self.wide_p, len(idx))
        if self.spec.has_deep:
            assert self.item_hidden is not None, "attach_catalog first"
            hidden = self.item_hidden[idx]
            if self.deep_p:
                hidden = hidden + self._deep_input(pair, self.deep_p, torch.zeros(len(idx), 0), []) @ self.w1_p
        return self._finish(queries, sizes, wide, hidden)

    def predict(self, logits: np.ndarray) -> np.ndarray:
        """Logits -> the score a client sees (probability for binary tasks)."""
        if self.spec.task == "binary":
            # torch's sigmoid is stable for large negative logits (1 / (1 + exp(-x)) overflows in exp)
            return torch.sigmoid(torch.from_numpy(np.ascontiguousarray(logits, dtype=np.float32))).numpy()
        return logits
