"""Evaluation and export of refit checkpoints (``refit.fit_splits == ("train", "valid")``): what
the models fitted is read from their fit splits, the settings are chosen on valid by their
``selected_by`` checkpoints, and a split they were fitted on is never evaluated."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
import yaml

from tests.retrieval import synth
from widedeep.errors import CheckpointError, DataError

FIT = ("train", "valid")
RET_CFG = {"task_config": {"hidden": [], "output_dim": 8, "candidates": 50, "history": 5}}
# a ranker that learned against drawn negatives: the final order reads its logit as is
# (``widedeep.retrieval.candidates.ranker_term_of``), in the choice, the report and the bundle alike
RANK_CFG = {"task_config": {"sampled_negatives": 2, "retrieval_negatives": 1}}


def _table(root, split):
    return pq.read_table(root / split)


def _positive_pairs(tables) -> set:
    out = set()
    for t in tables:
        t = t.filter(pc.greater(t.column("label"), 0.5))
        out |= set(zip(t.column("user_key").to_pylist(), t.column("item_key").to_pylist(), strict=True))
    return out


def _refit(src, dst, selected_by) -> str:
    """A copy of checkpoint ``src`` whose config says it is a refit chosen by ``selected_by`` (what
    ``widedeep train`` with ``refit.enabled`` writes for its second run)."""
    shutil.copytree(src, dst)
    cfg = yaml.safe_load((dst / "config.yaml").read_text())
    cfg["refit"] = {"enabled": False, "fit_splits": list(FIT), "selected_by": str(selected_by)}
    cfg["early_stopping"] = {"enabled": False}  # nothing left to validate on
    (dst / "config.yaml").write_text(yaml.safe_dump(cfg, sort_keys=True))
    return str(dst)


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Prepared data and two (retriever, ranker) pairs of untrained models with different weights:
    ``sel`` (train-only, the ``selected_by`` pair) and ``refit`` (its config says train + valid)."""
    from widedeep.features import FeatureSpace
    from widedeep.model.build import build_model_from_dict
    from widedeep.model.checkpoint import save_checkpoint

    tmp = tmp_path_factory.mktemp("refit")
    root = synth.prepare(tmp / "d", n_users=60, n_items=50, rows_per_user=20)
    fs = FeatureSpace.load(root / "feature_space.json")
    ck: dict[str, str] = {}
    for name, seed in (("sel", 1), ("weights", 2)):
        for task, cfg in (("ranking", RANK_CFG), ("retrieval", RET_CFG)):
            cfg = {"data": str(root), "task": task, "seed": seed, **cfg}
            model = build_model_from_dict(task, fs, cfg)
            path = tmp / f"{name}-{task}"
            save_checkpoint(
                path, model=model, optimizer=None, feature_space=fs, config=cfg, metrics={}, task=task, state={}
            )
            ck[f"{name}-{task}"] = str(path)
    for task in ("ranking", "retrieval"):
        ck[f"refit-{task}"] = _refit(tmp / f"weights-{task}", tmp / f"refit-{task}", ck[f"sel-{task}"])
    return root, fs, ck


def test_eval_data_reads_what_the_models_fitted_from_the_fit_splits(pairs):
    from widedeep.evaluation.topk import EvalData
    from widedeep.retrieval.popularity import item_popularity

    root, fs, _ = pairs
    train, valid = _table(root, "train"), _table(root, "valid")
    plain, refit = EvalData(fs, root / "test"), EvalData(fs, root / "test", FIT)
    assert (plain.fit, refit.fit) == (("train",), FIT) and refit.known == plain.known == FIT
    got = {(refit.train_users[r], refit.catalog.keys[i]) for r, i in zip(*_csr(refit.train_pos), strict=True)}
    assert got == _positive_pairs([train, valid]) != _positive_pairs([train])
    both = pa.concat_tables([train, valid])
    # popularity: distinct users with a positive row, here counted by hand over train + valid
    pos = both.filter(pc.greater(both.column("label"), 0.5))
    users_of: dict = {}
    for u, i in zip(pos.column("user_key").to_pylist(), pos.column("item_key").to_pylist(), strict=True):
        users_of.setdefault(i, set()).add(u)
    want = np.array([len(users_of.get(k, ())) for k in refit.catalog.keys], dtype=np.float64)
    np.testing.assert_array_equal(refit.popularity, want)
    np.testing.assert_array_equal(refit.popularity, item_popularity(both, "item_key", refit.catalog.keys, "user_key"))
    assert not np.array_equal(plain.popularity, refit.popularity)
    # the known past (history, exclusions, who is evaluated) does not depend on what was fitted
    assert list(plain.users) == list(refit.users)
    for a, b in ((plain.history, refit.history), (plain.exclude, refit.exclude), (plain.relevant, refit.relevant)):
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_array_equal(a.row_ids(), b.row_ids())


