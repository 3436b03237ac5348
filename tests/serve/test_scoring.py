"""Candidate-aware scoring equals ``model(batch)`` on the equivalent repeated batch."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import torch

from widedeep.data.collate import collate_prepared
from widedeep.features import TableInfo
from widedeep.model.wide_deep import ModelConfig, WideAndDeep
from widedeep.serve.scoring import CandidateScorer, extract_ranker


class _Space:
    """Table metadata only: the scorer's maths does not depend on how ids were made."""

    task = "binary"
    content_hash = "f" * 64

    def __init__(self) -> None:
        cols = [
            ("u_id", 50, "user", False, "sum"),
            ("u_tags", 20, "user", True, "mean"),
            ("ctx", 7, "context", False, "sum"),
            ("i_id", 40, "item", False, "sum"),
            ("i_genres", 9, "item", True, "sum"),
            ("u_x_i", 31, "pair", False, "sum"),
        ]
        self.wide_tables = [TableInfo(f"wide/{c}", c, n, 1, p, m, s) for c, n, s, m, p in cols]
        self.deep_tables = [TableInfo(f"deep/{c}", c, n, 4, p, m, s) for c, n, s, m, p in cols[:5]]
        self.dense_columns = ["u_age", "i_price"]
        self._sides = {"u_age": "user", "i_price": "item"}

    def feature_side(self, name: str) -> str:
        return self._sides[name]


def _lists(rng, n, rows, max_len):
    return pa.array(
        [list(rng.integers(0, rows, rng.integers(0, max_len + 1))) for _ in range(n)], type=pa.list_(pa.int64())
    )


@pytest.mark.parametrize(
    "mode,encoding,linear",
    [
        ("wide_deep", "none", False),
        ("deep", "none", False),
        ("wide", "none", True),
        ("wide_deep", "ple", True),
        ("wide_deep", "periodic", False),
    ],
)
def test_candidate_scoring_matches_model_on_repeated_batch(mode, encoding, linear):
    torch.manual_seed(0)
    fs = _Space()
    cfg = ModelConfig(
        mode=mode,
        hidden=[16, 8],
        activation="relu",
        numeric_encoding=encoding,
        numeric_bins=4,
        numeric_linear_wide=linear,
    )
    model = WideAndDeep(fs, cfg)
    if model.numeric_linear is not None:
        model.numeric_linear.weight.data.normal_(0, 0.5)
    # trained weights are not zeros: randomise every table so each term matters
    for tbe in model.embedding_bags():
        tbe.weight.data.normal_(0, 0.5)
    if model.wide_bias is not None:
        model.wide_bias.data.fill_(0.3)
    model.eval()
    rng = np.random.default_rng(0)
    requests = []
    for n in (5, 1, 12):
        user = {
            "u_id": pa.array([int(rng.integers(50))]),
            "u_tags": _lists(rng, 1, 20, 3),
            "ctx": pa.array([int(rng.integers(7))]),
            "u_age": pa.array([float(rng.random())], pa.float32()),
        }
        cand = {
            "i_id": pa.array(rng.integers(0, 40, n)),
            "i_genres": _lists(rng, n, 9, 4),
            "u_x_i": pa.array(rng.integers(0, 31, n)),
            "i_price": pa.array(rng.random(n), pa.float32()),
        }
        requests.append((pa.table(user), pa.table(cand)))

    spec, tensors = extract_ranker(model, fs)
    scorer = CandidateScorer(spec, tensors)
    got = scorer.score([scorer.query_part(u) for u, _ in requests], [c for _, c in requests])

    for (user, cand), g in zip(requests, got, strict=True):
        n = cand.num_rows
        rep = {name: user.column(name).take(pa.array(np.zeros(n, dtype=np.int64))) for name in user.column_names}
        full = pa.table({**rep, **{name: cand.column(name) for name in cand.column_names}})
        with torch.no_grad():
            want = model(collate_prepared(full, fs, require_label=False)).numpy()
        np.testing.assert_allclose(g, want, rtol=1e-5, atol=1e-5)
    assert len(got[1]) == 1

    # the catalog fast path (item shares precomputed, only pair columns looked up) agrees
    catalog = pa.concat_tables([c.select(["i_id", "i_genres", "i_price"]) for _, c in requests])
    scorer.attach_catalog(catalog)
    offsets = np.cumsum([0] + [c.num_rows for _, c in requests])
    rows = [np.arange(offsets[i], offsets[i + 1])[::-1].copy() for i in range(len(requests))]
    pairs = [
        c.select(["u_x_i"]).take(pa.array(r - offsets[i]))
        for i, ((_, c), r) in enumerate(zip(requests, rows, strict=True))
    ]
    fast = scorer.score_rows([scorer.query_part(u) for u, _ in requests], rows, pairs)
    for g, f in zip(got, fast, strict=True):
        np.testing.assert_allclose(f, g[::-1], rtol=1e-5, atol=1e-6)

    # whole rows, each its own request (``widedeep predict`` with a bundle): one call, same scores
    fulls = []
    for user, cand in requests:
        rep = {
            name: user.column(name).take(pa.array(np.zeros(cand.num_rows, dtype=np.int64)))
            for name in user.column_names
        }
        fulls.append(pa.table({**rep, **{name: cand.column(name) for name in cand.column_names}}))
    table = pa.concat_tables(fulls)
    with torch.no_grad():
        want = model(collate_prepared(table, fs, require_label=False)).numpy()
    np.testing.assert_allclose(scorer.score_table(table), want, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scorer.score_table(table), np.concatenate(got), rtol=1e-5, atol=1e-6)
