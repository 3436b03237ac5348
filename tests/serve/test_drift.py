"""The replica's drift monitor against a real bundle's training profile (no Ray): requests like
the training data show no drift, shifted ones do, and old requests age out of the window."""

from __future__ import annotations

import pytest

from widedeep.features.drift import ProfileBuilder, compare
from widedeep.serve.bundle import load_bundle
from widedeep.serve.drift import DriftMonitor
from widedeep.serve.pipeline import RecommendPipeline


@pytest.fixture(scope="module")
def pipe(bundles):
    return RecommendPipeline(load_bundle(bundles[0]))


def _users(pipe, n, **fields):
    keys = sorted(pipe.bundle.user_rows)[:n]
    return [pipe.prepare({"user_id": k, **fields}, {"device": "ios"}).row for k in keys]


def test_bundle_carries_the_training_profile(pipe):
    p = pipe.bundle.profile
    assert p is not None and p["feature_space_hash"] == pipe.fs.content_hash
    assert p["rows"] > 0 and set(p["features"]) >= {"country", "age", "device", "interests"}
    m = DriftMonitor(pipe.fs, p, window=64)
    assert set(m.names) == {"country", "age", "device", "interests"}  # query-side only (no item features)


def test_monitor_counts_like_the_offline_profile_and_flags_a_shift(pipe):
    rows = _users(pipe, 40)
    m = DriftMonitor(pipe.fs, pipe.bundle.profile, window=64, blocks=4)
    for r in rows:
        m.observe(r)
    # the window's counts are exactly the offline profile of the same prepared rows
    offline = ProfileBuilder(pipe.fs, m.names)
    for r in rows:
        offline.add(r)
    want = compare(pipe.bundle.profile, offline.finish())
    got = m.drift()
    for name in m.names:
        for key, value in want[name].items():
            if key != "rows":
                assert got[name][key] == pytest.approx(value), (name, key)
    calm = got["country"]["oov_rate"]
    # the same users from an unknown country: the country's OOV rate is all of the new requests
    for r in _users(pipe, 40, country="atlantis", age=99):
        m.observe(r)
    d = m.drift()
    assert m.requests == 64 - 16 + (80 % 16)  # 4 blocks of 16: the oldest ones aged out
    assert d["country"]["oov_rate"] > calm and d["country"]["oov_rate"] >= 40 / m.requests - 1e-9
    assert d["age"]["psi"] > 0.25
    info = m.info()
    assert info["window_requests"] == m.requests and info["window_size"] == 64


def test_no_profile_no_monitor(pipe):
    m = DriftMonitor(pipe.fs, {"features": {}}, window=16)
    m.observe(_users(pipe, 1)[0])
    assert m.drift() == {} and m.names == []
