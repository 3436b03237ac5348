"""Candidate scores (``CandidateScoreFeature``): retrieval's evidence for a candidate as ranker
inputs, computed by one transform (``widedeep.retrieval.candidate_scores``) for logged rows, for
every sampled negative with its own item, at evaluation and at serving."""

from __future__ import annotations

import copy

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from tests.retrieval import synth
from tests.retrieval.test_liked import HIST_SPEC
from widedeep.errors import FeatureSpecError

SIM_BOUNDS = [0.05, 0.1, 0.2, 0.5, 1.0, 2.0]
SCORE_SPEC = copy.deepcopy(HIST_SPEC)
SCORE_SPEC["features"] += [
    {"name": "sim", "kind": "candidate_score", "score": "similarity", "history": "app_id", "boundaries": SIM_BOUNDS},
    {"name": "hits", "kind": "candidate_score", "score": "hits", "history": "app_id", "boundaries": [1, 2, 4]},
    {"name": "pop", "kind": "candidate_score", "score": "popularity", "history": "app_id", "boundaries": [1, 4, 16]},
]


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    from widedeep.features import FeatureSpace

    root = synth.prepare(
        tmp_path_factory.mktemp("scores") / "d",
        spec=SCORE_SPEC,
        keep_time=True,
        n_users=60,
        n_items=40,
        rows_per_user=20,
    )
    return root, FeatureSpace.load(root)


def _train(root):
    return pq.read_table(root / "train" / "part-00000.parquet")


def _brute(train: pa.Table, history: list[int], item: int) -> tuple[float, int, float]:
    """(similarity, hits, popularity) from the train positives, by set arithmetic (the catalog is
    under the 100 kept neighbours, so every co-occurring pair is kept)."""
    pos = train.filter(pc.greater(train.column("label"), 0.5))
    users_of: dict[int, set] = {}
    for u, a in zip(pos.column("user_key").to_pylist(), pos.column("app_id").to_pylist(), strict=True):
        users_of.setdefault(a, set()).add(u)
    c = users_of.get(item, set())
    sim, hits = 0.0, 0
    for h in history:
        co = len(c & users_of.get(h, set()))
        if co and h != item:
            sim += co / np.sqrt(len(c) * len(users_of[h]))
            hits += 1
    return sim, hits, float(len(c))


def test_spec_declares_candidate_scores_over_a_history_cross(prepared):
    from widedeep.features import parse_spec

    root, fs = prepared
    assert [fs.feature_side(n) for n in ("sim", "hits", "pop")] == ["pair"] * 3
    assert fs.num_rows("sim") == len(SIM_BOUNDS) + 1
    assert {"sim", "hits", "pop"} <= {t.column for t in fs.wide_tables} & {t.column for t in fs.deep_tables}
    assert "sim" not in pq.read_schema(root / "train" / "part-00000.parquet").names  # prepare leaves it out
    bad = copy.deepcopy(SCORE_SPEC)
    bad["features"] = [f for f in bad["features"] if f.get("history") != "app_id" or f["kind"] != "crossed"]
    with pytest.raises(FeatureSpecError, match="no history cross over 'app_id'"):
        parse_spec(bad)
    bad = copy.deepcopy(SCORE_SPEC)
    bad["features"][-1]["score"] = "cosine"
    with pytest.raises(FeatureSpecError, match="score: must be one of"):
        parse_spec(bad)
    bad["features"][-1] |= {"score": "hits", "boundaries": [2, 1]}
    with pytest.raises(FeatureSpecError, match="strictly increasing"):
        parse_spec(bad)


