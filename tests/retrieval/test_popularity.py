"""The one popularity definition: distinct users with a positive train row per catalog item."""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from widedeep.retrieval.popularity import item_counts, item_popularity


def _rows() -> pa.Table:
    # item a: users 1, 1 (repeated), 2 -> 2 users; b: user 3 positive, user 4 label 0.4 (negative);
    # c: only a negative; z: not in the catalog
    return pa.table(
        {
            "user_key": [1, 1, 2, 3, 4, 5, 6],
            "item_key": ["a", "a", "a", "b", "b", "c", "z"],
            "label": [1.0, 1.0, 1.0, 1.0, 0.4, 0.0, 1.0],
        }
    )


def test_popularity_counts_distinct_users_with_a_positive_row():
    catalog = np.array(["a", "b", "c", "d"])
    assert item_popularity(_rows(), "item_key", catalog, "user_key").tolist() == [2.0, 1.0, 0.0, 0.0]


def test_without_a_user_key_every_positive_row_counts():
    catalog = np.array(["a", "b", "c", "d"])
    assert item_popularity(_rows(), "item_key", catalog).tolist() == [3.0, 1.0, 0.0, 0.0]
    assert item_popularity(_rows().drop_columns(["user_key"]), "item_key", catalog, "user_key").tolist() == [
        3.0,
        1.0,
        0.0,
        0.0,
    ]


def test_item_counts_count_every_row():
    assert item_counts(_rows(), "item_key", np.array(["a", "b", "c"])).tolist() == [3.0, 2.0, 1.0]
