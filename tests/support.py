"""Helpers the test areas share: a free loopback port, a wait that polls a condition, and a
FeatureSpace whose vocabulary changed (the warm-start tests of the model and of history features).

Why: a fixed port (Serve's 8000, the dashboard's 8265) collides with any other Ray or server on
the machine, and a fixed sleep is either too short on a loaded machine (a flaky failure) or too
long on a quiet one (wasted minutes). Tests ask the OS for a port and wait for what they need.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def wait_until(
    predicate: Callable[[], T], timeout_s: float, what: str | Callable[[], str], interval_s: float = 0.2
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that value.

    Raises ``TimeoutError`` naming ``what`` (and the last value seen) once ``timeout_s`` has passed
    without it; the predicate runs at least once, and once more at the deadline. ``what`` may be a
    callable, called only then, to describe the state reached (counts so far, metrics present).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        last_check = time.monotonic() >= deadline
        value = predicate()
        if value:
            return value
        if last_check:
            described = what() if callable(what) else what
            raise TimeoutError(f"waited {timeout_s:g}s for {described}; last value: {value!r}")
        time.sleep(max(0.0, min(interval_s, deadline - time.monotonic())))


def with_changed_vocabulary(fs: Any, feature: str) -> tuple[list[str], list[str], Any]:
    """``(vocab, new_vocab, fs_new)``: ``fs`` with ``feature``'s vocabulary reversed and its value that
    comes first after the reversal replaced by ``<brand-new>``, what a retrain on new data fits: every
    kept value at another row, one value gone, one new."""
    from widedeep.features import FeatureSpace

    doc = json.loads(fs.to_json())
    vocab = list(doc["features"][feature]["vocab"])
    new_vocab = ["<brand-new>", *vocab[::-1][1:]]
    doc["features"][feature]["vocab"] = new_vocab
    doc.pop("content_hash", None)
    return vocab, new_vocab, FeatureSpace.from_json(json.dumps(doc))
