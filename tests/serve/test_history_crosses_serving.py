"""Serving a ranker with history crosses: the bundle's user table carries each user's liked
columns (``widedeep.retrieval.liked``, over every exported split), and the served logits of the
candidates are the ranker's on the rows the one transform builds offline. With candidate scores
(``widedeep.retrieval.candidate_scores``) the bundle carries their statistics and each candidate
is scored from them as offline. With history features (``kind: history``) the query row's liked
columns are also the deep part's input, as offline."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
import torch

from tests.retrieval import synth
from tests.retrieval.test_candidate_scores import SCORE_SPEC
from tests.retrieval.test_history_feature import DEEP_SPEC
from tests.retrieval.test_liked import HIST_SPEC


@pytest.mark.parametrize(
    "spec", [HIST_SPEC, SCORE_SPEC, DEEP_SPEC], ids=["history-crosses", "candidate-scores", "history-features"]
)
def test_served_history_crosses_score_like_the_offline_transform(tmp_path, spec):
    from widedeep.data.collate import Collator
    from widedeep.export.bundle_writer import write_bundle
    from widedeep.export.from_checkpoints import bundle_contents
    from widedeep.features import FeatureSpace
    from widedeep.kernels import OptimizerConfig
    from widedeep.model.two_tower import TwoTower, TwoTowerConfig
    from widedeep.model.wide_deep import WideAndDeep
    from widedeep.retrieval.candidate_scores import CandidateStats
    from widedeep.retrieval.data import first_by_key, load_rows
    from widedeep.retrieval.liked import LikedValues
    from widedeep.serve.bundle import load_bundle
    from widedeep.serve.pipeline import RecommendPipeline

    torch.manual_seed(0)
    root = synth.prepare(tmp_path / "d", spec=spec, keep_time=True, n_users=30, n_items=50, rows_per_user=12)
    fs = FeatureSpace.load(root)
    cols = ["user_key", "item_key", "label", "user_id", "country", "app_id", "category", "timestamp"]
    rows = load_rows(root, ("train", "valid", "test"), cols)
    retriever = TwoTower(
        fs, TwoTowerConfig(embedding_dim=8, hidden=[], output_dim=8), OptimizerConfig("rowwise_adagrad", lr=0.1)
    ).eval()
    ranker = WideAndDeep(fs).eval()
    with torch.no_grad():  # non-zero wide weights, so the crosses move the logits
        for p in ranker.parameters():
            p.normal_(0, 0.5)
    pipe = RecommendPipeline(load_bundle(write_bundle(tmp_path / "b", bundle_contents(fs, ranker, retriever, rows))))

    ukey = rows.column("user_key")[0].as_py()
    urow = pipe.bundle.user_rows[str(ukey)]
    liked = pipe.bundle.users.column("__liked__.app_id")[urow].as_py()
    mine = rows.filter(pc.and_(pc.equal(rows.column("user_key"), ukey), pc.greater(rows.column("label"), 0.5)))
    order = np.argsort(mine.column("timestamp").to_numpy(), kind="stable")
    assert liked == mine.column("app_id").to_numpy()[order][::-1][:20].tolist() and liked

    q = pipe.prepare({pipe.user_key_field: ukey}, {})
    ((cand, _),) = pipe.retrieve_scored([q], 15, [None])
    (served,) = pipe.score([(q.part, q.row, cand)])

    # offline: the user's row, the candidates' catalog rows, the liked columns, every cross
    items = first_by_key(rows.select(["item_key", "app_id", "category"]), "item_key")[1]
    user = rows.filter(pc.equal(rows.column("user_key"), ukey)).slice(0, 1)
    lv = LikedValues.build(fs, rows, items.drop_columns(["item_key"]))
    t = user.select(["user_id", "country"]).take(pa.array(np.zeros(len(cand), np.int64)))
    it = items.take(pa.array(cand.astype(np.int64)))
    for c in ("app_id", "category"):
        t = t.append_column(c, it.column(c))
    for name, v in lv.columns(np.array([ukey] * len(cand))).items():
        t = t.append_column(name, v)
    t = fs.add_crosses(t)
    assert any(len(x) for x in t.column("liked_x_app").to_pylist())
    if spec is SCORE_SPEC:  # the bundle's statistics are those of the exported rows here
        t = CandidateStats.fit(fs, rows).add(fs, t)
        assert pipe.bundle.candidate_stats is not None
        assert len(set(t.column("sim").to_pylist())) > 1 and len(set(t.column("pop").to_pylist())) > 1
    with torch.no_grad():
        want = ranker(Collator(fs, require_label=False)(t)).float().numpy()
    # float32 sums in another order (a served batch vs this one) differ by ~1e-5 of the logits'
    # scale, which the N(0, 0.5) weights make hundreds; one missing cross would move a logit by ~0.5
    np.testing.assert_allclose(served, want, rtol=1e-5, atol=1e-5 * float(np.abs(want).max()))
    if spec is DEEP_SPEC:  # the served match includes the deep history: without it the logits differ
        assert "__liked__.app_id" in pipe.bundle.ranker.query_columns()
        empty = pa.array([[]] * t.num_rows, pa.list_(pa.int64()))
        t = t.set_column(t.column_names.index("__liked__.app_id"), "__liked__.app_id", empty)  # crosses kept
        with torch.no_grad():
            without = ranker(Collator(fs, require_label=False)(t)).float().numpy()
        assert not np.allclose(served, without, atol=1e-4)

    # an unknown user (features only) has no history: empty crosses, still served
    out = pipe.recommend({"country": "c0"}, {}, k=5, n=20)
    assert len(out) == 5