def _csr(csr):
    return csr.row_ids(), csr.indices


def test_candidate_stats_come_from_the_fit_splits(tmp_path):
    from tests.retrieval.test_candidate_scores import SCORE_SPEC
    from widedeep.evaluation.topk import EvalData
    from widedeep.features import FeatureSpace
    from widedeep.retrieval.candidate_scores import CandidateStats, candidate_stats_from

    root = synth.prepare(tmp_path / "d", spec=SCORE_SPEC, keep_time=True, n_users=40, n_items=30, rows_per_user=15)
    fs = FeatureSpace.load(root)
    cols = ["user_key", "app_id", "label"]
    want = CandidateStats.fit(fs, pa.concat_tables([_table(root, s).select(cols) for s in FIT]))
    got = EvalData(fs, root / "test", FIT).candidate_stats(fs)
    train_only = candidate_stats_from(fs, root)
    for name, a in want.arrays().items():
        np.testing.assert_array_equal(got.arrays()[name], a)
    assert not np.array_equal(train_only.popularity, want.popularity)
    with pytest.raises(DataError, match="no Parquet shards"):
        candidate_stats_from(fs, root, ("train", "missing"))


def test_a_split_the_models_fitted_is_refused(pairs):
    from widedeep.evaluation.topk import EvalData, run_topk
    from widedeep.train.evaluate import evaluate_split

    root, fs, ck = pairs
    with pytest.raises(CheckpointError, match=r"fitted on the train\+valid split.*'valid' split would be in-sample"):
        EvalData(fs, root / "valid", FIT)
    with pytest.raises(CheckpointError, match=f"retriever {re.escape(ck['refit-retrieval'])} and ranker .*in-sample"):
        run_topk(ck["refit-retrieval"], ck["refit-ranking"], str(root / "valid"), None)
    rk_refused = rf"{re.escape(ck['refit-ranking'])}: fitted on the train\+valid.*in-sample"
    with pytest.raises(CheckpointError, match=rk_refused):
        evaluate_split(ck["refit-ranking"], str(root / "valid"))
    with pytest.raises(CheckpointError, match="'train' split"):  # every checkpoint fitted its train split
        evaluate_split(ck["sel-ranking"], str(root / "train"))
    test = _table(root, "test")  # its logged rows, each with 2 sampled negatives, each positive with 1 retrieval one
    positives = int(pc.sum(pc.greater(test.column("label"), 0.5)).as_py())
    assert evaluate_split(ck["refit-ranking"], str(root / "test"))["rows"] == 3 * test.num_rows + positives
    # a pair fitted on different splits: one set of fitted statistics cannot serve both
    with pytest.raises(CheckpointError, match="refit both or neither"):
        run_topk(ck["sel-retrieval"], ck["refit-ranking"], str(root / "test"), None)


