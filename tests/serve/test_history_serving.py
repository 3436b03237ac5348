"""Serving a retriever that pools user histories (and scores with a popularity prior): the bundle
stores each user's latest positives, the online user vector equals the trained tower's on the same
history, and the index vectors carry the prior."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from tests.retrieval import synth

COLUMNS = ["user_key", "item_key", "label", "user_id", "country", "app_id", "category"]


def _pipeline(tmp_path, n_items: int, tower: dict, randomize_ranker: bool = False, choice=None, term="log_sigmoid"):
    """A bundle of untrained models over synthetic prepared data: ``(pipeline, fs, rows, retriever)``."""
    from widedeep.export.bundle_writer import write_bundle
    from widedeep.export.from_checkpoints import bundle_contents
    from widedeep.features import FeatureSpace
    from widedeep.kernels import OptimizerConfig
    from widedeep.model.two_tower import TwoTower, TwoTowerConfig
    from widedeep.model.wide_deep import WideAndDeep
    from widedeep.retrieval.data import load_rows
    from widedeep.serve.bundle import load_bundle
    from widedeep.serve.pipeline import RecommendPipeline

    root = synth.prepare(tmp_path / "d", n_users=30, n_items=n_items, rows_per_user=12)
    fs = FeatureSpace.load(root)
    rows = load_rows(root, ("train", "valid", "test"), COLUMNS)
    retriever = TwoTower(
        fs,
        TwoTowerConfig(embedding_dim=8, hidden=[], output_dim=8, init_scale=0.5, **tower),
        OptimizerConfig("rowwise_adagrad", lr=0.1),
    ).eval()
    ranker = WideAndDeep(fs).eval()
    if randomize_ranker:  # a ranker whose order disagrees with retrieval's
        with torch.no_grad():
            for p in ranker.parameters():
                p.normal_(0, 0.5)
    if callable(choice):
        choice = choice(rows)
    contents = bundle_contents(fs, ranker, retriever, rows, choice=choice, ranker_term=term)
    bundle = write_bundle(tmp_path / "b", contents, index_kind="exact")
    return RecommendPipeline(load_bundle(bundle)), fs, rows, retriever


def test_bundle_histories_feed_the_online_user_tower(tmp_path):
    from widedeep.model.two_tower import HISTORY_COLUMN
    from widedeep.retrieval.data import tower_input
    from widedeep.retrieval.index import load_index

    torch.manual_seed(0)
    pipe, _, rows, retriever = _pipeline(tmp_path, 25, {"history": 3, "popularity_prior": 1.0})
    bundle = pipe.bundle.path
    users = pipe.bundle.users
    assert HISTORY_COLUMN in users.column_names

    # a known user: its history is its latest 3 positives over every split, in file order
    ukey = rows.column("user_key")[0].as_py()
    pos = rows.filter(pc.and_(pc.equal(rows.column("user_key"), ukey), pc.equal(rows.column("label"), 1.0)))
    want_hist = pos.column("app_id").to_pylist()[-3:]
    urow = pipe.bundle.user_rows[str(ukey)]
    assert users.column(HISTORY_COLUMN)[urow].as_py() == want_hist
    q = pipe.prepare({pipe.user_key_field: ukey}, {})
    first = rows.filter(pc.equal(rows.column("user_key"), ukey)).slice(0, 1)
    t = pa.table(
        {
            "user_id": first.column("user_id"),
            "country": first.column("country"),
            HISTORY_COLUMN: pa.array([want_hist], pa.list_(pa.int64())),
        }
    )
    with torch.no_grad():
        want = retriever.user_embedding(tower_input(retriever.user_features, t)).numpy()[0]
    # with a popularity prior the user vector ends with a 1 (the item vectors carry the prior)
    np.testing.assert_allclose(q.vector, np.append(want, 1.0), rtol=1e-5, atol=1e-6)
    pop = pipe.bundle.generator.popularity.numpy()  # training positives per catalog row
    assert pop.max() > 0
    vecs = load_index(bundle / "index")[1]
    assert vecs.shape[1] == 9
    np.testing.assert_allclose(vecs[:, -1], 0.05 * np.log1p(pop), rtol=1e-5, atol=1e-6)
    assert len(want_hist) > 0  # the check above exercised a non-empty history

    # an unknown user given by features has an empty history (pools to zeros), not an error
    q2 = pipe.prepare({"country": "c0"}, {})
    assert q2.vector is not None and np.isfinite(q2.vector).all()
    out = pipe.recommend({pipe.user_key_field: ukey}, {}, k=5, n=20)
    assert len(out) == 5


def test_recommend_orders_like_offline_evaluation(tmp_path):
    """/v1/recommend's order is ``final_scores`` (log sigmoid(ranker) + rerank_blend * retrieval logit),
    the function ``evaluate --task topk`` re-ranks with; the scores shown stay the ranker's."""
    from widedeep.retrieval.candidates import final_scores

    torch.manual_seed(1)
    pipe, _, rows, _ = _pipeline(tmp_path, 80, {"temperature": 0.2, "rerank_blend": 3.0}, randomize_ranker=True)
    assert pipe.bundle.manifest["ordering"] == {"rerank_blend": 3.0, "temperature": 0.2, "ranker_term": "log_sigmoid"}
    ukey = rows.column("user_key")[0].as_py()
    q = pipe.prepare({pipe.user_key_field: ukey}, {})
    ((cand, retrieval),) = pipe.retrieve_scored([q], 40, [None])
    (logits,) = pipe.score([(q.part, q.row, cand)])
    want = cand[np.argsort(-final_scores(logits, retrieval, 3.0), kind="stable")[:10]]
    got = pipe.recommend({pipe.user_key_field: ukey}, {}, k=10, n=40)
    assert [k for k, _ in got] == list(pipe.bundle.item_keys[want])
    ranker_only = cand[np.argsort(-logits, kind="stable")[:10]]
    assert list(want) != list(ranker_only)  # the blend changed the list: the check above had teeth
    # the scores shown are the ranker's probabilities of those items
    by_row = dict(zip(cand.tolist(), pipe.bundle.ranker.predict(logits).tolist(), strict=True))
    np.testing.assert_allclose([s for _, s in got], [by_row[int(r)] for r in want], rtol=1e-6)


