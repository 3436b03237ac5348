from __future__ import annotations

import pytest

from tests.train.helpers import adult_prepared


@pytest.fixture(scope="session")
def adult_small(adult_path, tmp_path_factory):
    """3,000 Adult rows prepared with platform/specs/adult.yaml (80/10/10, two files per split)."""
    return adult_prepared(adult_path, tmp_path_factory.mktemp("adult_small"), rows=3000)