def test_scores_are_the_co_occurrence_of_the_history_with_the_candidate(prepared):
    from widedeep.retrieval.candidate_scores import candidate_stats_from

    root, fs = prepared
    train = _train(root)
    stats = candidate_stats_from(fs, root)
    rng = np.random.default_rng(0)
    hist = [sorted(rng.choice(39, 6, replace=False).tolist()) for _ in range(30)]
    items = rng.integers(0, 39, 30)
    t = pa.table({"__liked__.app_id": pa.array(hist, pa.list_(pa.int64())), "app_id": pa.array(items, pa.int64())})
    cols = stats.columns(fs, t)
    raw = stats.scores(np.concatenate(hist), np.arange(0, 6 * 31, 6, dtype=np.int64), items.astype(np.int64))
    nonzero = 0
    for r in range(30):
        sim, hits, pop = _brute(train, hist[r], int(items[r]))
        assert raw["similarity"][r] == pytest.approx(sim, abs=1e-9)
        assert raw["hits"][r] == hits and raw["popularity"][r] == pop
        assert cols["sim"][r].as_py() == int(np.searchsorted(SIM_BOUNDS, sim, side="right"))
        assert cols["hits"][r].as_py() == int(np.searchsorted([1, 2, 4], hits, side="right"))
        nonzero += hits > 0
    assert nonzero > 5


def test_a_training_row_sees_the_train_split_without_its_own_positive(prepared):
    """At training a logged positive's scores are those of the train split without that one
    positive: what evaluation sees for a candidate the user has not taken yet."""
    from widedeep.retrieval.candidate_scores import CandidateStats

    root, fs = prepared
    train = _train(root)
    stats = CandidateStats.fit(fs, train)
    pos_idx = np.flatnonzero(train.column("label").to_numpy() > 0.5)
    checked = 0
    for i in pos_idx[::25]:
        u, a = train.column("user_key")[int(i)].as_py(), train.column("app_id")[int(i)].as_py()
        mine = train.filter(pc.and_(pc.equal(train.column("user_key"), u), pc.greater(train.column("label"), 0.5)))
        hist = [x for x in mine.column("app_id").to_pylist() if x != a]
        if not hist:
            continue
        row = pa.table({"__liked__.app_id": pa.array([hist], pa.list_(pa.int64())), "app_id": pa.array([a])})
        got = stats.scores(
            np.asarray(hist), np.array([0, len(hist)]), np.array([a]), stats.left_out([u], np.array([a]))
        )
        without = train.filter(pa.array(np.arange(train.num_rows) != i))
        want = CandidateStats.fit(fs, without).scores(np.asarray(hist), np.array([0, len(hist)]), np.array([a]))
        for k in ("similarity", "hits", "popularity"):
            assert got[k][0] == pytest.approx(want[k][0], abs=1e-9), k
        # without leaving it out the positive would carry its own co-occurrence (the leak)
        leak = stats.columns(fs, row)["hits"][0].as_py()
        assert stats.columns(fs, row, users=pa.array([u]))["hits"][0].as_py() <= leak
        checked += 1
    assert checked >= 5


def test_ranking_batches_score_every_negative_with_its_own_item(prepared):
    import torch

    from widedeep.retrieval.candidate_scores import candidate_stats_from
    from widedeep.train.config import config_from_dict
    from widedeep.train.ranking_task import RankingTask

    root, fs = prepared
    cfg = config_from_dict(
        {"data": str(root), "task": "ranking", "task_config": {"sampled_negatives": 2, "retrieval_negatives": 1}}
    )
    task = RankingTask()
    cols = task.required_columns(fs, cfg)
    assert "sim" not in cols and "pop" not in cols
    assert task.collate_split(pq.read_table(root / "train" / "part-00000.parquet", columns=cols), fs, cfg) is None
    rows = pq.read_table(root / "train" / "part-00000.parquet", columns=cols).slice(0, 64)
    batch = task.collate(rows, fs, cfg)
    assert torch.isfinite(task.loss(task.build_model(fs, cfg), batch, cfg))
    # the table the batch was collated from: rebuild it as collate does and check every row
    captured = {}

    class Spy:
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, table):
            captured["t"] = table
            return self.inner(table)

    task._collators[fs.content_hash] = Spy(task._collator(fs))
    task.collate(rows, fs, cfg)
    t = captured["t"]
    assert t.num_rows > rows.num_rows  # logged rows + negatives
    stats = candidate_stats_from(fs, root)
    want = stats.columns(fs, t.drop_columns(["sim", "hits", "pop"]), users=t.column("user_key"))
    for name in ("sim", "hits", "pop"):
        assert t.column(name).to_pylist() == want[name].to_pylist()
    # (``want`` is computed from each row's own item: the negatives are scored with theirs)
    assert len(set(t.column("app_id").to_pylist()[rows.num_rows :])) > 1