def test_recommend_reads_the_ranker_logit_as_the_bundle_says(tmp_path):
    """A ranker trained against drawn negatives is exported with ``ranker_term: logit``: the served
    order is ``final_scores`` with the logit itself (what ``evaluate --task topk`` measured for it),
    which differs from the log-sigmoid order of the same scores; a bundle naming another term is
    refused when it is loaded."""
    import json

    from widedeep.errors import CheckpointError
    from widedeep.retrieval.candidates import final_scores
    from widedeep.serve.bundle import load_bundle
    from widedeep.serve.pipeline import RecommendPipeline

    torch.manual_seed(1)
    pipe, _, rows, _ = _pipeline(
        tmp_path, 80, {"temperature": 0.2, "rerank_blend": 3.0}, randomize_ranker=True, term="logit"
    )
    assert pipe.bundle.manifest["ordering"]["ranker_term"] == "logit"
    differed = 0
    for ukey in dict.fromkeys(rows.column("user_key").to_pylist()[:60]):
        q = pipe.prepare({pipe.user_key_field: ukey}, {})
        ((cand, retrieval),) = pipe.retrieve_scored([q], 40, [None])
        (logits,) = pipe.score([(q.part, q.row, cand)])
        want = cand[np.argsort(-final_scores(logits, retrieval, 3.0, "logit"), kind="stable")[:10]]
        got = pipe.recommend({pipe.user_key_field: ukey}, {}, k=10, n=40)
        assert [k for k, _ in got] == list(pipe.bundle.item_keys[want])
        log_sigmoid = cand[np.argsort(-final_scores(logits, retrieval, 3.0), kind="stable")[:10]]
        differed += list(want) != list(log_sigmoid)
    assert differed > 0  # the term changed some lists: the check above had teeth

    manifest = pipe.bundle.path / "manifest.json"
    m = json.loads(manifest.read_text())
    m["ordering"]["ranker_term"] = "sigmoid"
    manifest.write_text(json.dumps(m))
    with pytest.raises(CheckpointError, match="ranker_term must be one of"):
        RecommendPipeline(load_bundle(pipe.bundle.path))


