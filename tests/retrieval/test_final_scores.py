"""The final order's reading of the ranker logit (``widedeep.retrieval.candidates``): which term a
ranker's job config implies, and what each term does to the order."""

from __future__ import annotations

import numpy as np
import pytest

from widedeep.errors import ConfigError
from widedeep.retrieval.candidates import final_scores, ranker_term_of


@pytest.mark.parametrize(
    ("config", "term"),
    [
        ({"task": "ranking", "task_config": {"sampled_negatives": 4, "retrieval_negatives": 2}}, "logit"),
        ({"task": "ranking", "task_config": {"sampled_negatives": 0, "retrieval_negatives": 2}}, "logit"),
        ({"task": "ranking", "task_config": {"sampled_negatives": 3}}, "logit"),
        ({"task": "ranking", "task_config": {"sampled_negatives": 0, "retrieval_negatives": 0}}, "log_sigmoid"),
        ({"task": "ranking", "task_config": {}}, "log_sigmoid"),
        ({"task": "ranking"}, "log_sigmoid"),
        ({"task_config": {"sampled_negatives": 2}}, "logit"),  # a job's task defaults to ranking
        ({"task": "retrieval", "task_config": {"sampled_negatives": 2}}, "log_sigmoid"),
        (None, "log_sigmoid"),
    ],
)
def test_the_term_follows_how_the_ranker_was_trained(config, term):
    assert ranker_term_of(config) == term


def test_log_sigmoid_flattens_the_rankers_top_and_the_logit_keeps_it():
    """Two candidates the ranker is sure of (logits 6 and 9) and a retrieval logit that slightly
    prefers the first: log sigmoid reads both as ~0, so retrieval decides; the logit keeps the
    ranker's 3-nat preference. Both terms agree when the ranker is unsure (logits far below 0)."""
    logits = np.array([6.0, 9.0])
    retrieval = np.array([1.0, 0.0])
    ls = final_scores(logits, retrieval, 0.5)
    np.testing.assert_allclose(ls, -np.log1p(np.exp(-logits)) + 0.5 * retrieval)
    assert ls[0] > ls[1]
    lg = final_scores(logits, retrieval, 0.5, "logit")
    np.testing.assert_allclose(lg, logits + 0.5 * retrieval)
    assert lg[1] > lg[0]
    low = np.array([-9.0, -6.0, -7.5])
    r = np.array([0.2, 0.0, 3.0])
    assert np.argsort(final_scores(low, r, 1.0)).tolist() == np.argsort(final_scores(low, r, 1.0, "logit")).tolist()


def test_without_a_blend_either_term_orders_by_the_ranker():
    logits = np.array([0.3, -2.0, 4.0, 1.0])
    for term in ("log_sigmoid", "logit"):
        assert np.argsort(-final_scores(logits, None, 2.0, term)).tolist() == [2, 3, 0, 1]
        assert np.argsort(-final_scores(logits, np.ones(4), 0.0, term)).tolist() == [2, 3, 0, 1]


def test_an_unknown_term_is_refused():
    with pytest.raises(ConfigError, match="ranker term: expected one of"):
        final_scores(np.zeros(2), None, 0.0, "sigmoid")  # type: ignore[arg-type]