def test_refit_pair_is_chosen_for_by_its_selected_by_checkpoints(pairs, tmp_path, monkeypatch, capsys):
    """``evaluate --task topk`` on a refit pair: the merge and order are what ``choose_sources``
    gives for the ``selected_by`` models on valid; the item-to-item source and the baselines are
    fitted on train + valid with the valid-tuned settings; the report says so. ``widedeep
    export`` of the pair serves the same choice."""
    from widedeep.evaluation import selection
    from widedeep.evaluation.topk import RETRIEVAL_KS, EvalData, baselines, run_topk
    from widedeep.export.from_checkpoints import export_from_checkpoints
    from widedeep.model.checkpoint import load_checkpoint
    from widedeep.model.two_tower import two_tower_config
    from widedeep.retrieval.neighbors import ItemNeighbors
    from widedeep.serve.bundle import load_bundle

    root, fs, ck = pairs
    sel_ret, sel_rk = load_checkpoint(ck["sel-retrieval"]), load_checkpoint(ck["sel-ranking"])
    refit_ret, refit_rk = load_checkpoint(ck["refit-retrieval"]), load_checkpoint(ck["refit-ranking"])
    valid = EvalData(fs, root / "valid")
    rc = two_tower_config(RET_CFG["task_config"])
    by_sel = selection.choose_sources(sel_ret.model, sel_rk.model, fs, valid, rc.candidates, rc.temperature, "logit")
    by_refit = selection.choose_sources(
        refit_ret.model, refit_rk.model, fs, valid, rc.candidates, rc.temperature, "logit"
    )
    assert by_sel.ordering.valid != by_refit.ordering.valid  # the two pairs choose differently

    fitted: list = []
    real_fit = ItemNeighbors.fit

    def spy(positives, settings, *args, **kw):
        fitted.append((positives, settings))
        return real_fit(positives, settings, *args, **kw)

    monkeypatch.setattr(selection.ItemNeighbors, "fit", staticmethod(spy))
    out = tmp_path / "topk.json"
    assert run_topk(ck["refit-retrieval"], ck["refit-ranking"], str(root / "test"), str(out)) == 0
    r = json.loads(out.read_text())
    assert f"fitted on train+valid; settings chosen on valid by {ck['sel-retrieval']}" in capsys.readouterr().out
    want = by_sel.summary()
    want["item_source"]["fit_splits"] = list(FIT)
    assert r["ordering"] == json.loads(json.dumps(want))
    assert r["ordering"]["ranker_term"] == r["final"]["ranker_term"] == "logit"
    assert r["fit_splits"] == list(FIT)
    assert r["selected_by"] == {"retriever": ck["sel-retrieval"], "ranker": ck["sel-ranking"]}
    # the served source: the valid-chosen settings, fitted on train + valid
    data = EvalData(fs, root / "test", FIT)
    positives, settings = fitted[-1]
    assert settings == by_sel.settings
    np.testing.assert_array_equal(positives.indices, data.train_pos.indices)
    np.testing.assert_array_equal(positives.row_ids(), data.train_pos.row_ids())
    # the baselines: the valid-tuned parameters, fitted on train + valid
    assert r["baselines"]["item_knn"]["params"] == by_sel.knn.params
    want_b = baselines(data, max(RETRIEVAL_KS), valid, by_sel.knn, by_sel.ease)
    assert r["baselines"] == json.loads(json.dumps(want_b))
    train_b = baselines(EvalData(fs, root / "test"), max(RETRIEVAL_KS), valid, by_sel.knn, by_sel.ease)
    assert json.loads(json.dumps(train_b)) != r["baselines"]

    # export: the same choice, the neighbours and popularity of train + valid
    bundle = export_from_checkpoints(ck["refit-ranking"], ck["refit-retrieval"], str(tmp_path / "bundle"))
    m = json.loads((bundle / "manifest.json").read_text())
    assert m["sources"]["candidate_sources"] == r["ordering"]
    assert m["ordering"]["ranker_term"] == "logit" and m["ordering"]["rerank_blend"] == r["ordering"]["rerank_blend"]
    assert m["sources"]["fit_splits"] == list(FIT) and m["sources"]["selected_by"]["ranker"] == ck["sel-ranking"]
    b = load_bundle(bundle)
    assert list(b.item_keys) == list(data.catalog.keys)
    np.testing.assert_array_equal(b.generator.popularity.numpy(), data.popularity.astype(np.float32))
    served = b.generator.neighbors.arrays()
    for got, want_a in zip(served, real_fit(data.train_pos, by_sel.settings).arrays(), strict=True):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want_a), rtol=1e-6)


def test_seeds_fitted_differently_are_not_pooled(pairs):
    from widedeep.evaluation.topk import run_topk

    root, _, ck = pairs
    with pytest.raises(CheckpointError, match="refit all or none"):
        run_topk(
            [ck["sel-retrieval"], ck["refit-retrieval"]],
            [ck["sel-ranking"], ck["refit-ranking"]],
            str(root / "test"),
            None,
        )