def test_item_to_item_source_is_served_like_offline_evaluation(tmp_path):
    """A bundle with the item-to-item source: the served candidates are the offline generator's
    (index + neighbours queried with the user's liked items, merged by the chosen share and scored
    with the chosen weight), and the list is ordered by ``final_scores`` with the chosen blend."""
    from widedeep.evaluation.selection import Ordering, SourceChoice
    from widedeep.evaluation.tuning import Tuned
    from widedeep.retrieval.candidates import SOURCE_ITEM_TO_ITEM, CandidateGenerator, SourceMix, final_scores
    from widedeep.retrieval.data import first_by_key, interactions
    from widedeep.retrieval.index import ExactIndex, load_index
    from widedeep.retrieval.interactions import CSR
    from widedeep.retrieval.neighbors import ItemNeighbors, NeighborSettings

    made = {}

    def choice(rows):
        items = first_by_key(rows.select(["item_key"]), "item_key")[0]  # the bundle's catalog order
        users = first_by_key(rows.select(["user_key"]), "user_key")[0]
        settings = NeighborSettings(10, 2.0)
        made["nb"] = nb = ItemNeighbors.fit(interactions(rows, "user_key", "item_key", users, items), settings)
        return SourceChoice(settings, nb, Ordering(SourceMix(0.5, 0.5), 2.0), Tuned({}, {}))

    torch.manual_seed(2)
    pipe, _, rows, _ = _pipeline(tmp_path, 60, {"temperature": 0.2}, randomize_ranker=True, choice=choice)
    b = pipe.bundle
    assert b.manifest["ordering"] == {
        "rerank_blend": 2.0,
        "temperature": 0.2,
        "ranker_term": "log_sigmoid",
        "item_share": 0.5,
        "item_weight": 0.5,
    }
    gen = b.generator
    assert gen.neighbors is not None and gen.mix == SourceMix(0.5, 0.5)
    ukey = rows.column("user_key")[0].as_py()
    q = pipe.prepare({pipe.user_key_field: ukey}, {})
    ((cand, retrieval),) = pipe.retrieve_scored([q], 20, [None])

    # the offline path, from the pieces: the exported neighbours, the index vectors, seen and liked rows
    vecs = load_index(b.path / "index")[1]
    liked_rows = b.liked[str(ukey)]
    assert liked_rows.size > 0
    offline = CandidateGenerator(
        ExactIndex(vecs), gen.popularity.numpy(), b.item_keys, neighbors=made["nb"], item_vectors=vecs, mix=gen.mix
    )
    seen = b.seen[str(ukey)]
    c = offline.sourced(
        q.vector[None, :],
        20,
        CSR(np.array([0, seen.size]), np.sort(seen), len(b.item_keys)),
        recent=CSR(np.array([0, liked_rows.size]), liked_rows, len(b.item_keys)),
    )
    assert cand.tolist() == c.rows[0][c.rows[0] >= 0].tolist()
    np.testing.assert_allclose(retrieval, c.scores[0][: len(cand)] / 0.2, rtol=1e-5)
    assert (c.sources[0] == SOURCE_ITEM_TO_ITEM).sum() > 0  # the source contributed candidates
    index_only = ExactIndex(vecs).search(q.vector[None, :], 20, CSR(np.array([0, seen.size]), np.sort(seen), 60))[0]
    assert set(cand.tolist()) != set(index_only[0][index_only[0] >= 0].tolist())

    (logits,) = pipe.score([(q.part, q.row, cand)])
    want = cand[np.argsort(-final_scores(logits, retrieval, 2.0), kind="stable")[:10]]
    got = pipe.recommend({pipe.user_key_field: ukey}, {}, k=10, n=20)
    assert [k for k, _ in got] == list(b.item_keys[want])
