"""The shared test helpers (tests/support.py) behave as the tests rely on."""

from __future__ import annotations

import itertools

import pytest

from tests.support import wait_until


def test_wait_until_returns_the_first_truthy_value():
    calls = itertools.count(1)
    assert wait_until(lambda: (n := next(calls)) >= 3 and n, 5, "the third call", interval_s=0.01) == 3


def test_wait_until_names_what_it_waited_for():
    with pytest.raises(TimeoutError, match=r"waited 0.05s for replicas to start; last value: 0"):
        wait_until(lambda: 0, 0.05, "replicas to start", interval_s=0.01)
    state = {"seen": 4}
    with pytest.raises(TimeoutError, match=r"for 10 answers \(4 so far\)"):
        wait_until(lambda: False, 0.05, lambda: f"10 answers ({state['seen']} so far)", interval_s=0.01)
