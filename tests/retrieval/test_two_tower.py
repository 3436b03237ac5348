"""Two-tower shapes and the sampled-softmax loss (incl. logQ) against hand computations."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pyarrow as pa
import pytest
import torch

from widedeep.kernels import OptimizerConfig
from widedeep.model.two_tower import (
    TwoTower,
    TwoTowerConfig,
    log_expected_counts,
    sampled_softmax_loss,
    tower_features,
)
from widedeep.retrieval.data import tower_input


def _table(name, column, rows, dim, side, multivalent=False, pooling="sum"):
    return SimpleNamespace(
        name=name, column=column, num_rows=rows, dim=dim, pooling=pooling, multivalent=multivalent, side=side
    )


def fake_fs():
    """A FeatureSpace-shaped object: user id + device (context), item id + tags, a cross, numerics."""
    sides = {
        "user_id": "user",
        "device": "context",
        "item_id": "item",
        "tags": "item",
        "age": "user",
        "price": "item",
        "user_x_item": "pair",
    }
    deep = [
        _table("deep/user_id", "user_id", 6, 8, "user"),
        _table("deep/item_id", "item_id", 5, 8, "item"),
        _table("deep/tags", "tags", 4, 8, "item", multivalent=True, pooling="mean"),
    ]
    wide = [
        _table("wide/device", "device", 3, 1, "context"),
        _table("wide/user_x_item", "user_x_item", 16, 1, "pair"),
        _table("wide/item_id", "item_id", 5, 1, "item"),
    ]
    return SimpleNamespace(
        deep_tables=deep,
        wide_tables=wide,
        dense_columns=["age", "price"],
        feature_side=lambda c: sides[c],
        item_key="item_key",
        user_key="user_key",
    )


def test_tower_features_split_by_side_and_skip_pairs():
    fs = fake_fs()
    u = tower_features(fs, ("user", "context"), "user")
    i = tower_features(fs, ("item",), "item")
    assert [t[0] for t in u.tables] == ["user_id", "device"] and u.dense == ("age",)
    assert [t[0] for t in i.tables] == ["item_id", "tags"] and i.dense == ("price",)


def test_tower_output_shapes_and_normalisation():
    fs = fake_fs()
    model = TwoTower(
        fs, TwoTowerConfig(embedding_dim=4, hidden=[16], output_dim=6), OptimizerConfig("rowwise_adagrad", lr=0.1)
    )
    users = pa.table({"user_id": [0, 1, 5], "device": [2, 0, 1], "age": pa.array([0.1, 0.5, 0.9], pa.float32())})
    items = pa.table(
        {
            "item_id": [0, 4],
            "tags": pa.array([[1, 2], []], pa.list_(pa.int64())),
            "price": pa.array([0.3, 0.7], pa.float32()),
        }
    )
    u, v = model(tower_input(model.user_features, users), tower_input(model.item_features, items))
    assert u.shape == (3, 6) and v.shape == (2, 6)
    torch.testing.assert_close(u.norm(dim=1), torch.ones(3))
    torch.testing.assert_close(v.norm(dim=1), torch.ones(2))


def _hand_loss(u, v, log_q, t, masks=()):
    total = 0.0
    for i in range(len(u)):
        logits = [sum(a * b for a, b in zip(u[i], v[j], strict=True)) / t - log_q[j] for j in range(len(v))]
        logits = [x for j, x in enumerate(logits) if (i, j) not in masks]
        pos = sum(a * b for a, b in zip(u[i], v[i], strict=True)) / t - log_q[i]
        total += -(pos - math.log(sum(math.exp(x) for x in logits)))
    return total / len(u)


def test_sampled_softmax_with_logq_matches_hand_computation():
    u = [[1.0, 0.0], [0.0, 1.0]]
    v = [[1.0, 0.0], [0.6, 0.8], [-1.0, 0.0]]  # 2 positives + 1 random negative
    log_q = [math.log(0.5), math.log(0.25), math.log(0.1)]
    got = sampled_softmax_loss(torch.tensor(u), torch.tensor(v), torch.tensor([0, 1, 2]), torch.tensor(log_q), 0.5)
    # row 0: logits [2 - ln .5, 1.2 - ln .25, -2 - ln .1], target 0;
    # row 1: [0 - ln .5, 1.6 - ln .25, 0 - ln .1], target 1
    r0 = [2 - math.log(0.5), 1.2 - math.log(0.25), -2 - math.log(0.1)]
    r1 = [0 - math.log(0.5), 1.6 - math.log(0.25), 0 - math.log(0.1)]
    want = (-(r0[0] - math.log(sum(map(math.exp, r0)))) - (r1[1] - math.log(sum(map(math.exp, r1))))) / 2
    assert float(got) == pytest.approx(want, rel=1e-5)
    assert float(got) == pytest.approx(_hand_loss(u, v, log_q, 0.5), rel=1e-5)
    # without the correction the popular item 0 is pushed down harder: the loss differs
    plain = sampled_softmax_loss(torch.tensor(u), torch.tensor(v), torch.tensor([0, 1, 2]), None, 0.5)
    assert float(plain) == pytest.approx(_hand_loss(u, v, [0, 0, 0], 0.5), rel=1e-5)
    assert abs(float(plain) - float(got)) > 1e-3


def test_accidental_hits_are_masked():
    u = [[1.0, 0.0], [0.0, 1.0]]
    v = [[1.0, 0.0], [0.6, 0.8]]
    got = sampled_softmax_loss(torch.tensor(u), torch.tensor(v), torch.tensor([7, 7]), torch.zeros(2), 1.0)
    # both rows have the same item: each row's other column is its own positive, so it is masked
    assert float(got) == pytest.approx(0.0, abs=1e-6)
    kept = sampled_softmax_loss(
        torch.tensor(u), torch.tensor(v), torch.tensor([7, 7]), torch.zeros(2), 1.0, remove_accidental_hits=False
    )
    assert float(kept) == pytest.approx(_hand_loss(u, v, [0, 0], 1.0), rel=1e-5)


def test_log_expected_counts_mixes_in_batch_and_uniform_sampling():
    got = log_expected_counts(torch.tensor([3.0, 1.0]), batch_size=2, random_negatives=2, n_items=2)
    torch.testing.assert_close(got, torch.log(torch.tensor([2 * 0.75 + 1, 2 * 0.25 + 1])))


def test_training_steps_reduce_the_loss_and_update_tables_in_place():
    torch.manual_seed(0)
    fs = fake_fs()
    model = TwoTower(
        fs,
        TwoTowerConfig(embedding_dim=8, hidden=[], output_dim=8, temperature=0.2),
        OptimizerConfig("rowwise_adagrad", lr=0.5),
    )
    users = pa.table(
        {
            "user_id": [0, 1, 2, 3, 4],
            "device": [0, 1, 2, 0, 1],
            "age": pa.array([0.1, 0.3, 0.5, 0.7, 0.9], pa.float32()),
        }
    )
    items = pa.table(
        {
            "item_id": [0, 1, 2, 3, 4],
            "tags": pa.array([[0], [1], [2], [3], [0, 1]], pa.list_(pa.int64())),
            "price": pa.array([0.2, 0.4, 0.6, 0.8, 1.0], pa.float32()),
        }
    )
    ui, ii = tower_input(model.user_features, users), tower_input(model.item_features, items)
    ids, log_q = torch.arange(5), torch.zeros(5)
    opt = torch.optim.Adam(model.dense_parameters(), lr=0.01)
    before = model.user_tower.tbe.weight.detach().clone()
    first = None
    for _ in range(60):
        loss = sampled_softmax_loss(*model(ui, ii), ids, log_q, 0.2)
        first = float(loss.detach()) if first is None else first
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.5 * first
    assert not torch.equal(before, model.user_tower.tbe.weight.detach())
    # empty batch (no positives): a zero loss that still runs backward
    empty = sampled_softmax_loss(
        torch.zeros(0, 8, requires_grad=True), torch.zeros(0, 8), torch.zeros(0, dtype=torch.long), None, 1.0
    )
    empty.backward()
    assert float(empty.detach()) == 0.0


def test_popularity_prior_is_folded_into_search_vectors():
    """``<user, item> / T = cos / T + beta * log(1 + positives)``; no change without the prior."""
    import numpy as np

    from widedeep.errors import ConfigError
    from widedeep.model.two_tower import search_vectors

    rng = np.random.default_rng(0)
    u = rng.normal(size=(3, 4)).astype(np.float32)
    v = rng.normal(size=(5, 4)).astype(np.float32)
    pos = np.array([0, 1, 10, 100, 3])
    cfg = TwoTowerConfig(temperature=0.2, popularity_prior=0.7)
    su, sv = search_vectors(cfg, "user", u), search_vectors(cfg, "item", v, pos)
    assert su.shape == (3, 5) and sv.shape == (5, 5)
    np.testing.assert_allclose(su @ sv.T / 0.2, u @ v.T / 0.2 + 0.7 * np.log1p(pos)[None, :], rtol=1e-5, atol=1e-5)
    plain = TwoTowerConfig(temperature=0.2)
    assert search_vectors(plain, "user", u) is u and search_vectors(plain, "item", v, pos) is v
    with pytest.raises(ValueError, match="one positive count per row"):
        search_vectors(cfg, "item", v, pos[:2])
    with pytest.raises(ConfigError, match="popularity_prior"):
        TwoTowerConfig(popularity_prior=-1.0)
